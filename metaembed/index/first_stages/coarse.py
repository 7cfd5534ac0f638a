"""The ``coarse`` first stage: exact MaxSim over every candidate at a small budget, e.g. ``(1, 1)``.

At ``(1, 1)`` a candidate costs one inner product and its first vector, one contiguous slab
of each segment (the storage is position-major); the shortlist it keeps is then re-ranked
at the full budget. Linear in the index size, but with no state to build or keep current.
"""

from __future__ import annotations

import torch

from metaembed.budget import Budget
from metaembed.index.first_stages import FIRST_STAGES, FirstStage
from metaembed.index.search import SegmentView, exact_topk


@FIRST_STAGES.register
class CoarseFirstStage(FirstStage):
    """Exact top-``width`` at the first-stage budget."""

    name = "coarse"

    def shortlist(self, views: tuple[SegmentView, ...], queries: torch.Tensor, budget: Budget, width: int) -> torch.Tensor:
        return exact_topk(views, queries, budget.r_q, budget.r_c, width)[1]


__all__ = ["CoarseFirstStage"]
