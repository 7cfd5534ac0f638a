"""What every export of an index shares: which budget prefixes to write, their names, query checks.

A MetaEmbed index serves every budget from one stored set of vectors; a vector database
does not, so an export writes one multi-vector column (LanceDB) or named vector (Qdrant)
per candidate budget ``r_c`` of the index's ladder, named :func:`vector_name`. A search
there at ``(r_q, r_c)`` sends the first ``r_q`` query vectors to the ``r_c`` column; each
export's searcher is a :class:`~metaembed.index.Searcher`, so it answers ``search(queries, k,
budget)`` with the same checks and the same :class:`~metaembed.index.SearchResult` as an index.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from metaembed.budget import Budget, BudgetLike, parse_ladder
from metaembed.errors import BudgetError, InputError
from metaembed.index import MultiVectorIndex
from metaembed.index.searcher import SearchMode
from metaembed.retriever import LADDER_KEY


def vector_name(r_c: int) -> str:
    """The column / named vector holding the first ``r_c`` vectors of each candidate."""
    return f"r_c_{r_c}"


def candidate_budgets(index: MultiVectorIndex, budgets: str | Sequence[BudgetLike] | None = None) -> list[int]:
    """The distinct ``r_c`` of ``budgets`` (default: the index's recorded ladder, else all its vectors), ascending.

    Raises :class:`BudgetError` for an ``r_c`` beyond what the index stores.
    """
    if budgets is None:
        recorded = index.metadata.get(LADDER_KEY)
        ladder: Iterable[Budget] = parse_ladder(recorded) if recorded else [Budget(1, index.num_vectors)]
        ladder = [b for b in ladder if b.r_c <= index.num_vectors] or [Budget(1, index.num_vectors)]
    else:
        ladder = parse_ladder(budgets) if isinstance(budgets, str) else [Budget.parse(b) for b in budgets]
    sizes = sorted({budget.r_c for budget in ladder})
    too_large = [r_c for r_c in sizes if r_c > index.num_vectors]
    if too_large:
        raise BudgetError(f"r_c {too_large[0]} is beyond the {index.num_vectors} vectors the index stores")
    return sizes


def check_exported(budget: Budget, mode: SearchMode, available: Sequence[int]) -> None:
    """Raise unless ``budget.r_c`` is one of the exported ``available`` prefixes and ``mode`` is exact."""
    if mode != "exact":
        raise InputError(f"a vector database export is searched by its own engine; mode must be 'exact', got {mode!r}")
    if budget.r_c not in available:
        raise BudgetError(f"no vectors for r_c={budget.r_c} in this export; it holds r_c {', '.join(map(str, available))}")


__all__ = ["candidate_budgets", "check_exported", "vector_name"]
