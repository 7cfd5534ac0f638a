"""The two halves of a collection-wide coarse-to-fine search, as first stages a shard's index runs.

A sharded coarse-to-fine search must re-rank the *collection's* shortlist, so it is split
across a round trip: every shard scores its rows at the cheap budget and reports its best
``width`` with their scores (:class:`ScoredShortlist`, which re-ranks nothing); the collection
merges them; then each shard re-ranks its share of the merged shortlist
(:class:`GivenShortlist`). Both plug into :meth:`MultiVectorIndex.search_batch` as its
``mode`` (see :mod:`metaembed.index.first_stages`), so the re-ranking is the index's own, in
storage precision, and the scores are those a single index would give.

Each instance serves one search (it carries that search's state) and is never registered.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from metaembed.budget import Budget
from metaembed.index import FirstStage
from metaembed.index.search import SegmentView, bases, exact_topk, resolve


class ScoredShortlist(FirstStage):
    """Phase one: records each query's best ``width`` ``(id, score)`` at the first-stage budget; shortlists nothing."""

    name = "scored-shortlist"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.found: list[list[tuple[str, float]]] = []

    def shortlist(self, views: tuple[SegmentView, ...], queries: torch.Tensor, budget: Budget, width: int) -> torch.Tensor:
        scores, refs = exact_topk(views, queries, budget.r_q, budget.r_c, width)
        for ids, row in zip(resolve(views, refs), scores.tolist()):
            self.found.append(list(zip(ids, row)))
        return torch.full((queries.shape[0], 0), -1, dtype=torch.long)  # nothing to re-rank here


class RefMap:
    """``id -> ref`` of one snapshot of segments, built once per snapshot (a write makes a new snapshot)."""

    def __init__(self) -> None:
        # One tuple, swapped in one assignment: concurrent searches never see a snapshot with another's map.
        self._cached: tuple[tuple[SegmentView, ...] | None, dict[str, int]] = (None, {})

    def refs(self, views: tuple[SegmentView, ...]) -> dict[str, int]:
        cached_views, refs = self._cached
        if views is not cached_views:
            refs = {}
            for view, base in zip(views, bases(views)):
                for row in np.flatnonzero(view.ids != None):  # noqa: E711 (None marks a deleted row)
                    refs[view.ids[row]] = int(base) + int(row)
            self._cached = (views, refs)
        return refs


class GivenShortlist(FirstStage):
    """Phase two: each query's shortlist is the given ids (those of this shard's that still exist)."""

    name = "given-shortlist"

    def __init__(self, dim: int, ids: Sequence[Sequence[str]], ref_map: RefMap) -> None:
        super().__init__(dim)
        self.ids = ids
        self.ref_map = ref_map
        self._next = 0  # the index calls shortlist() on consecutive chunks of the queries

    def shortlist(self, views: tuple[SegmentView, ...], queries: torch.Tensor, budget: Budget, width: int) -> torch.Tensor:
        refs = self.ref_map.refs(views)
        chunk = self.ids[self._next : self._next + queries.shape[0]]
        self._next += queries.shape[0]
        rows = [[refs[i] for i in wanted if i in refs] for wanted in chunk]
        out = torch.full((len(rows), max([len(r) for r in rows] + [1])), -1, dtype=torch.long)
        for query, row in enumerate(rows):
            out[query, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out


__all__ = ["ScoredShortlist", "GivenShortlist", "RefMap"]
