"""The ``ann`` first stage: FAISS HNSW over each candidate's first vector (kept in fp16), sub-linear in the index size.

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

A graph that took more than :data:`_KEEP_SECONDS` to build is also written to the cache
(:func:`graph_folder`: ``ann-graphs/`` of the cache root, one file per index folder, replaced atomically, CRC-32C
checked), so the next process that searches the index (a CLI call, a restarted server)
loads it in a fraction of a second instead of building it again (11.8 s at 100k
candidates, D = 384, on 2 Zen 3 cores). The file names the segments it covers; segments
are immutable, so it serves any later state of the index that still holds them all (the
segments added since are grown in). It is derived data: a missing, stale, damaged or
unwritable file only means a build. The file records its index folder, and each save removes
the kept graphs of indexes that are gone (their folder deleted or no longer an index) and
temporary files that crashed writers left, so the cache does not grow with every index ever
searched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from metaembed.budget import Budget
from metaembed.cache import cache_folder
from metaembed.errors import InputError
from metaembed.index.catalog import CATALOG_NAME
from metaembed.index.checksum import crc
from metaembed.index.first_stages import FIRST_STAGES, FirstStage
from metaembed.index.search import SegmentView, bases

if TYPE_CHECKING:  # pragma: no cover
    import faiss

# HNSW graph degree; 32 is FAISS's common default for d = 128..2048.
_HNSW_M = 32
# Rebuild once more than this fraction of the graph's points are deleted rows.
_MAX_DEAD_FRACTION = 0.25
_ADD_ROWS = 65536
# A graph whose build (or growth) took longer than this is kept in the cache for the next process.
_KEEP_SECONDS = 1.0
_MAGIC = b"metaembed-ann-graph\n"
# 2: the header records the index folder; 3: the graph stores fp16 vectors (older files are replaced or pruned)
_VERSION = 3
# A temporary file older than this is a crashed writer's, removed by the next save.
_STALE_TEMPORARY_SECONDS = 3600.0
# A graph file's JSON header is a few KiB (segment names); a larger recorded size means a damaged file.
_MAX_HEADER_BYTES = 1 << 24


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
        self._graph = new_graph(self.dim)
        self._segments: list[str] = []  # segments in the graph, in the order their rows were added
        self._starts: list[int] = []  # graph ordinal of each segment's row 0
        self._loaded = False  # whether the cache was tried since the graph was last emptied

    def _sync(self, views: tuple[SegmentView, ...]) -> None:
        names = [v.segment.name for v in views]
        if not self._loaded and self._graph.ntotal == 0:
            self._loaded = True
            self._load(views)
        live = sum(int(v.alive.sum()) for v in views)
        stale = any(name not in names for name in self._segments)
        if stale or (self._graph.ntotal and 1 - live / self._graph.ntotal > _MAX_DEAD_FRACTION):
            self.reset()
        known = set(self._segments)
        started = time.perf_counter()
        for view in views:
            if view.segment.name in known:
                continue
            self._starts.append(int(self._graph.ntotal))
            self._segments.append(view.segment.name)
            segment = view.segment
            for start in range(0, view.rows, _ADD_ROWS):
                stop = min(view.rows, start + _ADD_ROWS)
                slots = segment.fmt.slots(1)
                scales = None if segment.scales is None else segment.scales[:slots, start:stop]
                first = segment.fmt.decode_prefix(segment.codes[:slots, start:stop], scales, 1)[0]
                self._graph.add(np.ascontiguousarray(first.numpy(), dtype=np.float32))
        if time.perf_counter() - started > _KEEP_SECONDS:
            self._save()

    # ------------------------------------------------------------- the cache
    def _cache_file(self) -> Path | None:
        """This index's graph file in the cache; ``None`` for a scratch index."""
        return None if self.folder is None else kept_graph_file(self.folder)

    def _load(self, views: tuple[SegmentView, ...]) -> None:
        """Adopt the cached graph if it covers only segments of ``views``, row for row; else keep the empty one."""
        import faiss

        path = self._cache_file()
        try:
            if path is None or not path.is_file():
                return
            data = path.read_bytes()
        except OSError:
            return
        header = _read_header(data)
        rows = {view.segment.name: view.rows for view in views}
        try:
            segments, starts = list(header["segments"]), [int(start) for start in header["starts"]]
            fits = (header["dim"] == self.dim and header["m"] == _HNSW_M and len(segments) == len(starts)
                    and all(name in rows for name in segments))
            ends = starts[1:] + [int(header["points"])]
            fits = fits and all(end - start == rows[name] for name, start, end in zip(segments, starts, ends))
            fits = fits and (not starts or starts[0] == 0)
        except (TypeError, KeyError, ValueError):  # no header (a damaged file), or one of another shape
            return
        if not fits:
            return
        try:
            graph = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8, offset=header["offset"]))
        except RuntimeError:
            return
        if int(graph.ntotal) == int(header["points"]) and graph.d == self.dim:
            self._graph, self._segments, self._starts = graph, segments, starts

    def _save(self) -> None:
        """Write the graph to the cache (atomically: a temporary file renamed over the old one)."""
        import faiss

        path = self._cache_file()
        if path is None:
            return
        payload = faiss.serialize_index(self._graph)
        header = json.dumps({"version": _VERSION, "folder": str(Path(self.folder).resolve()),
                             "dim": self.dim, "m": _HNSW_M, "segments": self._segments,
                             "starts": self._starts, "points": int(self._graph.ntotal), "bytes": int(payload.nbytes), "crc": crc(payload)}).encode()
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as handle:
                handle.write(_MAGIC + struct.pack("<Q", len(header)) + header)
                handle.write(memoryview(payload))
            os.replace(partial, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            warnings.warn(f"could not keep the ann graph in {path.parent} ({error}); the next process builds it again",
                          stacklevel=2)
            return
        prune_graphs(path.parent, keep=path)

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


def new_graph(dim: int) -> "faiss.Index":
    """An empty HNSW inner-product graph that stores its points in fp16 (FAISS ``IndexHNSWSQ``).

    fp16 rather than fp32 points: the graph of the 100k index of ``make bench-approximate`` takes
    100 MiB (``benchmarks/results/memory-*.md``; 173 MiB with fp32 points) and its shortlists keep
    the same top-10 overlaps, row for row (``approximate-*.md``, before and after); the shortlist
    is re-ranked from the index's own vectors anyway.
    """
    import faiss

    return faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, _HNSW_M, faiss.METRIC_INNER_PRODUCT)


def graph_folder() -> Path:
    """Where graphs are kept: ``$METAEMBED_ANN_GRAPHS`` when set (the test suite points it at a
    scratch folder), else ``ann-graphs/`` of the cache root."""
    return cache_folder("ann-graphs")


def kept_graph_file(index_folder: str | Path) -> Path:
    """The cache file that keeps the graph of the index in ``index_folder`` (it may not exist)."""
    key = hashlib.blake2b(str(Path(index_folder).resolve()).encode("utf-8"), digest_size=8).hexdigest()
    return graph_folder() / f"{key}.faiss"


def prune_graphs(folder: Path, keep: Path | None = None) -> list[Path]:
    """Remove the kept graphs in ``folder`` whose index is gone, and crashed writers' temporary files.

    A graph goes when the folder its header records no longer holds an index (deleted or moved),
    when it has no readable header (damaged: useless to any version), or when it is of an older
    format (version 1 recorded no folder); ``keep`` and files of a newer format (another metaembed
    sharing the cache) stay. Only headers are read.
    Returns the files removed; a file that cannot be read or removed is left alone.
    """
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            if entry == keep or not entry.is_file():
                continue
            if entry.name.endswith(".tmp"):
                gone = now - entry.stat().st_mtime > _STALE_TEMPORARY_SECONDS
            elif entry.suffix == ".faiss":
                with open(entry, "rb") as handle:
                    header = _peek_header(handle)
                version = header.get("version") if header else None
                if not isinstance(version, int) or version < _VERSION:  # damaged, or an older format
                    gone = True
                else:
                    gone = version == _VERSION and not (Path(str(header.get("folder"))) / CATALOG_NAME).is_file()
            else:
                continue
            if gone:
                entry.unlink()
                removed.append(entry)
        except OSError:
            continue
    return removed


def _peek_header(handle: BinaryIO) -> dict | None:
    """The JSON header at the start of an open graph file, with ``offset`` (where the FAISS bytes
    start), without reading or checking the graph; ``None`` when the file does not start with one."""
    start = handle.read(len(_MAGIC) + 8)
    if not start.startswith(_MAGIC) or len(start) < len(_MAGIC) + 8:
        return None
    size = struct.unpack_from("<Q", start, len(_MAGIC))[0]
    if size > _MAX_HEADER_BYTES:
        return None
    try:
        header = json.loads(handle.read(size))
    except ValueError:
        return None
    return {**header, "offset": len(_MAGIC) + 8 + size} if isinstance(header, dict) else None


def _read_header(data: bytes) -> dict | None:
    """The header of a graph file (see :func:`_peek_header`); ``None`` unless the file is whole:
    the right magic and version, and a payload of the recorded size and CRC-32C."""
    header = _peek_header(io.BytesIO(data))
    try:
        whole = header is not None and (header["version"] == _VERSION and len(data) - header["offset"] == header["bytes"]
                                        and crc(memoryview(data)[header["offset"]:]) == header["crc"])
    except (KeyError, TypeError):
        return None
    return header if whole else None


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


__all__ = ["FirstVectorANN", "new_graph", "graph_folder", "kept_graph_file", "prune_graphs"]
