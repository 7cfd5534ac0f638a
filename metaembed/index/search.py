"""Top-k search over a snapshot of segments: exact MaxSim, and the re-ranking step of coarse-to-fine.

A search sees an immutable snapshot (a tuple of :class:`SegmentView`), so a
writer may add, delete or merge segments meanwhile without disturbing it.
Candidates in a snapshot are addressed by a *ref*: the row's position in the
concatenation of the snapshot's segments (``-1`` = no candidate).

Exact search scores blocks of rows with the budgeted kernel and keeps a running
top-k, so memory stays ``O(Q * block)`` whatever the index size. Coarse-to-fine
search keeps a shortlist from a cheap first stage (exact at a small budget, or
an approximate FAISS stage) and re-ranks only the shortlist at the requested
budget: it gathers the union of a query group's shortlists once and scores the
whole group against it in one pass of the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np
import torch

from metaembed.index.segments import Segment
from metaembed.index.topk import blocked_topk
from metaembed.scoring import CandidateSource, query_matrix, score_many, score_sources

# fp32 bytes of the (Q, block) score buffer of one step of exact search: a step scores
# 64 MiB / (4 Q) rows, at least _BLOCK_ROWS (65,536 rows x 256 queries = 64 MiB). Fewer queries
# get longer blocks, so a small batch scores a whole index of 100k+ rows in one kernel call.
_SCORE_BYTES = 64 << 20
_BLOCK_ROWS = 65536
# Queries re-ranked together in coarse-to-fine: their shortlists' union is
# gathered once and scored as one GEMM batch.
_RERANK_GROUP = 8
# Bounds the candidates gathered at once while re-ranking (as if fp32; bounds memory at large D).
_RERANK_BYTES = 32 << 20


@dataclass(frozen=True)
class SegmentView:
    """A segment as one search sees it: which of its rows are live, and their ids.

    Attributes:
        segment: the memory-mapped vectors.
        ids: object array ``(rows,)`` of id strings, ``None`` for a deleted row.
        alive: bool tensor ``(rows,)``; ``False`` rows never appear in results.
    """

    segment: Segment
    ids: np.ndarray
    alive: torch.Tensor

    @property
    def rows(self) -> int:
        return self.segment.rows

    @cached_property
    def all_alive(self) -> bool:
        """No deleted rows (views are copy-on-write, so this is computed once per view)."""
        return bool(self.alive.all())


def bases(views: tuple[SegmentView, ...]) -> np.ndarray:
    """The first ref of each view: ``(len(views) + 1,)`` cumulative row offsets."""
    return np.concatenate([[0], np.cumsum([v.rows for v in views], dtype=np.int64)])


def exact_topk(
    views: tuple[SegmentView, ...], queries: torch.Tensor, r_q: int, r_c: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact MaxSim top-``k`` of every query at budget ``(r_q, r_c)``.

    Args:
        views: the snapshot to search.
        queries: fp32 ``(Q, R_q, D)`` with ``R_q >= r_q``.

    Returns:
        ``(scores, refs)``, both ``(Q, k')`` with ``k' = min(k, rows)``, best
        first; deleted or missing entries have score ``-inf`` and ref ``-1``.
    """
    rows = query_matrix(queries, r_q)
    num_queries = queries.shape[0]

    def scored_blocks() -> Iterator[tuple[torch.Tensor, int]]:
        # Consecutive segments are scored together, a block of rows a pass: an index of many small
        # segments then costs one parallel kernel call and one top-k per block, not per segment.
        for block in _blocks(views, max(_BLOCK_ROWS, _SCORE_BYTES // (4 * num_queries))):
            first = block[0][1] + block[0][2]  # the block's first ref; its refs are contiguous
            sources = [view.segment.source(r_c, start, stop, base + start - first) for view, base, start, stop in block]
            scores = score_sources(rows, r_q, sources)
            for view, base, start, stop in block:
                if not view.all_alive:
                    column = base + start - first
                    scores[:, column : column + stop - start][:, ~view.alive[start:stop]] = -torch.inf
            yield scores, first

    scores, refs = blocked_topk(scored_blocks(), num_queries, k)
    refs = torch.where(torch.isinf(scores), torch.full_like(refs, -1), refs)
    return scores, refs


def _blocks(views: tuple[SegmentView, ...], block_rows: int) -> list[list[tuple[SegmentView, int, int, int]]]:
    """The snapshot's rows as ``(view, base ref, start, stop)`` pieces, packed into blocks of at most
    ``block_rows`` consecutive rows."""
    blocks: list[list[tuple[SegmentView, int, int, int]]] = []
    size = 0
    for view, base in zip(views, bases(views)):
        for start in range(0, view.rows, block_rows):
            stop = min(view.rows, start + block_rows)
            if not blocks or size + stop - start > block_rows:
                blocks.append([])
                size = 0
            blocks[-1].append((view, int(base), start, stop))
            size += stop - start
    return blocks


def gather(views: tuple[SegmentView, ...], refs: np.ndarray, r_c: int) -> list[CandidateSource]:
    """The first ``r_c`` vectors of the candidates ``refs`` (sorted, unique, valid), ready to score.

    One source per segment, each at the columns its refs hold in ``refs``, so the parts are
    never concatenated. Stored floats and int8 codes are read in place by the kernel (the
    source carries the row numbers; it upcasts each row as it reads it), so no copy of the
    shortlist is made; other codecs decode a gathered copy (:meth:`Segment.rows_source`).
    """
    offsets = bases(views)
    owner = np.searchsorted(offsets, refs, side="right") - 1
    sources = []
    for index in np.unique(owner):
        mine = np.flatnonzero(owner == index)  # contiguous: refs are sorted
        sources.append(views[index].segment.rows_source(refs[mine] - offsets[index], r_c, int(mine[0])))
    return sources


def rerank(
    views: tuple[SegmentView, ...], queries: torch.Tensor, shortlist: torch.Tensor, r_q: int, r_c: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact MaxSim at ``(r_q, r_c)`` restricted to each query's ``shortlist`` of refs.

    Args:
        queries: fp32 ``(Q, R_q, D)``.
        shortlist: ``(Q, S)`` refs from a first stage, ``-1`` for none.

    Returns:
        ``(scores, refs)`` of shape ``(Q, min(k, S))``, best first, ``-inf`` / ``-1`` padded.
    """
    num_queries, width = shortlist.shape
    dim = queries.shape[-1]
    k_out = min(k, width)
    out_scores = torch.full((num_queries, k_out), -torch.inf)
    out_refs = torch.full((num_queries, k_out), -1, dtype=torch.long)
    piece = max(1, _RERANK_BYTES // (4 * r_c * dim))  # candidates gathered at a time
    for start in range(0, num_queries, _RERANK_GROUP):
        stop = min(num_queries, start + _RERANK_GROUP)
        union = np.unique(shortlist[start:stop][shortlist[start:stop] >= 0].numpy())
        # Scoring the group against the union of its shortlists costs G * |union|
        # pairs in wide GEMMs; query by query costs sum |shortlist| pairs in
        # narrower ones. Group only when the shortlists overlap.
        if union.size <= 2 * width:
            parts = [(start, stop, union)]
        else:
            parts = [(q, q + 1, np.unique(shortlist[q][shortlist[q] >= 0].numpy())) for q in range(start, stop)]
        scored = _score_in_place(views, queries, parts, r_q, r_c)
        for part, (first, last, candidates) in enumerate(parts):
            if candidates.size == 0:
                continue
            if scored is not None:
                scores = scored[part]
            else:
                rows = query_matrix(queries[first:last], r_q)
                scores = torch.cat([
                    score_sources(rows, r_q, gather(views, candidates[i : i + piece], r_c))
                    for i in range(0, candidates.size, piece)
                ], dim=1)  # (G, |candidates|)
            group = shortlist[first:last].numpy()
            columns = torch.from_numpy(np.searchsorted(candidates, np.maximum(group, 0)).clip(0, candidates.size - 1))
            mine = scores.gather(1, columns)
            mine[torch.from_numpy(group < 0)] = -torch.inf
            top, where = mine.topk(k_out, dim=1)
            out_scores[first:last] = top
            picked = torch.from_numpy(group).gather(1, where)
            out_refs[first:last] = torch.where(torch.isinf(top), torch.full_like(picked, -1), picked)
    return out_scores, out_refs


def _score_in_place(views: tuple[SegmentView, ...], queries: torch.Tensor, parts: list[tuple[int, int, np.ndarray]],
                    r_q: int, r_c: int) -> list[torch.Tensor] | None:
    """Every part's scores ``(last - first, |candidates|)`` in one parallel pass, when its candidates
    are read in place (no gathered copies, so no memory to bound); ``None`` when some codec copies."""
    if len(parts) < 2 or any(view.segment.fmt.kernel_dtype is None for view in views):
        return None
    jobs = [(query_matrix(queries[first:last], r_q), r_q, gather(views, candidates, r_c))
            for first, last, candidates in parts]
    return score_many(jobs)


def resolve(views: tuple[SegmentView, ...], refs: torch.Tensor) -> list[list[str]]:
    """The ids of ``refs`` ``(Q, k)``, dropping ``-1`` entries."""
    offsets = bases(views)
    flat = refs.numpy().reshape(-1)
    owners = (np.searchsorted(offsets, flat, side="right") - 1).reshape(refs.shape).tolist()  # one call, not one a ref
    starts = offsets.tolist()
    return [
        [views[owner].ids[ref - starts[owner]] for ref, owner in zip(row, row_owners) if ref >= 0]
        for row, row_owners in zip(refs.tolist(), owners)
    ]


__all__ = ["SegmentView", "exact_topk", "rerank", "gather", "resolve", "bases"]
