"""The ``ann`` first stage: FAISS HNSW over each candidate's first vector, sub-linear in the index size.

At a first-stage budget ``(r_q, 1)`` MaxSim collapses to one inner product:
``sum_i max_{j<1} <q_i, c_0> = <sum_i q_i, c_0>``. So the cheap stage is exactly a
single-vector maximum-inner-product search over the candidates' first Meta
Token vector, which an HNSW graph answers in sub-linear time. The shortlist it
returns is then re-ranked exactly at the requested budget.

The graph lives in memory, is built lazily on the first approximate search and
grows incrementally as segments are added. HNSW cannot remove points, so
deleted rows are filtered out of its answers (it is asked for extra
neighbours), and the graph is rebuilt when segments are merged away or when too
many of its points are dead.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from metaembed.budget import Budget
from metaembed.errors import InputError
from metaembed.index.first_stages import FIRST_STAGES, FirstStage
from metaembed.index.search import SegmentView, bases

# HNSW graph degree; 32 is FAISS's common default for d = 128..2048.
_HNSW_M = 32
# Rebuild once more than this fraction of the graph's points are deleted rows.
_MAX_DEAD_FRACTION = 0.25
_ADD_ROWS = 65536


@FIRST_STAGES.register
class FirstVectorANN(FirstStage):
    """An HNSW inner-product graph over the first vector of every candidate row it has seen."""

    name = "ann"

    def __init__(self, dim: int, ef_search: int = 128) -> None:
        super().__init__(dim)
        self.ef_search = ef_search
        self._lock = threading.Lock()
        self.reset()

    def check_budget(self, budget: Budget) -> None:
        if budget.r_c != 1:
            raise InputError(f"mode 'ann' needs a first-stage budget with r_c == 1, got {budget}")

    def reset(self) -> None:
        import faiss

        self._graph = faiss.IndexHNSWFlat(self.dim, _HNSW_M, faiss.METRIC_INNER_PRODUCT)
        self._segments: list[str] = []  # segments in the graph, in the order their rows were added
        self._starts: list[int] = []  # graph ordinal of each segment's row 0

    def _sync(self, views: tuple[SegmentView, ...]) -> None:
        names = [v.segment.name for v in views]
        live = sum(int(v.alive.sum()) for v in views)
        stale = any(name not in names for name in self._segments)
        if stale or (self._graph.ntotal and 1 - live / self._graph.ntotal > _MAX_DEAD_FRACTION):
            self.reset()
        known = set(self._segments)
        for view in views:
            if view.segment.name in known:
                continue
            self._starts.append(int(self._graph.ntotal))
            self._segments.append(view.segment.name)
            segment = view.segment
            for start in range(0, view.rows, _ADD_ROWS):
                stop = min(view.rows, start + _ADD_ROWS)
                scales = None if segment.scales is None else segment.scales[0, start:stop]
                first = segment.fmt.decode(segment.codes[0, start:stop], scales)
                self._graph.add(np.ascontiguousarray(first.numpy(), dtype=np.float32))

    def shortlist(self, views: tuple[SegmentView, ...], queries: torch.Tensor, budget: Budget, width: int) -> torch.Tensor:
        """Approximate top-``width`` refs ``(Q, width)`` of ``queries`` ``(Q, R_q, D)`` at budget ``(r_q, 1)``.

        Refs are in the snapshot ``views``' numbering; ``-1`` pads missing entries.
        """
        r_q = budget.r_q
        with self._lock:
            self._sync(views)
            graph_size = int(self._graph.ntotal)
            if graph_size == 0:
                return torch.full((queries.shape[0], width), -1, dtype=torch.long)
            dead = graph_size - sum(int(v.alive.sum()) for v in views)
            fetch = min(graph_size, width + dead)
            self._graph.hnsw.efSearch = max(self.ef_search, fetch)
            summed = queries[:, :r_q].to(torch.float32).sum(dim=1).numpy()
            _, ordinals = self._graph.search(np.ascontiguousarray(summed), fetch)
            starts = np.asarray(self._starts + [graph_size])
            offsets = dict(zip((v.segment.name for v in views), bases(views)))
            alive = {v.segment.name: v.alive.numpy() for v in views}
            order = list(self._segments)
        return torch.from_numpy(_live_refs(ordinals, starts, order, offsets, alive, width))


def _live_refs(ordinals: np.ndarray, starts: np.ndarray, order: list[str], offsets: dict[str, int],
               alive: dict[str, np.ndarray], width: int) -> np.ndarray:
    """The first ``width`` live rows of each query's graph answer, as snapshot refs ``(Q, width)``.

    ``ordinals`` ``(Q, F)`` are graph points best first (``-1`` = none); ``starts`` ``(S + 1,)``
    the graph ordinal of each segment's row 0 in ``order`` (and the graph size); ``offsets`` and
    ``alive`` the snapshot's first ref and live rows of each segment. Every segment in ``order``
    is in the snapshot (a graph holding a segment the snapshot lacks is rebuilt first).
    Vectorised: a filtered search may fetch most of the graph to find ``width`` live rows.
    """
    refs = np.full(ordinals.shape, -1, dtype=np.int64)
    owner = np.searchsorted(starts, ordinals, side="right") - 1
    for index, name in enumerate(order):
        mine = (owner == index) & (ordinals >= 0)
        local = ordinals[mine] - starts[index]
        refs[mine] = np.where(alive[name][local], offsets[name] + local, -1)
    live = refs >= 0
    rank = np.cumsum(live, axis=1) - 1  # each live entry's place among its query's live entries
    keep = live & (rank < width)
    out = np.full((ordinals.shape[0], width), -1, dtype=np.int64)
    out[np.nonzero(keep)[0], rank[keep]] = refs[keep]
    return out


__all__ = ["FirstVectorANN"]
