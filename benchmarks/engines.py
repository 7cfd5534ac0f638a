"""Index-based peers of the scoring benchmark: engines that store the candidates themselves and search them.

Each engine is built over the same stored values (the float16 index's vectors,
upcast to fp32) and answers top-k at a budget ``(r_q, r_c)``; the benchmark
records its build time and on-disk bytes beside its latency and top-10 overlap.

* ``qdrant-edge`` (qdrant-edge-py): Qdrant's embedded Rust engine, native MaxSim.
* ``qdrant-client local`` (qdrant-client's local mode): the same API served by
  its in-process Python/numpy implementation.
* ``lancedb``: LanceDB's multivector column, flat (exact) MaxSim scan. LanceDB
  supports only the cosine metric for multivectors; on unit vectors it ranks as
  the dot product does.
* ``xtr-warp``: xtr-warp-rs, a WARP index (k-means centroids + residual codes)
  and its own approximate search. Its wheel links libtorch 2.11 (it crashes
  inside our torch 2.13), so it runs in a separate interpreter whose environment
  has the torch it was built for (``--xtr-python``); the vectors travel as
  ``.npy`` files and the worker times its own searches.

Engines that hold one fixed set of vectors per point (Qdrant, LanceDB) cannot
score a prefix, so each candidate budget ``r_c`` of the ladder gets its own named
vector / column holding the first ``r_c`` vectors.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np


def folder_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path`` (what the engine keeps on disk)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class Engine(Protocol):
    """An index-based peer: fill it, then search it at any budget of the ladder it was built for."""

    name: str
    exact: bool
    folder: str

    def add(self, start_id: int, candidates: np.ndarray) -> None:
        """Store ``candidates`` ``(N, R_c, D)`` fp32 as points ``start_id ..``."""

    def finish(self) -> None:
        """Build whatever index the engine searches (after the last ``add``)."""

    def search(self, queries: np.ndarray, r_q: int, r_c: int, k: int) -> list[list[int]]:
        """Top-``k`` point ids of each query ``(Q, R_q, D)`` at budget ``(r_q, r_c)``."""

    def close(self) -> None:
        """Release files and threads."""


class QdrantEdge:
    """Qdrant's embedded engine (``qdrant-edge-py``) with native MaxSim, one named multivector per ``r_c``.

    Plain (brute-force) index: a multivector HNSW took 970 s to build for 10k
    points and recalled 0.50 (research/offline.md section 5).
    """

    name, exact = "qdrant-edge", True

    def __init__(self, folder: str, dim: int, candidate_budgets: Sequence[int]) -> None:
        import qdrant_edge as qe

        self._qe, self.folder = qe, folder
        self.candidate_budgets = sorted(set(candidate_budgets))
        maxsim = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
        params = {f"c{r_c}": qe.EdgeVectorParams(dim, qe.Distance.Dot, multivector_config=maxsim)
                  for r_c in self.candidate_budgets}
        self.shard = qe.EdgeShard.create(folder, qe.EdgeConfig(vectors=params))

    def add(self, start_id: int, candidates: np.ndarray) -> None:
        qe = self._qe
        # Vectors travel as Python float lists (~32 bytes a value): about 4M values per request.
        batch = max(1, 4_000_000 // (sum(self.candidate_budgets) * candidates.shape[-1]))
        for offset in range(0, len(candidates), batch):
            points = [qe.Point(start_id + offset + i, {f"c{r_c}": item[:r_c].tolist() for r_c in self.candidate_budgets})
                      for i, item in enumerate(candidates[offset : offset + batch])]
            self.shard.update(qe.UpdateOperation.upsert_points(points))

    def finish(self) -> None:
        pass

    def search(self, queries: np.ndarray, r_q: int, r_c: int, k: int) -> list[list[int]]:
        qe = self._qe
        requests = [qe.QueryRequest(limit=k, query=qe.Query.Nearest(query[:r_q].tolist(), using=f"c{r_c}"))
                    for query in queries]
        found = self.shard.query_batch(qe.QueryBatchRequest(requests))
        return [[int(point.id) for point in row] for row in found]

    def close(self) -> None:
        self.shard.close()


class QdrantLocal:
    """qdrant-client in local mode (``QdrantClient(path=...)``): MaxSim in its in-process Python implementation."""

    name, exact = "qdrant-client local", True

    def __init__(self, folder: str, dim: int, candidate_budgets: Sequence[int]) -> None:
        from qdrant_client import QdrantClient, models

        self._models, self.folder = models, folder
        self.candidate_budgets = sorted(set(candidate_budgets))
        self.client = QdrantClient(path=folder)
        maxsim = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
        self.client.create_collection(
            "bench", vectors_config={f"c{r_c}": models.VectorParams(size=dim, distance=models.Distance.DOT,
                                                                    multivector_config=maxsim)
                                     for r_c in self.candidate_budgets})

    def add(self, start_id: int, candidates: np.ndarray) -> None:
        vectors = {f"c{r_c}": candidates[:, :r_c] for r_c in self.candidate_budgets}
        self.client.upload_collection("bench", vectors=vectors, ids=range(start_id, start_id + len(candidates)),
                                      batch_size=256, wait=True)

    def finish(self) -> None:
        pass

    def search(self, queries: np.ndarray, r_q: int, r_c: int, k: int) -> list[list[int]]:
        requests = [self._models.QueryRequest(query=query[:r_q].tolist(), using=f"c{r_c}", limit=k)
                    for query in queries]
        found = self.client.query_batch_points("bench", requests=requests)
        return [[int(point.id) for point in row.points] for row in found]

    def close(self) -> None:
        self.client.close()


class LanceFlat:
    """LanceDB multivector columns (``list<fixed_size_list<float32, D>>``), searched by its flat MaxSim scan."""

    name, exact = "lancedb", True

    def __init__(self, folder: str, dim: int, candidate_budgets: Sequence[int]) -> None:
        import lancedb

        self.folder, self.dim = folder, dim
        self.candidate_budgets = sorted(set(candidate_budgets))
        self.db = lancedb.connect(folder)
        self.table = None

    def _batch(self, start_id: int, candidates: np.ndarray):
        import pyarrow as pa

        n = len(candidates)
        columns = {"id": pa.array(np.arange(start_id, start_id + n, dtype=np.int64))}
        for r_c in self.candidate_budgets:
            values = pa.array(np.ascontiguousarray(candidates[:, :r_c]).reshape(-1))
            offsets = pa.array(np.arange(0, n * r_c + 1, r_c, dtype=np.int32))
            columns[f"c{r_c}"] = pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(values, self.dim))
        return pa.table(columns)

    def add(self, start_id: int, candidates: np.ndarray) -> None:
        batch = self._batch(start_id, candidates)
        if self.table is None:
            self.table = self.db.create_table("bench", batch)
        else:
            self.table.add(batch)

    def finish(self) -> None:
        pass

    def search(self, queries: np.ndarray, r_q: int, r_c: int, k: int) -> list[list[int]]:
        found = []
        for query in queries:
            rows = (self.table.search(np.ascontiguousarray(query[:r_q]), vector_column_name=f"c{r_c}")
                    .limit(k).select(["id"]).to_arrow())
            found.append(rows["id"].to_pylist())
        return found

    def close(self) -> None:
        self.table = None


WARP_WORKER = Path(__file__).with_name("warp_worker.py")


class XtrWarp:
    """xtr-warp-rs in its own interpreter: one WARP index per candidate budget, built and searched there.

    ``python`` is an interpreter whose environment has ``xtr-warp-rs`` and the torch
    its wheel was built for. The vectors of every ``add`` are appended to one
    ``.npy`` per candidate budget; ``finish`` builds the indexes (timed by the worker);
    ``search`` runs the worker's timed searches and keeps its timings in ``timings``.
    """

    name, exact = "xtr-warp", False

    def __init__(self, folder: str, dim: int, candidate_budgets: Sequence[int], python: str, threads: int,
                 settings: Iterable[dict]) -> None:
        self.folder, self.dim, self.python, self.threads = folder, dim, python, threads
        self.candidate_budgets = sorted(set(candidate_budgets))
        self.settings = list(settings)
        self._parts: dict[int, list[np.ndarray]] = {r_c: [] for r_c in self.candidate_budgets}
        self.build_seconds: dict[int, float] = {}
        self.index_bytes: dict[int, int] = {}

    def add(self, start_id: int, candidates: np.ndarray) -> None:
        for r_c in self.candidate_budgets:
            self._parts[r_c].append(np.ascontiguousarray(candidates[:, :r_c], dtype=np.float32))

    def _worker(self, *args: str) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        done = subprocess.run([self.python, str(WARP_WORKER), *args], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"xtr-warp worker failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def finish(self) -> None:
        for r_c, parts in self._parts.items():
            vectors = Path(self.folder) / f"c{r_c}.npy"
            np.save(vectors, np.concatenate(parts))
            parts.clear()
            built = self._worker("build", str(vectors), str(Path(self.folder) / f"warp-c{r_c}"))
            vectors.unlink()
            self.build_seconds[r_c], self.index_bytes[r_c] = built["seconds"], built["bytes"]

    def timed_search(self, queries: np.ndarray, r_q: int, r_c: int, k: int, reps: int,
                     batch: int | None = None) -> list[dict]:
        """Each setting's search of ``queries`` at ``(r_q, r_c)``: ``{"setting", "times", "ids"}``, one
        timed call per ``batch`` queries (default: all in one call) in each of ``reps`` passes."""
        with tempfile.NamedTemporaryFile(suffix=".npy", dir=self.folder, delete=False) as handle:
            np.save(handle, np.ascontiguousarray(queries[:, :r_q], dtype=np.float32))
        try:
            return self._worker("search", str(Path(self.folder) / f"warp-c{r_c}"), handle.name, str(k), str(reps),
                                str(self.threads), json.dumps(self.settings), str(batch or len(queries)))["results"]
        finally:
            os.unlink(handle.name)

    def search(self, queries: np.ndarray, r_q: int, r_c: int, k: int) -> list[list[int]]:
        return self.timed_search(queries, r_q, r_c, k, 1)[0]["ids"]

    def close(self) -> None:
        pass


def default_warp_python() -> str | None:
    """``METAEMBED_XTR_PYTHON`` if set, else None (xtr-warp-rs cannot run inside this interpreter's torch)."""
    return os.environ.get("METAEMBED_XTR_PYTHON") or None


__all__ = ["Engine", "QdrantEdge", "QdrantLocal", "LanceFlat", "XtrWarp", "folder_bytes", "default_warp_python"]
