"""What can be searched at a budget, and the one result type every layer above it returns.

:class:`Searcher` is the interface of a searchable collection: a batch of queries, a budget,
``k`` results each. :class:`~metaembed.index.MultiVectorIndex` implements it over one folder;
a sharded or remote collection implements the same method (search every shard, then
:func:`merge_results`), so the retriever, the CLI and the HTTP service work with either.
:class:`SearchResult` travels unchanged from the index to the CLI's table and the HTTP
response (:meth:`SearchResult.as_dict`).
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence, Union

from metaembed.budget import BudgetLike

if TYPE_CHECKING:  # pragma: no cover
    from metaembed.index.first_stages import FirstStage
    from metaembed.scoring import ArrayLike


@dataclass(frozen=True)
class SearchResult:
    """One hit: the candidate's ``id``, its MaxSim ``score`` at the search budget, its stored
    ``payload`` (``{}`` when none was stored) and its 1-based ``rank`` in the query's results."""

    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
    rank: int = 1

    def as_dict(self) -> dict[str, Any]:
        """The hit as a plain JSON-serialisable dict (what the CLI's ``--json`` and the HTTP service send)."""
        return {"rank": self.rank, "id": self.id, "score": self.score, "payload": self.payload}


#: A search mode: ``"exact"``, the name of a registered first stage, or a first-stage object.
SearchMode = Union[str, "FirstStage"]


class Searcher(ABC):
    """A collection of multi-vector candidates searched by MaxSim at a budget ``(r_q, r_c)``."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector dimension ``D``."""

    @property
    @abstractmethod
    def num_vectors(self) -> int:
        """Vectors stored per candidate: the largest ``r_c`` a search may use."""

    @abstractmethod
    def search(
        self,
        queries: "ArrayLike",
        k: int = 10,
        budget: BudgetLike | None = None,
        mode: SearchMode = "exact",
        shortlist: int = 1000,
        first_stage_budget: BudgetLike = (1, 1),
    ) -> list[list[SearchResult]]:
        """Top-``k`` of each query ``(Q, R_q, D)`` at ``budget``: one list per query, best first.

        ``mode`` picks the first stage (``"exact"``: none, every candidate scored at
        ``budget``); a first stage keeps ``shortlist`` candidates at ``first_stage_budget``
        and those are re-ranked exactly at ``budget``.
        """


def merge_results(parts: Sequence[list[list[SearchResult]]], k: int) -> list[list[SearchResult]]:
    """The top-``k`` of several searchers' results for the same queries (shards of one collection).

    ``parts[s][q]`` is searcher ``s``'s best-first list for query ``q``. Scores of one
    budget are comparable across shards (MaxSim is a sum of inner products), so the merge
    keeps the ``k`` highest per query and ranks them again from 1; ties keep shard order.

    >>> a = [[SearchResult("x", 0.9), SearchResult("y", 0.2, rank=2)]]
    >>> b = [[SearchResult("z", 0.5)]]
    >>> [(hit.id, hit.rank) for hit in merge_results([a, b], k=2)[0]]
    [('x', 1), ('z', 2)]
    """
    if not parts:
        return []
    merged = []
    for rows in zip(*parts):
        best = heapq.merge(*rows, key=lambda hit: -hit.score)
        merged.append([replace(hit, rank=rank) for rank, hit in zip(range(1, k + 1), best)])
    return merged


__all__ = ["SearchResult", "Searcher", "SearchMode", "merge_results"]
