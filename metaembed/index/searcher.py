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

import torch

from metaembed.budget import DEFAULT_SHORTLIST, Budget, BudgetLike
from metaembed.errors import InputError
from metaembed.index.filters import FilterLike, PayloadFilter
from metaembed.index.inputs import positive_int
from metaembed.scoring import ArrayLike, as_tensor

if TYPE_CHECKING:  # pragma: no cover
    from metaembed.index.first_stages import FirstStage


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

    def refresh(self) -> bool:
        """Catch up with commits other processes made (a long-lived reader, such as a server, calls this
        before serving); ``True`` if anything changed. A collection with no outside writers keeps this."""
        return False

    def check_budget(self, budget: BudgetLike | None, num_query_vectors: int | None = None) -> Budget:
        """Parse ``budget`` and check it against the stored vectors (``r_c``) and, if given, the
        query vectors there are (``r_q``); ``None`` means everything: ``(num_query_vectors or 1, num_vectors)``.

        Raises :class:`~metaembed.errors.BudgetError` naming what is available.
        """
        if budget is None:
            return Budget(num_query_vectors or 1, self.num_vectors)
        chosen = Budget.parse(budget).check_within(None, self.num_vectors, "the index")
        return chosen.check_within(num_query_vectors, None, "the queries")

    def search(
        self,
        queries: ArrayLike,
        k: int = 10,
        budget: BudgetLike | None = None,
        mode: SearchMode = "exact",
        shortlist: int = DEFAULT_SHORTLIST,
        first_stage_budget: BudgetLike = (1, 1),
        filter: PayloadFilter | FilterLike | None = None,
    ) -> list[list[SearchResult]]:
        """Top-``k`` candidates of each query by MaxSim at ``budget``.

        Args:
            queries: ``(Q, R_q, D)`` or one query ``(R_q, D)``; float32/16/bf16, torch or numpy.
            k: results per query.
            budget: ``(r_q, r_c)``, ``"r_q,r_c"`` or a :class:`Budget`; ``None`` uses
                all query vectors and all stored candidate vectors.
            mode: ``"exact"`` scores every candidate at ``budget``. Any other mode
                names a first stage (:mod:`metaembed.index.first_stages`), or is one:
                ``"coarse"`` scores every candidate at ``first_stage_budget``, keeps
                the best ``shortlist`` and re-ranks them exactly at ``budget``.
                ``"ann"`` takes the shortlist from a FAISS HNSW graph over the
                candidates' first vector (``first_stage_budget`` must have ``r_c == 1``),
                so search stays sub-linear in the index size.
            shortlist: candidates kept by the first stage (at least ``k``).
            first_stage_budget: the cheap budget of the first stage.
            filter: only candidates whose payload matches compete (see :mod:`metaembed.index.filters`:
                ``{"field": value}`` or ``{"field": {"in": [values]}}``), applied before top-k in
                every mode, so ``k`` hits come back whenever ``k`` candidates match.

        Returns:
            One list per query of :class:`SearchResult`, best first (fewer than ``k``
            if the collection is smaller). Scores are exact MaxSim at ``budget`` in fp32.

        This is where a Python caller's queries and budgets are checked, once; the
        checked values go to :meth:`search_batch`, which a searcher implements.
        """
        values = as_tensor(queries, "queries")
        if values.ndim == 2:
            values = values[None]
        if values.ndim != 3 or values.shape[1] == 0:
            raise InputError(f"queries must have shape (Q, R_q, D) or (R_q, D), got shape {tuple(values.shape)}")
        if values.shape[2] != self.dim:
            raise InputError(f"queries have dimension D={values.shape[2]} but the index stores D={self.dim}")
        if not torch.isfinite(values).all():
            raise InputError("queries contain NaN or inf")
        k = positive_int(k, "k")
        chosen = self.check_budget(budget, values.shape[1])
        first = self.check_budget(first_stage_budget, values.shape[1])
        shortlist = positive_int(shortlist, "shortlist")
        payload_filter = None if filter is None else PayloadFilter.parse(filter)
        return self.search_batch(values.to(torch.float32), k, chosen, mode, shortlist, first, payload_filter)

    @abstractmethod
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
        """Top-``k`` of each fp32 query ``(Q, R_q, D)`` at a checked ``budget`` (see :meth:`search`),
        among the candidates whose payload matches ``filter`` (all when ``None``).

        The caller has checked the inputs: ``D == dim``, finite values, positive ``k`` and
        ``shortlist``, budgets within ``(R_q, num_vectors)``, a parsed filter. A sharded searcher runs this
        on every shard and combines the lists with :func:`merge_results`.
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
