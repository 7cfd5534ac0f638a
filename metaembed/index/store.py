"""The durable state of an index: segment files + catalog, and the in-memory snapshot searches read.

:class:`SegmentStore` owns one index folder. It turns validated writes into
crash-safe commits (vector file first, fsynced; then one catalog transaction)
and keeps an immutable snapshot — a tuple of :class:`SegmentView` — that it
replaces copy-on-write after every commit, so searches never block on writers.

Merging: segments are merged in tiers of similar size (powers of
``_MERGE_FANOUT`` rows): once a tier holds ``_MERGE_FANOUT`` segments they
become one. Many small adds (an HTTP service adding one document at a time)
thus cost ``O(log N)`` rewrites per row and searches never face thousands of
tiny segments. A segment more than half of whose rows are deleted is rewritten
after the delete (compaction when it pays); :meth:`SegmentStore.compact`
rewrites every segment with deleted rows.

Concurrency: any number of readers, in this process or others, and one writer
at a time across processes (:class:`~metaembed.index.lock.WriterLock`, held for
each commit; a writer first catches up with commits other processes made).
Readers take no lock: a snapshot is read in one catalog transaction, and a
reader whose snapshot lost a file to a newer commit (a merge removes the files
it replaced) reads the newer snapshot instead, so opening never fails because
of a concurrent compaction.

Housekeeping: files no commit references (left by a writer killed before its
commit, or after a merge's commit but before it removed the old files) are
deleted under the writer lock at a store's first commit, at opening when the
lock is free, and by :meth:`SegmentStore.compact`.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import sqlite3
import threading
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from metaembed.errors import IndexCorruptError, IndexStateError, MetaEmbedError
from metaembed.index.catalog import CATALOG_NAME, Catalog, Damage, Snapshot
from metaembed.index.checksum import ChunkHasher, encode_checks
from metaembed.index.codebook import STATE_KEY, read_state, state_files, write_state
from metaembed.index.files import new_staging_folder, publish_folder, remove_stale_staging, storage_errors
from metaembed.index.filters import PayloadFilter, restrict
from metaembed.index.inputs import check_finite, json_dict
from metaembed.index.codecs import get_codec
from metaembed.index.lock import DEFAULT_TIMEOUT, WriterLock
from metaembed.index.search import SegmentView
from metaembed.index.segments import (
    SCALE_TMP_SUFFIX,
    TMP_SUFFIX,
    Segment,
    encoded_blocks,
    merged_blocks,
    open_segment,
    segment_files,
    write_segment,
)

_MERGE_FANOUT = 8
# A segment is rewritten after a delete once more than this fraction of its rows is deleted.
_COMPACT_DEAD_FRACTION = 0.5
# Snapshots a reader tries when every one it reads loses a file to a newer commit.
_LOAD_ATTEMPTS = 100
_NO_ROWS = np.zeros(0, dtype=np.int64)
_log = logging.getLogger("metaembed.index")


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a block that builds many objects and frees none.

    A snapshot of 100k items makes a few hundred thousand tuples; without this the collector
    rescans them over and over as they are made (about a fifth of opening such an index).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _tier(rows: int) -> int:
    return int(math.log(max(rows, 1), _MERGE_FANOUT))


class _NewerSnapshot(Exception):
    """A file of the snapshot being opened was removed by a newer commit: read that one instead."""


class SegmentStore:
    """One index folder: its configuration, committed segments, id map and the current snapshot.

    ``tolerate`` (for ``check`` / ``repair``) leaves damaged segments and catalog rows out of the
    snapshot and lists them in :attr:`damage` instead of raising :class:`IndexCorruptError`.
    """

    def __init__(self, folder: Path, catalog: Catalog, lock_timeout: float = DEFAULT_TIMEOUT,
                 tolerate: bool = False) -> None:
        self.folder = folder
        self.catalog = catalog
        self.lock = WriterLock(folder, lock_timeout)
        self.write_lock = threading.RLock()  # one writer thread at a time in this process
        self.state_lock = threading.RLock()  # the catalog connection and snapshot swaps
        self.views: tuple[SegmentView, ...] = ()
        self.where: dict[str, tuple[str, int]] = {}  # id -> (segment name, row)
        self.metadata: dict[str, Any] = {}
        self.damage: list[Damage] = []
        self.generation = -1
        self._committed_metadata: dict[str, Any] = {}
        self._committed_names: set[str] = set()
        self._state_entry: Any = None  # the catalog's codec_state entry self.fmt was read from (trained codecs)
        self._codebook_damage: list[Damage] = []
        self._tolerate = tolerate
        self._housekept = False
        try:
            self._load()
            self._housekeep_on_open()
        except BaseException:
            catalog.close()
            raise

    # ----------------------------------------------------------------- loading
    def _configure(self, config: dict[str, Any]) -> None:
        try:
            dim, num_vectors = config["dim"], config["num_vectors"]
            groups = config.get("scale_groups", 1)  # indexes before grouped scales (format 1) have one
            if not all(isinstance(v, int) and v > 0 for v in (dim, num_vectors, groups)):
                raise ValueError(f"dim={dim!r}, num_vectors={num_vectors!r}, scale_groups={groups!r}")
            fmt = get_codec(config["dtype"])
            metadata = config.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise ValueError(f"metadata is a {type(metadata).__name__}")
        except (KeyError, ValueError, MetaEmbedError) as error:
            raise IndexCorruptError(
                f"index catalog {str(self.catalog.path)!r} is damaged: impossible configuration ({error}); "
                "rebuild the index with 'metaembed index build'"
            ) from None
        self._codebook_damage = []
        entry = config.get(STATE_KEY)
        if not fmt.trained or entry is None:
            self._state_entry = None
        elif entry == self._state_entry and self.fmt.name == fmt.name:
            fmt = self.fmt  # already read: the state never changes once committed
        else:
            try:
                fmt = read_state(self.folder, entry, fmt)
                self._state_entry = entry
            except IndexCorruptError as error:
                if not self._tolerate:
                    raise
                # check/repair still read the segments' raw bytes; without the codebook nothing decodes
                self._codebook_damage = [Damage("config", str(self.folder), str(error))]
        self.dim, self.num_vectors, self.fmt, self.scale_groups = dim, num_vectors, fmt, groups
        pending = self.metadata != self._committed_metadata  # changed in place, not yet committed: keep
        self._committed_metadata = dict(metadata)
        if not pending:
            self.metadata.clear()
            self.metadata.update(metadata)

    def _open(self, name: str, rows: int, checks: str | None) -> Segment:
        return open_segment(self.folder, name, rows, self.num_vectors, self.dim, self.fmt, self.scale_groups, checks)

    def _load(self) -> None:
        """Install the newest committed snapshot (segments already open are reused: they never change)."""
        with self.state_lock, _collector_paused():
            for _ in range(_LOAD_ATTEMPTS):
                snapshot = self.catalog.snapshot(self._tolerate)
                try:
                    self._install(snapshot)
                    return
                except _NewerSnapshot:
                    continue
            raise IndexStateError(
                f"index {str(self.folder)!r} changed {_LOAD_ATTEMPTS} times while being opened; retry"
            )

    def _install(self, snapshot: Snapshot) -> None:
        self._configure(snapshot.config)
        damage = list(snapshot.damage) + self._codebook_damage
        rows_of = dict(snapshot.placed)
        reuse = {view.segment.name: view.segment for view in self.views}
        views = []
        for name, rows, checks in snapshot.segments:
            try:
                segment = reuse.get(name) or self._open(name, rows, checks)
            except FileNotFoundError as error:
                if self._generation_now() != snapshot.generation:
                    raise _NewerSnapshot from None
                problem: IndexCorruptError = IndexCorruptError(
                    f"index {str(self.folder)!r} is missing the vectors of segment {name}: {error}"
                )
            except (IndexCorruptError, OSError, ValueError) as error:
                problem = error if isinstance(error, IndexCorruptError) else IndexCorruptError(
                    f"index {str(self.folder)!r} cannot read segment {name}: {error}")
            else:
                ids = np.full(rows, None, dtype=object)
                ids_of, places = rows_of.get(name, ((), _NO_ROWS))
                ids[places] = np.asarray(ids_of, dtype=object)
                views.append(SegmentView(segment, ids, torch.from_numpy(ids != None)))  # noqa: E711
                continue
            if not self._tolerate:
                raise problem
            lost = tuple(rows_of.pop(name, ((), _NO_ROWS))[0])
            damage.append(Damage("segment", str(segment_files(self.folder, name)[0]), str(problem), name, lost))
        self.views = tuple(views)
        self.where = {item_id: (name, row) for name, (ids_of, places) in rows_of.items()
                      for item_id, row in zip(ids_of, places.tolist())}
        self.damage = damage
        self.generation = snapshot.generation
        self._committed_names = {name for name, _, _ in snapshot.segments}

    def _generation_now(self) -> int:
        """The catalog's newest generation (the connection is shared with searches: serialised)."""
        with self.state_lock:
            return self.catalog.generation()

    def refresh(self) -> bool:
        """Catch up with commits made since this snapshot (by any process); ``True`` if there were any.

        Never waits: while this process is writing (and so catching up by itself) it returns ``False``.
        """
        if self._generation_now() == self.generation or not self.write_lock.acquire(blocking=False):
            return False
        try:
            self._load()
        finally:
            self.write_lock.release()
        return True

    # ----------------------------------------------------------------- committing
    @contextmanager
    def _writing(self, action: str) -> Iterator[None]:
        """Hold the writer lock for one commit, on the newest committed state; disk full -> StorageFullError."""
        with self.write_lock, self.lock.held(), storage_errors(self.folder, action):
            if self._generation_now() != self.generation:
                self._load()  # another process committed since: work on its state
            if self.catalog.legacy:
                self._upgrade()
            if not self._housekept:
                self._remove_orphans()
            yield

    def _upgrade(self) -> None:
        """Give an index written before checksums (format 1/2) its checksums: read (and check) every file once."""
        checks = {}
        for view in self.views:
            segment = view.segment
            segment.verify_all()  # no NaN/inf: the checksums are taken of sound data
            hashers = [ChunkHasher(self.num_vectors, view.rows, segment.chunk_rows)]
            hashers[0].update(0, segment.codes)
            if segment.scales is not None:
                hashers.append(ChunkHasher(self.num_vectors, view.rows, segment.chunk_rows))
                hashers[1].update(0, segment.scales)
            checks[segment.name] = encode_checks(segment.chunk_rows, hashers[0].values,
                                                 hashers[1].values if len(hashers) > 1 else None)
        with self.state_lock:
            self.catalog.upgrade(checks)
        self.views = ()  # reopen every segment with its checksums
        self._load()

    def _metadata_update(self) -> dict[str, Any] | None:
        """In-place :attr:`metadata` changes, committed with the write that follows them."""
        if self.metadata == self._committed_metadata:
            return None
        json_dict(self.metadata, "metadata")
        return {"metadata": dict(self.metadata)}

    def _committed(self, config: dict[str, Any] | None) -> None:
        self.generation += 1  # we hold the lock and were caught up: ours is the next commit
        if config and "metadata" in config:
            self._committed_metadata = dict(config["metadata"])

    def _segment_view(self, name: str, ids: list[str], checks: str) -> SegmentView:
        return SegmentView(self._open(name, len(ids), checks), np.array(ids, dtype=object),
                           torch.ones(len(ids), dtype=torch.bool))

    def _drop_files(self, names: set[str]) -> None:
        for name in names:
            for path in segment_files(self.folder, name):
                path.unlink(missing_ok=True)

    def write(
        self, ids: list[str], values: torch.Tensor, payloads: list[str | None], replace: bool, drop: Sequence[str] = ()
    ) -> None:
        """Store ``values`` ``(N, R, D)`` under ``ids`` as one new segment; ``replace`` allows existing ids (upsert).

        ``drop``: further ids (not among ``ids``) removed in the same commit.
        """
        with self._writing("add items"):
            existing = [i for i in ids if i in self.where]
            if existing and not replace:
                raise IndexStateError(f"ids already in the index: {existing[:5]} (use upsert to replace them)")
            unknown = [i for i in drop if i not in self.where]
            if unknown:
                raise IndexStateError(f"ids not in the index: {unknown[:5]}" + (" ..." if len(unknown) > 5 else ""))
            existing += list(drop)
            config = self._metadata_update()
            fmt, state = self._trained_codec(values)
            if state is not None:
                config = {**(config or {}), STATE_KEY: state}
            name = ""
            try:
                blocks = encoded_blocks(values, self.num_vectors, fmt, check_finite)
                name, checks = write_segment(self.folder, len(ids), self.num_vectors, self.dim, fmt, blocks, self.scale_groups)
                with self.state_lock:
                    self.catalog.commit_add(name, len(ids), checks, ids, payloads, existing, config)
            except BaseException:
                self._drop_files({name} if name else set())
                if state is not None:
                    (self.folder / state["file"]).unlink(missing_ok=True)
                raise
            with self.state_lock:
                if state is not None:
                    self.fmt, self._state_entry = fmt, state
                self._committed(config)
                views = self._tombstone(self.views, existing)
                self.views = views + (self._segment_view(name, ids, checks),)
                self.where.update((item_id, (name, row)) for row, item_id in enumerate(ids))
                self._committed_names.add(name)
            self._tidy(compact_dirty=bool(existing))

    def _trained_codec(self, values: torch.Tensor) -> tuple[Any, dict[str, Any] | None]:
        """The codec to encode ``values`` with, and the state file entry to commit if it was trained now.

        A trained codec learns from the first vectors added (``values`` ``(N, R, D)``, its first
        ``num_vectors`` per item); its state file is written before the commit that names it.
        """
        if not self.fmt.trained or self.fmt.fitted:
            return self.fmt, None
        check_finite(values, 0)
        fitted = self.fmt.fit(values[:, : self.num_vectors])
        return fitted, write_state(self.folder, fitted)

    def delete(self, ids: list[str]) -> None:
        """Commit the removal of ``ids``; :class:`IndexStateError` naming any that are not present."""
        with self._writing("delete items"):
            unknown = [i for i in ids if i not in self.where]
            if unknown:
                raise IndexStateError(f"ids not in the index: {unknown[:5]}" + (" ..." if len(unknown) > 5 else ""))
            config = self._metadata_update()
            with self.state_lock:
                self.catalog.commit_delete(ids, config)
                self._committed(config)
                self.views = self._tombstone(self.views, ids)
            self._tidy(compact_dirty=True)

    def _tombstone(self, views: tuple[SegmentView, ...], ids: Sequence[str]) -> tuple[SegmentView, ...]:
        """New views with ``ids`` dead (copy-on-write: running searches keep their snapshot)."""
        if not ids:
            return views
        rows_by_segment = defaultdict(list)
        for item_id in ids:
            name, row = self.where.pop(item_id)
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

    def set_metadata(self, value: dict[str, Any]) -> None:
        """Replace :attr:`metadata` and commit it on its own."""
        with self._writing("store metadata"):
            config = {"metadata": dict(value)}
            with self.state_lock:
                self.catalog.commit_config(config)
                self._committed(config)
                self.metadata.clear()
                self.metadata.update(value)

    def persist_metadata(self) -> None:
        """Commit in-place changes to :attr:`metadata`, if any."""
        if self.metadata == self._committed_metadata:
            return
        with self._writing("store metadata"):
            config = self._metadata_update()
            if config:
                with self.state_lock:
                    self.catalog.commit_config(config)
                    self._committed(config)

    # ----------------------------------------------------------------- merging and housekeeping
    def _merge(self, chosen: list[SegmentView]) -> None:
        """Rewrite ``chosen`` segments' live rows as one segment; commit; drop the old files (writer lock held)."""
        parts = [(view.segment, np.flatnonzero(view.alive.numpy())) for view in chosen]
        moved = [item_id for view, (_, rows) in zip(chosen, parts) for item_id in view.ids[rows]]
        name, checks = "", ""
        if moved:
            name, checks = write_segment(
                self.folder, len(moved), self.num_vectors, self.dim, self.fmt, merged_blocks(parts), self.scale_groups
            )
        dropped = {view.segment.name for view in chosen}
        try:
            with self.state_lock:
                self.catalog.commit_merge(name, len(moved), checks, moved, sorted(dropped))
        except BaseException:
            if name:
                self._drop_files({name})
            raise
        with self.state_lock:
            self._committed(None)
            remaining = [v for v in self.views if v.segment.name not in dropped]
            if name:
                first = min(i for i, v in enumerate(self.views) if v.segment.name in dropped)
                remaining.insert(min(first, len(remaining)), self._segment_view(name, moved, checks))
                self.where.update((item_id, (name, row)) for row, item_id in enumerate(moved))
                self._committed_names.add(name)
            self.views = tuple(remaining)
            self._committed_names -= dropped
        # Readers that mapped the old files keep them until they finish; a reader still
        # opening the previous snapshot finds a file gone and reads this one instead.
        self._drop_files(dropped)

    def _merge_tiers(self) -> None:
        while True:
            by_tier = defaultdict(list)
            for view in self.views:
                by_tier[_tier(view.rows)].append(view)
            full = [views for _, views in sorted(by_tier.items()) if len(views) >= _MERGE_FANOUT]
            if not full:
                return
            self._merge(full[0])

    def _tidy(self, compact_dirty: bool) -> None:
        """After a commit: merge full tiers and rewrite mostly-deleted segments.

        The commit before it is already durable and acknowledged, so a failure here
        (a full disk, a damaged old segment) is logged and left for a later commit
        or :meth:`compact`, never reported as the failure of that write.
        """
        try:
            if compact_dirty:
                wasteful = [v for v in self.views if (~v.alive).sum().item() > _COMPACT_DEAD_FRACTION * v.rows]
                if wasteful:
                    self._merge(wasteful)
            self._merge_tiers()
        except (MetaEmbedError, OSError, sqlite3.Error) as error:
            _log.warning("index %s: merging segments after a commit failed (%s); the commit stands", self.folder, error)

    def _remove_orphans(self) -> None:
        """Delete files no commit references: a killed writer's partial or uncommitted files (writer lock held)."""
        for path in self.folder.iterdir():
            stem = path.name.split(".")[0]
            partial = path.suffix in (TMP_SUFFIX, SCALE_TMP_SUFFIX)
            if stem.startswith("seg-") and (partial or stem not in self._committed_names):
                path.unlink(missing_ok=True)
        committed_state = None if self._state_entry is None else self._state_entry["file"]
        for path in state_files(self.folder):
            if path.name != committed_state:
                path.unlink(missing_ok=True)
        self._housekept = True

    def _housekeep_on_open(self) -> None:
        """Remove orphans now if no writer is busy (never waits; skipped on a read-only folder)."""
        remove_stale_staging(self.folder)
        if self._tolerate or not self.lock.try_hold():
            return
        try:
            if self._generation_now() != self.generation:
                self._load()
            self._remove_orphans()
        except OSError:
            pass
        finally:
            self.lock.release()

    def compact(self) -> None:
        """Rewrite segments with deleted rows, merge tiers, and delete files no commit references."""
        with self._writing("compact the index"):
            dirty = [view for view in self.views if not view.all_alive]
            if dirty:
                self._merge(dirty)
            self._merge_tiers()
            self._remove_orphans()

    def copy_to(self, target: Path) -> None:
        """Write a complete copy into a staging folder beside ``target``, then rename it into place."""
        with self.write_lock, storage_errors(target.parent, "save a copy of the index"):
            staging = new_staging_folder(target)
            try:
                with self.state_lock:
                    self.catalog.backup_to(staging / CATALOG_NAME)
                    names = [view.segment.name for view in self.views]
                    state = self._state_entry
                for name in names:
                    for source in segment_files(self.folder, name):
                        if source.exists():
                            shutil.copy2(source, staging / source.name)
                if state is not None:
                    shutil.copy2(self.folder / state["file"], staging / state["file"])
                publish_folder(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise

    # ----------------------------------------------------------------- checking and repair
    def find_damage(self) -> list[Damage]:
        """Everything damaged, reading every byte: catalog pages and rows, every chunk of every segment."""
        found = list(self.damage)
        if self._state_entry is not None:  # read at opening; read again: every byte
            try:
                read_state(self.folder, self._state_entry, get_codec(self.fmt.name))
            except IndexCorruptError as error:
                found.append(Damage("config", str(self.folder / self._state_entry["file"]), str(error)))
        with self.state_lock:
            found += [Damage("catalog", str(self.catalog.path), p) for p in self.catalog.integrity_problems()]
            found += self.catalog.payload_problems()
        for view in self.views:
            try:
                view.segment.verify_all()
            except IndexCorruptError as error:
                lost = tuple(i for i in view.ids if i is not None)
                found.append(Damage("segment", str(view.segment.paths[0]), str(error), view.segment.name, lost))
        return found

    def repair(self, damage: list[Damage]) -> list[str]:
        """Drop the damaged segments and item rows in ``damage`` in one commit; return the ids lost."""
        if any(d.kind == "config" for d in damage):
            raise IndexCorruptError(f"index {str(self.folder)!r} has a damaged configuration: rebuild it")
        segments = sorted({d.segment for d in damage if d.kind == "segment" and d.segment})
        ids = sorted({i for d in damage if d.kind == "item" for i in d.ids})
        lost = sorted({i for d in damage if d.kind in ("segment", "item") for i in d.ids})
        with self.write_lock, self.lock.held(), storage_errors(self.folder, "repair the index"):
            with self.state_lock:
                self.catalog.commit_drop(segments, ids)
            self._tolerate = False
            self.views = ()
            self._load()
            self._remove_orphans()  # the dropped segments' files
        with self.state_lock:
            problems = self.catalog.integrity_problems()
        if problems:
            raise IndexCorruptError(
                f"index catalog {str(self.catalog.path)!r} is damaged beyond its rows ({problems[0]}): "
                "rebuild the index with 'metaembed index build'"
            )
        return lost

    # ----------------------------------------------------------------- reads
    def filtered_views(self, payload_filter: PayloadFilter) -> tuple[SegmentView, ...]:
        """The current snapshot with only the rows whose payload matches ``payload_filter`` alive."""
        condition, params = payload_filter.sql()
        with self.state_lock:
            views, where = self.views, self.where
            ids = self.catalog.ids_where(condition, params)
            places = [where[i] for i in ids if i in where]  # the catalog may hold commits not loaded yet
        return restrict(views, places)

    def payloads(self, ids: Sequence[str]) -> dict[str, Any]:
        with self.state_lock:
            return self.catalog.payloads(ids)

    def vectors(self, ids: list[str]) -> torch.Tensor:
        """Decoded fp32 ``(N, num_vectors, D)`` vectors of ``ids``."""
        with self.state_lock:
            unknown = [i for i in ids if i not in self.where]
            if unknown:
                raise IndexStateError(f"ids not in the index: {unknown[:5]}")
            places = [self.where[i] for i in ids]
            segments = {view.segment.name: view.segment for view in self.views}
        out = torch.empty(len(ids), self.num_vectors, self.dim)
        for position, (name, row) in enumerate(places):
            codes, scales = segments[name].gather(np.array([row]), self.num_vectors)  # verified on first read
            out[position] = self.fmt.decode_prefix(codes[:, 0], None if scales is None else scales[:, 0], self.num_vectors)
        return out

    def export(self, r_c: int, batch: int) -> Iterator[tuple[list[str], torch.Tensor]]:
        """Live candidates in storage order: ``(ids, fp32 (n, r_c, D))`` batches, read sequentially."""
        for view in self.views:
            segment = view.segment
            for start in range(0, view.rows, batch):
                stop = min(view.rows, start + batch)
                alive = view.alive[start:stop].numpy()
                if not alive.any():
                    continue
                segment.check(r_c, start, stop)
                slots = self.fmt.slots(r_c)
                scales = None if segment.scales is None else segment.scales[:slots, start:stop]
                values = self.fmt.decode_prefix(segment.codes[:slots, start:stop], scales, r_c).transpose(0, 1)
                yield list(view.ids[start:stop][alive]), values[torch.from_numpy(alive)].contiguous()

    def close(self) -> None:
        with self.write_lock, self.state_lock:
            self.views = ()
            self.catalog.close()


__all__ = ["SegmentStore"]
