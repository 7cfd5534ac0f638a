"""MultiVectorIndex: a persistent, crash-safe multi-vector index searched at any budget.

Candidates are stored once at ``num_vectors`` (the largest ``r_c``) and every
search picks its budget ``(r_q, r_c)``. On disk an index is a folder::

    catalog.sqlite        ids, payloads, configuration, committed segments (the commit point)
    seg-<uuid>.vec        (num_vectors, rows, dim) vectors, position-major, storage dtype
    seg-<uuid>.scale      (num_vectors, rows) fp32 per-vector scales (int8 only)

Every ``add`` / ``upsert`` writes one new segment file and commits it with its
ids in one SQLite transaction; ``delete`` commits tombstones; ``save`` merges
segments (reclaiming tombstones) and commits the swap. Files are fsynced before
the commit that references them, so a writer killed at any point leaves the
index at its last commit.

Thread safety: one writer at a time (writes are serialised by a lock) and any
number of concurrent searches in the same process. A search works on an
immutable snapshot of the segments, so it never waits for a write to finish.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from metaembed.budget import Budget, BudgetLike
from metaembed.errors import IndexStateError, InputError
from metaembed.index.ann import FirstVectorANN
from metaembed.index.catalog import CATALOG_NAME, Catalog
from metaembed.index.quantize import decode, storage_format
from metaembed.index.search import SegmentView, exact_topk, rerank, resolve
from metaembed.index.inputs import check_finite, id_list, json_dict, json_payloads, positive_int, unique_ids
from metaembed.index.segments import (
    encoded_blocks,
    merged_blocks,
    open_segment,
    segment_files,
    write_segment,
)
from metaembed.scoring import ArrayLike, as_tensor, embedding_bytes, maxsim_flops

# Segments are merged in tiers of similar size (powers of _MERGE_FANOUT rows):
# once a tier holds _MERGE_FANOUT segments they become one. Many small adds
# (an HTTP service adding one document at a time) thus cost O(log N) rewrites
# per row and searches never face thousands of tiny segments.
_MERGE_FANOUT = 8
_QUERY_BATCH = 256
SEARCH_MODES = ("exact", "coarse", "ann")


@dataclass(frozen=True)
class SearchResult:
    """One hit: the candidate's ``id``, its MaxSim ``score`` at the search budget, and its ``payload`` (or ``None``)."""

    id: str
    score: float
    payload: dict[str, Any] | None


def _tier(rows: int) -> int:
    return int(math.log(max(rows, 1), _MERGE_FANOUT))


class MultiVectorIndex:
    """A persistent multi-vector index with budgeted MaxSim search.

    Create with :meth:`create`, reopen with :meth:`open`. Candidates are
    ``(N, R, D)`` embeddings with ``R >= num_vectors`` (only the first
    ``num_vectors`` are kept: MetaEmbed's prefixes are nested) and ``D == dim``.
    """

    def __init__(self, folder: Path, catalog: Catalog, scratch: tempfile.TemporaryDirectory | None = None) -> None:
        self._folder = folder
        self._catalog = catalog
        self._scratch = scratch  # owns the folder of an index created without a path
        config = catalog.config()
        self._dim = int(config["dim"])
        self._num_vectors = int(config["num_vectors"])
        self._fmt = storage_format(config["dtype"])
        self._metadata: dict[str, Any] = dict(config.get("metadata") or {})
        self._write_lock = threading.RLock()  # one writer at a time
        self._state_lock = threading.RLock()  # catalog connection and snapshot swaps
        self._ann: FirstVectorANN | None = None
        self._load()

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def create(
        cls,
        path: str | Path | None,
        dim: int,
        num_vectors: int,
        dtype: str = "float16",
        metadata: dict[str, Any] | None = None,
    ) -> "MultiVectorIndex":
        """Create an empty index.

        Args:
            path: a folder that does not exist yet (or is empty). ``None`` makes a
                temporary index in a scratch folder, deleted when the index is
                closed; :meth:`save` with a path makes it persistent.
            dim: vector dimension ``D``.
            num_vectors: vectors stored per candidate (the largest ``r_c``).
            dtype: storage precision, ``"float16"`` (default), ``"bfloat16"``,
                ``"int8"`` (per-vector scale) or ``"float32"``.
            metadata: JSON-able dict stored with the index (model path, budgets, ...).
        """
        dim, num_vectors = positive_int(dim, "dim"), positive_int(num_vectors, "num_vectors")
        storage_format(dtype)
        json_dict(metadata, "metadata")
        metadata = dict(metadata or {})
        scratch = None
        if path is None:
            scratch = tempfile.TemporaryDirectory(prefix="metaembed-index-")
            folder = Path(scratch.name)
        else:
            folder = Path(path)
            if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
                raise IndexStateError(f"cannot create an index at {str(folder)!r}: it exists and is not empty")
            folder.mkdir(parents=True, exist_ok=True)
        config = {"dim": dim, "num_vectors": num_vectors, "dtype": dtype, "metadata": metadata}
        return cls(folder, Catalog.create(folder, config), scratch)

    @classmethod
    def open(cls, path: str | Path) -> "MultiVectorIndex":
        """Open an index folder at its last committed state; :class:`IndexStateError` if it is not one."""
        folder = Path(path)
        return cls(folder, Catalog.open(folder))

    def _load(self) -> None:
        """Build the in-memory snapshot (segment views and the id map) from the catalog."""
        with self._state_lock:
            segments = self._catalog.segments()
            rows_of = defaultdict(list)
            for item_id, segment, row in self._catalog.items():
                rows_of[segment].append((row, item_id))
            views = []
            for name, rows in segments:
                try:
                    segment = open_segment(self._folder, name, rows, self._num_vectors, self._dim, self._fmt)
                except (OSError, ValueError) as error:
                    raise IndexStateError(f"index {str(self._folder)!r} is missing vectors of segment {name}: {error}")
                ids = np.full(rows, None, dtype=object)
                for row, item_id in rows_of[name]:
                    ids[row] = item_id
                views.append(SegmentView(segment, ids, torch.from_numpy(ids != None)))  # noqa: E711
            self._views: tuple[SegmentView, ...] = tuple(views)
            self._where = {item_id: (name, row) for name, pairs in rows_of.items() for row, item_id in pairs}

    def close(self) -> None:
        """Release the catalog and memory maps; a scratch (``path=None``) index is deleted."""
        with self._write_lock, self._state_lock:
            self._views = ()
            self._catalog.close()
            if self._scratch is not None:
                self._scratch.cleanup()

    def __enter__(self) -> "MultiVectorIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- properties
    @property
    def path(self) -> Path | None:
        """The index folder, ``None`` for an unsaved scratch index."""
        return None if self._scratch is not None else self._folder

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def num_vectors(self) -> int:
        """Vectors stored per candidate: the largest ``r_c`` a search may use."""
        return self._num_vectors

    @property
    def dtype(self) -> str:
        return self._fmt.name

    @property
    def metadata(self) -> dict[str, Any]:
        """A JSON-able dict stored with the index. Assigning persists it at once;
        changes made to the returned dict in place persist at the next write or :meth:`save`."""
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise InputError(f"metadata must be a dict, got {type(value).__name__}")
        json_dict(value, "metadata")
        with self._write_lock, self._state_lock:
            self._metadata = dict(value)
            self._catalog.set_config("metadata", self._metadata)

    @property
    def ids(self) -> list[str]:
        """Live ids in storage order."""
        views = self._views
        return [item_id for view in views for item_id in view.ids if item_id is not None]

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._where

    def __repr__(self) -> str:
        where = self.path or "<scratch>"
        return (f"MultiVectorIndex({str(where)!r}, items={len(self)}, dim={self.dim}, "
                f"num_vectors={self.num_vectors}, dtype={self.dtype!r})")

    def vectors(self, ids: Sequence[str]) -> torch.Tensor:
        """The stored vectors of ``ids`` as fp32 ``(N, num_vectors, D)``, decoded from the storage precision."""
        ids = id_list(ids)
        with self._state_lock:
            unknown = [i for i in ids if i not in self._where]
            if unknown:
                raise IndexStateError(f"ids not in the index: {unknown[:5]}")
            places = [self._where[i] for i in ids]
            segments = {view.segment.name: view.segment for view in self._views}
        out = torch.empty(len(ids), self._num_vectors, self._dim)
        for position, (name, row) in enumerate(places):
            codes, scales = segments[name].gather(np.array([row]), self._num_vectors)
            out[position] = decode(codes[:, 0], None if scales is None else scales[:, 0], self._fmt)
        return out

    def export(self, r_c: int | None = None, batch: int = 4096) -> Iterator[tuple[list[str], torch.Tensor]]:
        """Every live candidate in storage order, in batches: ``(ids, vectors)`` with fp32 ``(n, r_c, D)``.

        ``r_c`` (default ``num_vectors``) keeps the first ``r_c`` vectors. Reads
        the memory-mapped segments sequentially, one batch at a time.
        """
        r_c = self._budget((1, r_c or self._num_vectors), None).r_c
        batch = positive_int(batch, "batch")
        for view in self._views:
            segment = view.segment
            for start in range(0, view.rows, batch):
                stop = min(view.rows, start + batch)
                alive = view.alive[start:stop].numpy()
                if not alive.any():
                    continue
                scales = None if segment.scales is None else segment.scales[:r_c, start:stop]
                values = decode(segment.codes[:r_c, start:stop], scales, self._fmt).transpose(0, 1)
                yield list(view.ids[start:stop][alive]), values[torch.from_numpy(alive)].contiguous()

    def memory_bytes(self, budget: BudgetLike | None = None) -> int:
        """Bytes of candidate vectors a search at ``budget`` reads: ``len(self) * r_c`` stored vectors.

        ``None`` counts all ``num_vectors`` (the stored size). Budgets are checked against ``num_vectors``.
        """
        r_c = self._budget(budget, None).r_c
        return embedding_bytes(r_c, self._dim, self._fmt.name, num_candidates=len(self))

    def flops(self, budget: BudgetLike | None = None, num_queries: int = 1) -> int:
        """Multiply-add FLOPs of an exact search of ``num_queries`` queries at ``budget`` (``2 r_q r_c D`` per pair)."""
        chosen = self._budget(budget, None)
        return maxsim_flops(chosen, self._dim, num_candidates=len(self), num_queries=num_queries)

    def _budget(self, budget: BudgetLike | None, max_r_q: int | None) -> Budget:
        """``budget`` checked against the index (r_c) and, if given, the queries (r_q); ``None`` = everything."""
        if budget is None:
            return Budget(max_r_q or 1, self._num_vectors)
        chosen = Budget.parse(budget).check_within(None, self._num_vectors, "the index")
        return chosen.check_within(max_r_q, None, "the queries")

    # ----------------------------------------------------------------- writes
    def _check_embeddings(self, embeddings: ArrayLike, count: int) -> torch.Tensor:
        values = as_tensor(embeddings, "embeddings")
        if values.ndim != 3:
            raise InputError(f"embeddings must have shape (N, R, D), got shape {tuple(values.shape)}")
        n, r, d = values.shape
        if n != count:
            raise InputError(f"got {count} ids but {n} embeddings")
        if d != self._dim:
            raise InputError(f"embeddings have dimension D={d} but the index stores D={self._dim}")
        if r < self._num_vectors:
            raise InputError(
                f"embeddings have {r} vectors per item but the index stores {self._num_vectors}; "
                f"create the index with num_vectors<={r}"
            )
        return values

    def add(self, ids: Sequence[str], embeddings: ArrayLike, payloads: Sequence[dict | None] | None = None) -> None:
        """Add new candidates.

        Args:
            ids: ``N`` unique, non-empty strings not yet in the index.
            embeddings: ``(N, R, D)`` with ``R >= num_vectors``, float32/float16/bfloat16
                (torch or numpy; a numpy memmap is read in blocks).
            payloads: optional JSON-able dicts returned with search results.

        Raises :class:`IndexStateError` for ids already present or repeated,
        :class:`InputError` for a wrong shape, dtype or NaN/inf values. Nothing
        is stored unless everything is valid.
        """
        self._write(ids, embeddings, payloads, replace=False)

    def upsert(self, ids: Sequence[str], embeddings: ArrayLike, payloads: Sequence[dict | None] | None = None) -> None:
        """Add candidates, replacing (vectors and payload) those whose id already exists. One commit."""
        self._write(ids, embeddings, payloads, replace=True)

    def _write(self, ids: Sequence[str], embeddings: ArrayLike, payloads: Any, replace: bool) -> None:
        ids = unique_ids(ids)
        values = self._check_embeddings(embeddings, len(ids))
        encoded = json_payloads(payloads, len(ids))
        if not ids:
            return
        with self._write_lock:
            existing = [i for i in ids if i in self._where]
            if existing and not replace:
                raise IndexStateError(f"ids already in the index: {existing[:5]} (use upsert to replace them)")
            blocks = encoded_blocks(values, self._num_vectors, self._fmt, check_finite)
            name = write_segment(self._folder, len(ids), self._num_vectors, self._dim, self._fmt, blocks)
            try:
                with self._state_lock:
                    self._catalog.commit_add(name, len(ids), ids, encoded, existing)
                    self._persist_metadata()
            except BaseException:
                for path in segment_files(self._folder, name):
                    path.unlink(missing_ok=True)
                raise
            with self._state_lock:
                views = self._tombstone(self._views, existing)
                segment = open_segment(self._folder, name, len(ids), self._num_vectors, self._dim, self._fmt)
                self._views = views + (SegmentView(segment, np.array(ids, dtype=object), torch.ones(len(ids), dtype=torch.bool)),)
                self._where.update((item_id, (name, row)) for row, item_id in enumerate(ids))
            self._merge_tiers()

    def delete(self, ids: Sequence[str]) -> None:
        """Remove candidates by id. :class:`IndexStateError` naming them if any id is not in the index."""
        ids = list(dict.fromkeys(id_list(ids)))
        with self._write_lock:
            unknown = [i for i in ids if i not in self._where]
            if unknown:
                raise IndexStateError(f"ids not in the index: {unknown[:5]}" + (" ..." if len(unknown) > 5 else ""))
            with self._state_lock:
                self._catalog.commit_delete(ids)
                self._persist_metadata()
                self._views = self._tombstone(self._views, ids)

    def _tombstone(self, views: tuple[SegmentView, ...], ids: Sequence[str]) -> tuple[SegmentView, ...]:
        """New views with ``ids`` dead (copy-on-write: running searches keep their snapshot)."""
        if not ids:
            return views
        rows_by_segment = defaultdict(list)
        for item_id in ids:
            name, row = self._where.pop(item_id)
            rows_by_segment[name].append(row)
        updated = []
        for view in views:
            rows = rows_by_segment.get(view.segment.name)
            if rows:
                new_ids, alive = view.ids.copy(), view.alive.clone()
                new_ids[rows] = None
                alive[rows] = False
                view = SegmentView(view.segment, new_ids, alive)
            updated.append(view)
        return tuple(updated)

    def _persist_metadata(self) -> None:
        stored = self._catalog.config().get("metadata")
        if stored != self._metadata:
            json_dict(self._metadata, "metadata")
            self._catalog.set_config("metadata", self._metadata)

    # ----------------------------------------------------------------- merging and saving
    def _merge(self, chosen: list[SegmentView]) -> None:
        """Rewrite ``chosen`` segments' live rows as one segment; commit; drop the old files."""
        parts = [(view.segment, np.flatnonzero(view.alive.numpy())) for view in chosen]
        moved = [item_id for view, (_, rows) in zip(chosen, parts) for item_id in view.ids[rows]]
        name = None
        if moved:
            name = write_segment(
                self._folder, len(moved), self._num_vectors, self._dim, self._fmt, merged_blocks(parts)
            )
        dropped = [view.segment.name for view in chosen]
        with self._state_lock:
            self._catalog.commit_merge(name or "", len(moved), moved, dropped)
            remaining = [v for v in self._views if v.segment.name not in dropped]
            if name is not None:
                segment = open_segment(self._folder, name, len(moved), self._num_vectors, self._dim, self._fmt)
                merged = SegmentView(segment, np.array(moved, dtype=object), torch.ones(len(moved), dtype=torch.bool))
                first = min(i for i, v in enumerate(self._views) if v.segment.name in dropped)
                remaining.insert(min(first, len(remaining)), merged)
                self._where.update((item_id, (name, row)) for row, item_id in enumerate(moved))
            self._views = tuple(remaining)
        # Open searches keep their memory maps; unlinking only frees the space when they finish.
        for old in dropped:
            for path in segment_files(self._folder, old):
                path.unlink(missing_ok=True)

    def _merge_tiers(self) -> None:
        by_tier = defaultdict(list)
        for view in self._views:
            by_tier[_tier(view.rows)].append(view)
        for tier in sorted(by_tier):
            if len(by_tier[tier]) >= _MERGE_FANOUT:
                self._merge(by_tier[tier])
                self._merge_tiers()
                return

    def compact(self) -> None:
        """Reclaim deleted rows and merge segments: every segment with tombstones is rewritten."""
        with self._write_lock:
            dirty = [view for view in self._views if not view.all_alive]
            if dirty:
                self._merge(dirty)
            self._merge_tiers()
            self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Delete vector files no commit references (left by a writer killed before its commit)."""
        known = {view.segment.name for view in self._views}
        for path in self._folder.iterdir():
            stem = path.name.split(".")[0]
            if stem.startswith("seg-") and stem not in known:
                path.unlink(missing_ok=True)

    def save(self, path: str | Path | None = None) -> None:
        """Compact and make the index durable; with ``path``, also copy it there and continue from the copy.

        Every write is already committed when it returns; ``save()`` additionally
        reclaims deleted rows. ``save(path)`` writes a complete copy into a
        temporary folder beside ``path`` and renames it into place, so ``path``
        either holds the whole index or nothing. ``path`` must not exist or be empty.
        """
        with self._write_lock:
            self.compact()
            with self._state_lock:
                self._persist_metadata()
            if path is None or (self.path is not None and Path(path).resolve() == self._folder.resolve()):
                if self._scratch is not None:
                    raise IndexStateError("this index was created without a path: give save() a folder")
                return
            target = Path(path)
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise IndexStateError(f"cannot save the index to {str(target)!r}: it exists and is not empty")
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
            try:
                with self._state_lock:
                    self._catalog.backup_to(staging / CATALOG_NAME)
                    names = [view.segment.name for view in self._views]
                for name in names:
                    for source in segment_files(self._folder, name):
                        if source.exists():
                            shutil.copy2(source, staging / source.name)
                if target.exists():
                    target.rmdir()
                staging.rename(target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            with self._state_lock:
                self._catalog.close()
                if self._scratch is not None:
                    self._scratch.cleanup()
                    self._scratch = None
                self._folder = target
                self._catalog = Catalog.open(target)
                self._ann = None
                self._load()

    # ----------------------------------------------------------------- search
    def search(
        self,
        queries: ArrayLike,
        k: int = 10,
        budget: BudgetLike | None = None,
        mode: str = "exact",
        shortlist: int = 1000,
        first_stage_budget: BudgetLike = (1, 1),
    ) -> list[list[SearchResult]]:
        """Top-``k`` candidates of each query by MaxSim at ``budget``.

        Args:
            queries: ``(Q, R_q, D)`` or one query ``(R_q, D)``; float32/16/bf16, torch or numpy.
            k: results per query.
            budget: ``(r_q, r_c)``, ``"r_q,r_c"`` or a :class:`Budget`; ``None`` uses
                all query vectors and all stored candidate vectors.
            mode: ``"exact"`` scores every candidate at ``budget``.
                ``"coarse"`` scores every candidate at ``first_stage_budget``, keeps
                the best ``shortlist`` and re-ranks them exactly at ``budget``.
                ``"ann"`` takes the shortlist from a FAISS HNSW graph over the
                candidates' first vector (``first_stage_budget`` must have ``r_c == 1``),
                so search stays sub-linear in the index size.
            shortlist: candidates kept by the first stage (at least ``k``).
            first_stage_budget: the cheap budget of the first stage.

        Returns:
            One list per query of :class:`SearchResult`, best first (fewer than ``k``
            if the index is smaller). Scores are exact MaxSim at ``budget`` in fp32.
        """
        values = as_tensor(queries, "queries")
        if values.ndim == 2:
            values = values[None]
        if values.ndim != 3 or values.shape[1] == 0:
            raise InputError(f"queries must have shape (Q, R_q, D) or (R_q, D), got shape {tuple(values.shape)}")
        if values.shape[2] != self._dim:
            raise InputError(f"queries have dimension D={values.shape[2]} but the index stores D={self._dim}")
        if not torch.isfinite(values).all():
            raise InputError("queries contain NaN or inf")
        k = positive_int(k, "k")
        if mode not in SEARCH_MODES:
            raise InputError(f"unknown search mode {mode!r}; expected one of {list(SEARCH_MODES)}")
        chosen = self._budget(budget, values.shape[1])
        first = self._budget(first_stage_budget, values.shape[1])
        if mode == "ann" and first.r_c != 1:
            raise InputError(f"mode 'ann' needs a first-stage budget with r_c == 1, got {first}")
        shortlist = positive_int(shortlist, "shortlist")
        values = values.to(torch.float32)
        views = self._views  # the snapshot this search works on
        if not views:
            return [[] for _ in range(values.shape[0])]
        results: list[list[SearchResult]] = []
        for start in range(0, values.shape[0], _QUERY_BATCH):
            batch = values[start : start + _QUERY_BATCH]
            if mode == "exact":
                scores, refs = exact_topk(views, batch, chosen.r_q, chosen.r_c, k)
            else:
                width = max(shortlist, k)
                if mode == "coarse":
                    _, candidates = exact_topk(views, batch, first.r_q, first.r_c, width)
                else:
                    candidates = self._first_stage_ann().search(views, batch, first.r_q, width)
                scores, refs = rerank(views, batch, candidates, chosen.r_q, chosen.r_c, k)
            results.extend(self._results(views, scores, refs))
        return results

    def _first_stage_ann(self) -> FirstVectorANN:
        with self._state_lock:
            if self._ann is None:
                self._ann = FirstVectorANN(self._dim)
            return self._ann

    def _results(self, views: tuple[SegmentView, ...], scores: torch.Tensor, refs: torch.Tensor) -> list[list[SearchResult]]:
        ids = resolve(views, refs)
        wanted = sorted({i for row in ids for i in row})
        with self._state_lock:
            payloads = self._catalog.payloads(wanted)
        return [
            [SearchResult(item_id, float(score), payloads.get(item_id)) for item_id, score in zip(row, row_scores)]
            for row, row_scores in zip(ids, scores.tolist())
        ]


__all__ = ["MultiVectorIndex", "SearchResult", "SEARCH_MODES"]
