"""An index as a Qdrant collection with one MaxSim multi-vector per budget, searched there.

The collection has one named vector per candidate budget of the index's ladder, ``r_c_<n>``
(the first ``n`` vectors), each configured with ``Distance.DOT`` and
``MultiVectorConfig(comparator=MAX_SIM)``: Qdrant's score of a ``(r_q, D)`` query is then
exactly MetaEmbed's MaxSim. Point ids are UUIDs derived from the item ids
(:func:`point_id`); each point's payload is the item's payload plus ``metaembed_id``.

``location`` is a URL (a Qdrant server), ``":memory:"`` (qdrant-client's local mode in
memory) or a folder (local mode on disk), or an open ``QdrantClient``.

>>> import torch
>>> from metaembed.index import MultiVectorIndex
>>> index = MultiVectorIndex.create(None, dim=4, num_vectors=2, dtype="float32")
>>> index.add(["a", "b"], torch.eye(4).view(2, 2, 4), payloads=[{"page": 1}, None])
>>> searcher = export(index, ":memory:", budgets=[(1, 1), (2, 2)])
>>> [(hit.id, hit.score, hit.payload) for hit in searcher.search(torch.eye(4)[[0]], k=2, budget="1,2")[0]]
[('a', 1.0, {'page': 1}), ('b', 0.0, {})]
>>> index.close()
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Sequence

import torch
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ApiException

from metaembed.budget import DEFAULT_SHORTLIST, Budget, BudgetLike
from metaembed.errors import InputError
from metaembed.index import MultiVectorIndex, Searcher, SearchResult
from metaembed.index.filters import PayloadFilter
from metaembed.index.searcher import SearchMode
from metaembed.integrations.exporting import candidate_budgets, check_exported, vector_name

DEFAULT_COLLECTION = "metaembed"
#: The payload key that holds the item id (Qdrant point ids must be integers or UUIDs).
ID_KEY = "metaembed_id"
_NAMESPACE = uuid.UUID("6f0f5f2e-8a8c-4d0e-9a53-6d6574616562")


def point_id(item_id: str) -> str:
    """The Qdrant point id of ``item_id``: a UUID derived from it, the same in every export."""
    return str(uuid.uuid5(_NAMESPACE, item_id))


def connect(location: str | Path | QdrantClient) -> QdrantClient:
    """A client for a URL, ``":memory:"``, a local-mode folder, or ``location`` itself if it is one.

    A server that does not answer, or a local folder another client holds, is an
    :class:`~metaembed.errors.InputError` naming the location.
    """
    if isinstance(location, QdrantClient):
        return location
    text = str(location)
    try:
        if text == ":memory:":
            return QdrantClient(location=":memory:")
        if text.startswith(("http://", "https://")):
            client = QdrantClient(url=text, check_compatibility=False)
            client.get_collections()  # fail here, with the URL, rather than deep inside the export
            return client
        return QdrantClient(path=text)
    except (ApiException, RuntimeError) as error:
        raise InputError(f"cannot use Qdrant at {text}: {error}") from None


def export(
    index: MultiVectorIndex,
    location: str | Path | QdrantClient,
    collection: str = DEFAULT_COLLECTION,
    budgets: str | Sequence[BudgetLike] | None = None,
    overwrite: bool = False,
    batch: int = 256,
) -> "QdrantSearcher":
    """Write every live candidate of ``index`` to ``collection``; returns its searcher.

    ``budgets``: the ladder whose ``r_c`` values become named vectors (default: the index's
    recorded ladder). ``overwrite=False`` refuses an existing collection.
    """
    sizes = candidate_budgets(index, budgets)
    client = connect(location)
    if client.collection_exists(collection):
        if not overwrite:
            raise InputError(f"Qdrant collection {collection!r} already exists; pass overwrite=True to replace it")
        client.delete_collection(collection)
    maxsim = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
    client.create_collection(
        collection,
        vectors_config={
            vector_name(r_c): models.VectorParams(size=index.dim, distance=models.Distance.DOT, multivector_config=maxsim)
            for r_c in sizes
        },
        metadata={"metaembed": {"budgets": sizes, "model": str(index.metadata.get("model", ""))}},
    )
    for ids, vectors, payloads in index.export(r_c=sizes[-1], batch=batch, payloads=True):
        values = vectors.numpy()
        points = [
            models.PointStruct(
                id=point_id(item_id),
                vector={vector_name(r_c): row[:r_c].tolist() for r_c in sizes},
                payload=_payload(item_id, payload),
            )
            for item_id, row, payload in zip(ids, values, payloads)
        ]
        client.upsert(collection, points=points, wait=True)
    return QdrantSearcher(client, collection)


def _payload(item_id: str, payload: dict[str, Any] | None) -> dict[str, Any]:
    if payload and ID_KEY in payload:
        raise InputError(f"item {item_id!r}: its payload uses the key {ID_KEY!r} that the export reserves for the id")
    return {**(payload or {}), ID_KEY: item_id}


class QdrantSearcher(Searcher):
    """A Qdrant collection written by :func:`export`, searched by MaxSim at any exported budget.

    ``search(queries, k, budget)`` (from :class:`~metaembed.index.Searcher`) checks the
    inputs and sends one batch of requests; ``client`` is the open ``QdrantClient``.
    """

    def __init__(self, client: QdrantClient, collection: str = DEFAULT_COLLECTION) -> None:
        if not client.collection_exists(collection):
            raise InputError(f"no Qdrant collection {collection!r}")
        vectors = client.get_collection(collection).config.params.vectors
        named = vectors if isinstance(vectors, dict) else {}
        self.budgets = sorted(int(name.removeprefix("r_c_")) for name in named if name.startswith("r_c_"))
        if not self.budgets:
            raise InputError(f"Qdrant collection {collection!r} was not written by metaembed (no r_c_<n> vectors)")
        self.client, self.collection = client, collection
        self._dim = int(named[vector_name(self.budgets[0])].size)

    @classmethod
    def open(cls, location: str | Path | QdrantClient, collection: str = DEFAULT_COLLECTION) -> "QdrantSearcher":
        """Connect to ``location`` (see :func:`connect`) and open ``collection``."""
        return cls(connect(location), collection)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def num_vectors(self) -> int:
        return self.budgets[-1]

    def __len__(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def close(self) -> None:
        """Close the client (a local-mode folder is unlocked)."""
        self.client.close()

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
        # Qdrant applies the filter inside its search, before the limit, as our index does.
        where = None
        if filter is not None:
            for field, values in filter.conditions:
                if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
                    raise InputError(f"filter for {field!r}: a Qdrant export matches strings and integers only")
            where = models.Filter(must=[
                models.FieldCondition(key=field, match=models.MatchAny(any=list(values)))
                for field, values in filter.conditions
            ])
        requests = [
            models.QueryRequest(query=query.tolist(), using=vector_name(budget.r_c), limit=k, with_payload=True,
                                filter=where)
            for query in queries[:, : budget.r_q].numpy()
        ]
        answers = self.client.query_batch_points(self.collection, requests=requests)
        return [[_result(point, rank) for rank, point in enumerate(answer.points, start=1)] for answer in answers]


def _result(point: models.ScoredPoint, rank: int) -> SearchResult:
    payload = dict(point.payload or {})
    item_id = payload.pop(ID_KEY)
    return SearchResult(item_id, float(point.score), payload, rank)


__all__ = ["DEFAULT_COLLECTION", "ID_KEY", "QdrantSearcher", "connect", "export", "point_id"]
