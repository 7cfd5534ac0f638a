"""One shard served: :class:`ShardServer`, and the two ways a collection reaches its shards.

:class:`ShardServer` owns one shard folder (an ordinary, memory-mapped
:class:`~metaembed.index.MultiVectorIndex`) and answers the calls a
:class:`~metaembed.distributed.ShardedIndex` fans out: searches, the two phases
of a collection-wide coarse-to-fine search, and writes. Its arguments and
results are plain data (numpy arrays, lists, :class:`~metaembed.index.SearchResult`),
so the same class runs in-process (:class:`LocalShards`) or as a Ray actor
(:class:`~metaembed.distributed.actors.RayShards`, one actor per shard, restarted
from its folder by Ray's ``max_restarts`` when its process dies).

A backend's ``submit(shard, method, *args)`` returns a :class:`Call`; its
``result(timeout)`` gives the method's return value, re-raises the method's own
error (bad input, unknown ids) unchanged, and raises
:class:`~metaembed.errors.ShardUnavailableError` when the shard's process died or
did not answer in time, which is the one failure the collection recovers from.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from metaembed.budget import Budget
from metaembed.index import MultiVectorIndex, SearchResult
from metaembed.distributed.stages import GivenShortlist, RefMap, ScoredShortlist
from metaembed.index.filters import PayloadFilter


class ShardServer:
    """Serves one shard folder. All methods take and return plain, picklable data.

    Args:
        path: the shard's index folder (made by :meth:`ShardedIndex.create`).
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.index = MultiVectorIndex.open(path)
        self._ref_map = RefMap()

    # ----------------------------------------------------------------- state
    def ping(self) -> int:
        """The number of live items: answers as soon as the shard is open."""
        return len(self.index)

    def process(self) -> dict[str, Any]:
        """Which process serves the shard: ``pid`` and, on Ray, ``actor_id`` (a restart keeps the id, not the pid)."""
        actor_id = None
        if "ray" in sys.modules:  # in-process shards never import Ray
            import ray

            if ray.is_initialized():
                actor_id = ray.get_runtime_context().get_actor_id()
        return {"pid": os.getpid(), "actor_id": actor_id}

    def info(self) -> dict[str, Any]:
        """``dim``, ``num_vectors``, ``dtype``, ``metadata`` and ``size`` of the shard."""
        index = self.index
        return {"dim": index.dim, "num_vectors": index.num_vectors, "dtype": index.dtype,
                "metadata": dict(index.metadata), "size": len(index)}

    def present(self, ids: Sequence[str]) -> list[bool]:
        """Which of ``ids`` the shard holds."""
        return [item_id in self.index for item_id in ids]

    def ids(self) -> list[str]:
        return self.index.ids

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """fp32 ``(N, num_vectors, D)`` stored vectors of ``ids``."""
        return self.index.vectors(list(ids)).numpy()

    def payloads(self, ids: Sequence[str]) -> dict[str, Any]:
        """The stored payloads of those of ``ids`` that the shard holds."""
        return self.index.payloads(list(ids))

    # ----------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, budget: Budget, mode: str, shortlist: int,
               first_stage_budget: Budget, filter: PayloadFilter | None = None) -> list[list[SearchResult]]:
        """The shard's own top-``k`` of checked fp32 queries ``(Q, R_q, D)`` among the candidates that
        match ``filter`` (see :meth:`MultiVectorIndex.search_batch`)."""
        return self.index.search_batch(_tensor(queries), k, budget, mode, shortlist, first_stage_budget, filter)

    def first_stage(self, queries: np.ndarray, budget: Budget, width: int,
                    filter: PayloadFilter | None = None) -> list[list[tuple[str, float]]]:
        """Phase one of coarse-to-fine: each query's best ``width`` ``(id, score)`` at the cheap ``budget``."""
        stage = ScoredShortlist(self.index.dim)
        self.index.search_batch(_tensor(queries), 1, budget, stage, width, budget, filter)
        return stage.found if stage.found else [[] for _ in range(len(queries))]

    def rerank(self, queries: np.ndarray, ids: Sequence[Sequence[str]], budget: Budget, k: int) -> list[list[SearchResult]]:
        """Phase two: exact MaxSim at ``budget`` of each query ``(Q, R_q, D)`` against its ``ids`` of this shard.

        Returns each query's best ``k`` of its ids (an empty list where it has none), scored by the
        index's own re-ranking, so the scores equal a single index's.
        """
        width = max([len(row) for row in ids] + [1])
        stage = GivenShortlist(self.index.dim, ids, self._ref_map)
        return self.index.search_batch(_tensor(queries), k, budget, stage, width, budget)

    # ----------------------------------------------------------------- writes
    def add(self, ids: list[str], embeddings: np.ndarray, payloads: list[dict | None] | None) -> int:
        self.index.add(ids, embeddings, payloads)
        return len(self.index)

    def upsert(self, ids: list[str], embeddings: np.ndarray, payloads: list[dict | None] | None) -> int:
        self.index.upsert(ids, embeddings, payloads)
        return len(self.index)

    def add_missing(self, ids: list[str], embeddings: np.ndarray, payloads: list[dict | None] | None) -> int:
        """Add the ids not yet present (an idempotent add, for resumable builds); returns how many were added."""
        keep = [i for i, item_id in enumerate(ids) if item_id not in self.index]
        if keep:
            self.index.add([ids[i] for i in keep], embeddings[keep],
                           None if payloads is None else [payloads[i] for i in keep])
        return len(keep)

    def delete(self, ids: list[str]) -> int:
        self.index.delete(ids)
        return len(self.index)

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        self.index.metadata = metadata

    def compact(self) -> None:
        self.index.compact()

    def close(self) -> None:
        self.index.close()


def _tensor(queries: np.ndarray) -> torch.Tensor:
    # Arrays that came through Ray's object store are read-only; torch wants to own writable memory.
    return torch.from_numpy(np.array(queries, dtype=np.float32))


# --------------------------------------------------------------------- backends
class Call(Protocol):
    def result(self, timeout: float | None) -> Any:
        """The call's value; its own error re-raised; :class:`ShardUnavailableError` if the shard is gone."""


class ShardBackend(Protocol):
    """How a collection reaches its shards (in-process or Ray actors)."""

    num_shards: int

    def submit(self, shard: int, method: str, *args: Any) -> Call:
        """Start ``ShardServer.<method>(*args)`` on ``shard``."""

    def wait_ready(self, shard: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``shard`` to answer; whether it did."""

    def close(self) -> None:
        """Release the shards (and, for actors the backend created, stop them)."""


class _Done:
    """A call already run in-process: its value or its error."""

    def __init__(self, run: Callable[[], Any]) -> None:
        try:
            self._value, self._error = run(), None
        except BaseException as error:  # handed to the caller of result()
            self._value, self._error = None, error

    def result(self, timeout: float | None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class LocalShards:
    """Every shard in this process, called one after another (no Ray): the cheap way to test the sharding."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.servers = [ShardServer(str(path)) for path in paths]
        self.num_shards = len(self.servers)

    def submit(self, shard: int, method: str, *args: Any) -> Call:
        return _Done(lambda: getattr(self.servers[shard], method)(*args))

    def wait_ready(self, shard: int, timeout: float) -> bool:
        return True

    def close(self) -> None:
        for server in self.servers:
            server.close()


__all__ = ["ShardServer", "ShardBackend", "LocalShards", "Call"]
