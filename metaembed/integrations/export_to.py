"""``metaembed index export --to``: write an index to a file (safetensors, npz) or a vector database.

One entry point over the exports of this package: :mod:`.files`, :mod:`.lancedb` and
:mod:`.qdrant` (imported only when chosen, since each pulls in its own library). What the
database exports share lives in :mod:`.exporting`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from metaembed.budget import Budget, BudgetLike
from metaembed.errors import InputError
from metaembed.index import MultiVectorIndex

#: Where ``metaembed index export --to`` can write an index.
EXPORT_TARGETS = ("safetensors", "npz", "lancedb", "qdrant")


def _file_r_c(budget: BudgetLike | int | None) -> int | None:
    """A file export's ``r_c``: an int (or its digits), or the ``r_c`` of a budget."""
    if budget is None:
        return None
    if isinstance(budget, str) and budget.strip().isdigit():
        budget = int(budget)
    if isinstance(budget, int) and not isinstance(budget, bool):
        return budget
    return Budget.parse(budget).r_c


def export_index(
    index: MultiVectorIndex,
    to: str,
    target: str | Path,
    *,
    budget: BudgetLike | int | str | None = None,
    budgets: str | Sequence[BudgetLike] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    dtype: str = "float32",
) -> int:
    """Export ``index`` to ``target`` as ``to`` (one of :data:`EXPORT_TARGETS`); the number of items written.

    Files (``safetensors`` / ``npz``) hold the vectors at one ``budget``'s ``r_c`` (an int or
    ``"r_q,r_c"``; default all stored vectors). Databases (``lancedb`` / ``qdrant``) get one
    multi-vector column per ``r_c`` of ``budgets`` (default the index's recorded ladder), in the
    table / collection ``name`` (default ``"metaembed"``).
    """
    if to not in EXPORT_TARGETS:
        raise InputError(f"unknown export target {to!r}; use one of {', '.join(EXPORT_TARGETS)}")
    if to in ("safetensors", "npz"):
        from metaembed.integrations.files import write_file

        if budgets is not None or name is not None:
            raise InputError(f"--budgets and --name apply to lancedb and qdrant exports, not to {to} files")
        return write_file(index, target, r_c=_file_r_c(budget), format=to, dtype=dtype)
    if budget is not None:
        raise InputError(f"a {to} export holds every budget of --budgets; --budget applies to file exports")
    if to == "lancedb":
        from metaembed.integrations import lancedb

        lancedb.export(index, target, table=name or lancedb.DEFAULT_TABLE, budgets=budgets, overwrite=overwrite)
    else:
        from metaembed.integrations import qdrant

        searcher = qdrant.export(index, target, collection=name or qdrant.DEFAULT_COLLECTION, budgets=budgets,
                                 overwrite=overwrite)
        searcher.close()
    return len(index)


__all__ = ["EXPORT_TARGETS", "export_index"]
