"""First stages of coarse-to-fine search: cheap shortlists that the index re-ranks exactly.

A search at budget ``(r_q, r_c)`` with a first stage asks it for each query's best
``shortlist`` candidates at a cheap first-stage budget, then scores only those exactly
at ``(r_q, r_c)`` (:func:`metaembed.index.search.rerank`). A first stage is a small
object with a ``name`` (the search ``mode`` that selects it):

``__init__(dim)``
    one instance per index, made on its first use and kept (it may hold state, such as
    a graph over the index's candidates; ``reset()`` drops it when the index moves).
    The index then sets ``folder`` (its folder; ``None`` for a scratch index), where a
    stage may key state it keeps across processes (``ann`` keeps its graph in the cache).
``check_budget(budget)``
    :class:`~metaembed.errors.InputError` when the stage cannot serve that first-stage budget.
``shortlist(views, queries, budget, width)``
    ``(Q, width')`` refs (``width' <= width``, ``-1`` for none) of a snapshot of segments.

The members: ``coarse`` (exact MaxSim over every candidate at the small budget,
:mod:`.coarse`) and ``ann`` (a FAISS HNSW graph over each candidate's first vector,
:mod:`.ann`). Adding one is one new module in this package with a :class:`FirstStage`
subclass decorated with ``@FIRST_STAGES.register``, or that call from anywhere; a
search may also pass an instance as ``mode``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from metaembed.budget import Budget
from metaembed.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from metaembed.index.search import SegmentView


class FirstStage:
    """A shortlist of candidates at a cheap budget; see the module docstring."""

    #: the search ``mode`` that selects this first stage
    name: ClassVar[str] = ""
    #: the folder of the index this stage serves, set by the index after making it (``None``: a scratch index)
    folder: Path | None = None

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def check_budget(self, budget: Budget) -> None:
        """Raise :class:`~metaembed.errors.InputError` if this stage cannot serve ``budget``."""

    def shortlist(
        self, views: tuple["SegmentView", ...], queries: torch.Tensor, budget: Budget, width: int
    ) -> torch.Tensor:
        """Refs ``(Q, width')`` of the best candidates of ``views`` for fp32 ``queries`` ``(Q, R_q, D)`` at ``budget``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Drop any state built over the index (called when the index continues in another folder)."""


#: The first stages by search mode; see the module docstring for adding one.
FIRST_STAGES: Registry[type[FirstStage]] = Registry("first stage", __name__)

#: The mode that scores every candidate exactly, with no first stage.
EXACT = "exact"


def search_modes() -> list[str]:
    """Every search ``mode``: ``"exact"`` and the registered first stages."""
    return [EXACT, *FIRST_STAGES.names()]


__all__ = ["FirstStage", "FIRST_STAGES", "EXACT", "search_modes"]
