"""The one blocked top-k: score a collection block by block and keep each query's best ``k``.

Exact search (:mod:`metaembed.index.search`) and the evaluation sweep both score far more
candidates than fit in one ``(Q, N)`` score matrix; :func:`blocked_topk` keeps a running
top-``k`` over the blocks, so memory stays ``O(Q * (block + k))`` whatever ``N``.
"""

from __future__ import annotations

from typing import Iterable

import torch

from metaembed import native
from metaembed.workers import pool_size, run_parallel


def merge_topk(
    best: tuple[torch.Tensor, torch.Tensor], scores: torch.Tensor, refs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of ``best`` (scores, refs, ``(Q, a)``) and a new block (``(Q, b)``), best first."""
    if best[0].shape[1] == 0:  # the first block: nothing to merge with
        return scores, refs
    all_scores = torch.cat([best[0], scores], dim=1)
    all_refs = torch.cat([best[1], refs], dim=1)
    if all_scores.shape[1] <= k:
        return all_scores, all_refs
    top, where = all_scores.topk(k, dim=1)
    return top, all_refs.gather(1, where)


def select_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.topk(k, dim=1)`` of fp32 ``(Q, n)`` scores, ``k <= n``, with the rows split over the
    kernel's worker threads: ``(Q, k)`` values and columns, best first.

    Each part goes to the compiled top-k (:func:`metaembed.native.topk_rows`: one pass over the
    row, 8 scores a compare; 0.30 vs 1.48 ms for torch.topk on 16 x 100k random scores, k = 10,
    Zen 1) where it is built and ``k`` is small, else (or where scores rising along a row would
    make it slow) to ``torch.topk``. The two agree but for the order of equal scores: the
    compiled one puts the lower column first, torch promises no order.

    Why not torch's own threads for the split: after an OpenMP parallel region
    its threads spin-wait for the next one, and on a small machine they then take the cores from
    the kernel workers of the next search (docs/results/lab-notes.md has the measurement).
    """
    rows = scores.shape[0]
    compiled = native.available() and scores.dtype == torch.float32 and 1 <= k <= native.TOPK_MAX
    workers = min(pool_size(), rows)
    if workers <= 1 and not compiled:
        return scores.topk(k, dim=1)
    top = torch.empty(rows, k)
    where = torch.empty(rows, k, dtype=torch.long)
    step = -(-rows // max(1, workers))

    def select(start: int) -> None:
        part, values, columns = scores[start : start + step], top[start : start + step], where[start : start + step]
        if compiled:
            try:
                if native.topk_rows(part, k, values, columns):
                    return
            except native.NativeUnsupported:
                pass  # a layout it does not take (e.g. strided rows)
        torch.topk(part, k, dim=1, out=(values, columns))

    if workers <= 1:
        select(0)
    else:
        run_parallel(select, range(0, rows, step), workers)
    return top, where


def blocked_topk(
    blocks: Iterable[tuple[torch.Tensor, int]], num_queries: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` best over score blocks, best first.

    Args:
        blocks: ``(scores, first)`` pairs: fp32 ``(Q, n)`` scores of the candidates
            numbered ``first .. first + n - 1``.
        num_queries: ``Q`` (the result's rows when there are no blocks).

    Returns:
        ``(scores, refs)``, both ``(Q, k')`` with ``k' = min(k, candidates seen)``.

    >>> scores = torch.tensor([[0.1, 0.9, 0.3, 0.7]])
    >>> blocked_topk(((scores[:, i : i + 2], i) for i in (0, 2)), 1, 3)
    (tensor([[0.9000, 0.7000, 0.3000]]), tensor([[1, 3, 2]]))
    """
    best = (torch.empty(num_queries, 0), torch.empty(num_queries, 0, dtype=torch.long))
    for scores, first in blocks:
        top, where = select_topk(scores, min(k, scores.shape[1]))
        best = merge_topk(best, top, where + first, k)
    return best


__all__ = ["blocked_topk", "merge_topk", "select_topk"]
