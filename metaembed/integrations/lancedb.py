"""An index as a LanceDB table (embedded, a folder on disk), searched there by MaxSim at a budget.

The table has one row per candidate: ``id`` (string), ``payload`` (the payload as JSON
text, ``null`` for none; read back as ``{}``, as the index returns it) and one multi-vector column per candidate budget of the index's
ladder, ``r_c_<n>`` (``list<fixed_size_list<float32, D>>``, the first ``n`` vectors). LanceDB
scores a multi-vector query against a multi-vector column by MaxSim over cosine similarity
and reports ``_distance = r_q - MaxSim``; MetaEmbed's vectors are unit vectors, so
:class:`LanceDBSearcher` gives back the MaxSim score (fp16 storage rounds it in the 3rd-4th digit).

>>> import tempfile, torch
>>> from metaembed.index import MultiVectorIndex
>>> index = MultiVectorIndex.create(None, dim=4, num_vectors=2, dtype="float32")
>>> index.add(["a", "b"], torch.eye(4).view(2, 2, 4), payloads=[{"page": 1}, None])
>>> searcher = export(index, tempfile.mkdtemp(), budgets=[(1, 1), (2, 2)])
>>> hit = searcher.search(torch.eye(4)[[2]], k=1, budget="1,2")[0][0]
>>> hit.id, round(hit.score, 4), hit.payload
('b', 1.0, {})
>>> index.close()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import lancedb
import numpy as np
import pyarrow as pa

import torch

from metaembed.budget import DEFAULT_SHORTLIST, Budget, BudgetLike
from metaembed.errors import InputError
from metaembed.index import MultiVectorIndex, Searcher, SearchResult
from metaembed.index.filters import PayloadFilter
from metaembed.index.searcher import SearchMode
from metaembed.integrations.exporting import candidate_budgets, check_exported, vector_name

DEFAULT_TABLE = "metaembed"
_METADATA_KEY = b"metaembed"


def _schema(dim: int, sizes: Sequence[int], info: dict[str, Any]) -> pa.Schema:
    multivector = pa.list_(pa.list_(pa.float32(), dim))
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("payload", pa.string())]
    fields += [pa.field(vector_name(r_c), multivector) for r_c in sizes]
    return pa.schema(fields, metadata={_METADATA_KEY: json.dumps(info).encode()})


def _multivectors(values: np.ndarray) -> pa.ListArray:
    """``(n, r, D)`` float32 as an Arrow ``list<fixed_size_list<float32, D>>`` array, without Python loops."""
    n, r, dim = values.shape
    points = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), dim)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * r + 1, r, dtype=np.int32)), points)


def _table_names(database: Any) -> list[str]:
    """Every table of ``database`` (``list_tables`` pages through them)."""
    names: list[str] = []
    token = None
    while True:
        page = database.list_tables(page_token=token)
        names.extend(page.tables)
        token = page.page_token
        if not token:
            return names


def export(
    index: MultiVectorIndex,
    uri: str | Path,
    table: str = DEFAULT_TABLE,
    budgets: str | Sequence[BudgetLike] | None = None,
    overwrite: bool = False,
    batch: int = 1024,
) -> "LanceDBSearcher":
    """Write every live candidate of ``index`` to the table ``table`` of the LanceDB database at ``uri``.

    ``budgets``: the ladder whose ``r_c`` values become columns (default: the index's
    recorded ladder). ``overwrite=False`` refuses an existing table. Returns its searcher.
    """
    sizes = candidate_budgets(index, budgets)
    database = lancedb.connect(str(uri))
    if table in _table_names(database) and not overwrite:
        raise InputError(f"LanceDB table {table!r} already exists in {uri}; pass overwrite=True to replace it")
    info = {"dim": index.dim, "budgets": sizes, "model": str(index.metadata.get("model", ""))}
    schema = _schema(index.dim, sizes, info)
    created = database.create_table(table, schema=schema, mode="overwrite")
    widest = sizes[-1]
    for ids, vectors, payloads in index.export(r_c=widest, batch=batch, payloads=True):
        values = vectors.numpy()
        columns: dict[str, Any] = {"id": ids, "payload": [None if p is None else json.dumps(p) for p in payloads]}
        for r_c in sizes:
            columns[vector_name(r_c)] = _multivectors(values[:, :r_c])
        created.add(pa.Table.from_pydict(columns, schema=schema))
    return LanceDBSearcher(created)


class LanceDBSearcher(Searcher):
    """A LanceDB table written by :func:`export`, searched by MaxSim at any exported budget.

    ``search(queries, k, budget)`` (from :class:`~metaembed.index.Searcher`) checks the
    inputs; the table answers with a flat (exact) scan unless an index was built on the column.
    """

    def __init__(self, table: "lancedb.table.Table") -> None:
        metadata = table.schema.metadata or {}
        if _METADATA_KEY not in metadata:
            raise InputError(f"LanceDB table {table.name!r} was not written by metaembed (no metaembed schema metadata)")
        info = json.loads(metadata[_METADATA_KEY])
        self.table = table
        self.budgets: list[int] = list(info["budgets"])
        self._dim = int(info["dim"])

    @classmethod
    def open(cls, uri: str | Path, table: str = DEFAULT_TABLE) -> "LanceDBSearcher":
        """Open the table ``table`` of the database at ``uri``."""
        database = lancedb.connect(str(uri))
        names = _table_names(database)
        if table not in names:
            raise InputError(f"no LanceDB table {table!r} in {uri} (tables: {', '.join(names) or 'none'})")
        return cls(database.open_table(table))

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def num_vectors(self) -> int:
        return self.budgets[-1]

    def __len__(self) -> int:
        return self.table.count_rows()

    def search_batch(
        self,
        queries: torch.Tensor,
        k: int,
        budget: Budget,
        mode: SearchMode = "exact",
        shortlist: int = DEFAULT_SHORTLIST,
        first_stage_budget: Budget = Budget(1, 1),
        filter: PayloadFilter | None = None,
    ) -> list[list[SearchResult]]:
        check_exported(budget, mode, self.budgets)
        if filter is not None:
            # The export keeps each payload as one JSON string, which LanceDB cannot filter on.
            raise InputError("a LanceDB export cannot filter on payloads; search the metaembed index for that")
        column = vector_name(budget.r_c)
        results = []
        for query in queries[:, : budget.r_q].numpy():
            rows = (
                self.table.search(query.tolist(), vector_column_name=column)
                .distance_type("cosine")
                .select(["id", "payload"])
                .limit(k)
                .to_list()
            )
            results.append([
                SearchResult(row["id"], float(budget.r_q - row["_distance"]),
                             json.loads(row["payload"]) if row["payload"] else {}, rank)
                for rank, row in enumerate(rows, start=1)
            ])
        return results


__all__ = ["DEFAULT_TABLE", "LanceDBSearcher", "export"]
