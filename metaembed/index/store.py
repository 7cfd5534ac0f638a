"""The durable state of an index: segment files + catalog, and the in-memory snapshot searches read.

:class:`SegmentStore` owns one index folder. It turns validated writes into
crash-safe commits (vector file first, fsynced; then one catalog transaction)
and keeps an immutable snapshot — a tuple of :class:`SegmentView` — that it
replaces copy-on-write after every commit, so searches never block on writers.

Merging: segments are merged in tiers of similar size (powers of
``_MERGE_FANOUT`` rows): once a tier holds ``_MERGE_FANOUT`` segments they
become one. Many small adds (an HTTP service adding one document at a time)
thus cost ``O(log N)`` rewrites per row and searches never face thousands of
tiny segments. :meth:`SegmentStore.compact` also rewrites segments with
deleted rows.

Concurrency: one writer at a time (``write_lock``) and any number of readers
in the same process. Several processes writing one folder are not supported.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from metaembed.errors import IndexStateError
from metaembed.index.catalog import CATALOG_NAME, Catalog
from metaembed.index.filters import PayloadFilter, restrict
from metaembed.index.inputs import check_finite, json_dict
from metaembed.index.codecs import get_codec
from metaembed.index.search import SegmentView
from metaembed.index.segments import encoded_blocks, merged_blocks, open_segment, segment_files, write_segment

_MERGE_FANOUT = 8


def _tier(rows: int) -> int:
    return int(math.log(max(rows, 1), _MERGE_FANOUT))


class SegmentStore:
    """One index folder: its configuration, committed segments, id map and the current snapshot."""

    def __init__(self, folder: Path, catalog: Catalog) -> None:
        self.folder = folder
        self.catalog = catalog
        config = catalog.config()
        self.dim = int(config["dim"])
        self.num_vectors = int(config["num_vectors"])
        self.fmt = get_codec(config["dtype"])
        # int8 scales per vector; indexes written before grouped scales (format 1) have one.
        self.scale_groups = int(config.get("scale_groups", 1))
        self.metadata: dict[str, Any] = dict(config.get("metadata") or {})
        self.write_lock = threading.RLock()  # one writer at a time
        self.state_lock = threading.RLock()  # the catalog connection and snapshot swaps
        self.views: tuple[SegmentView, ...] = ()
        self.where: dict[str, tuple[str, int]] = {}  # id -> (segment name, row)
        self._version = catalog.data_version()  # read before loading: a commit during the load is seen later
        self._load()

    def _open(self, name: str, rows: int):
        return open_segment(self.folder, name, rows, self.num_vectors, self.dim, self.fmt, self.scale_groups)

    def _load(self) -> None:
        with self.state_lock:
            rows_of: dict[str, list[tuple[int, str]]] = defaultdict(list)
            for item_id, segment, row in self.catalog.items():
                rows_of[segment].append((row, item_id))
            views = []
            for name, rows in self.catalog.segments():
                try:
                    segment = self._open(name, rows)
                except (OSError, ValueError) as error:
                    raise IndexStateError(
                        f"index {str(self.folder)!r} is missing the vectors of segment {name}: {error}"
                    ) from None
                ids = np.full(rows, None, dtype=object)
                for row, item_id in rows_of[name]:
                    ids[row] = item_id
                views.append(SegmentView(segment, ids, torch.from_numpy(ids != None)))  # noqa: E711
            self.views = tuple(views)
            self.where = {item_id: (name, row) for name, pairs in rows_of.items() for row, item_id in pairs}

    def refresh(self) -> bool:
        """Reload the committed state if another process committed since it was loaded; whether it did.

        Never waits for this process's writer (they keep the snapshot current themselves): with a write
        in flight it returns ``False`` and the next call reloads.
        """
        if not self.write_lock.acquire(blocking=False):
            return False
        try:
            version = self.catalog.data_version()
            if version == self._version:
                return False
            for attempt in range(3):
                try:
                    self._load()
                    break
                except IndexStateError:
                    # a segment named by the state just read was merged away meanwhile: read again
                    newer = self.catalog.data_version()
                    if attempt == 2 or newer == version:
                        raise
                    version = newer
            self.metadata = dict(self.catalog.config().get("metadata") or {})
            self._version = version
            return True
        finally:
            self.write_lock.release()

    # ----------------------------------------------------------------- writes
    def write(self, ids: list[str], values: torch.Tensor, payloads: list[str | None], replace: bool) -> None:
        """Store ``values`` ``(N, R, D)`` under ``ids`` as one new segment; ``replace`` allows existing ids (upsert)."""
        with self.write_lock:
            self.refresh()  # ids another process committed count as existing
            existing = [i for i in ids if i in self.where]
            if existing and not replace:
                raise IndexStateError(f"ids already in the index: {existing[:5]} (use upsert to replace them)")
            blocks = encoded_blocks(values, self.num_vectors, self.fmt, check_finite)
            name = write_segment(self.folder, len(ids), self.num_vectors, self.dim, self.fmt, blocks, self.scale_groups)
            try:
                with self.state_lock:
                    self.catalog.commit_add(name, len(ids), ids, payloads, existing)
                    self.persist_metadata()
            except BaseException:
                for path in segment_files(self.folder, name):
                    path.unlink(missing_ok=True)
                raise
            with self.state_lock:
                views = self._tombstone(self.views, existing)
                added = SegmentView(self._open(name, len(ids)), np.array(ids, dtype=object),
                                    torch.ones(len(ids), dtype=torch.bool))
                self.views = views + (added,)
                self.where.update((item_id, (name, row)) for row, item_id in enumerate(ids))
            self._merge_tiers()

    def delete(self, ids: list[str]) -> None:
        """Commit the removal of ``ids``; :class:`IndexStateError` naming any that are not present."""
        with self.write_lock:
            self.refresh()
            unknown = [i for i in ids if i not in self.where]
            if unknown:
                raise IndexStateError(f"ids not in the index: {unknown[:5]}" + (" ..." if len(unknown) > 5 else ""))
            with self.state_lock:
                self.catalog.commit_delete(ids)
                self.persist_metadata()
                self.views = self._tombstone(self.views, ids)

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
        with self.write_lock, self.state_lock:
            self.metadata = dict(value)
            self.catalog.set_config("metadata", self.metadata)

    def persist_metadata(self) -> None:
        """Commit in-place changes to :attr:`metadata`, if any."""
        with self.state_lock:
            if self.catalog.config().get("metadata") != self.metadata:
                json_dict(self.metadata, "metadata")
                self.catalog.set_config("metadata", self.metadata)

    # ----------------------------------------------------------------- merging
    def _merge(self, chosen: list[SegmentView]) -> None:
        """Rewrite ``chosen`` segments' live rows as one segment; commit; drop the old files."""
        parts = [(view.segment, np.flatnonzero(view.alive.numpy())) for view in chosen]
        moved = [item_id for view, (_, rows) in zip(chosen, parts) for item_id in view.ids[rows]]
        name = None
        if moved:
            name = write_segment(
                self.folder, len(moved), self.num_vectors, self.dim, self.fmt, merged_blocks(parts), self.scale_groups
            )
        dropped = {view.segment.name for view in chosen}
        with self.state_lock:
            self.catalog.commit_merge(name or "", len(moved), moved, sorted(dropped))
            remaining = [v for v in self.views if v.segment.name not in dropped]
            if name is not None:
                merged = SegmentView(self._open(name, len(moved)), np.array(moved, dtype=object),
                                     torch.ones(len(moved), dtype=torch.bool))
                first = min(i for i, v in enumerate(self.views) if v.segment.name in dropped)
                remaining.insert(min(first, len(remaining)), merged)
                self.where.update((item_id, (name, row)) for row, item_id in enumerate(moved))
            self.views = tuple(remaining)
        # Running searches keep their memory maps; unlinking frees the space once they finish.
        for old in dropped:
            for path in segment_files(self.folder, old):
                path.unlink(missing_ok=True)

    def _merge_tiers(self) -> None:
        while True:
            by_tier = defaultdict(list)
            for view in self.views:
                by_tier[_tier(view.rows)].append(view)
            full = [views for _, views in sorted(by_tier.items()) if len(views) >= _MERGE_FANOUT]
            if not full:
                return
            self._merge(full[0])

    def compact(self) -> None:
        """Rewrite segments with deleted rows, merge tiers, and delete files no commit references."""
        with self.write_lock:
            self.refresh()
            dirty = [view for view in self.views if not view.all_alive]
            if dirty:
                self._merge(dirty)
            self._merge_tiers()
            known = {view.segment.name for view in self.views}
            for path in self.folder.iterdir():
                stem = path.name.split(".")[0]
                if stem.startswith("seg-") and stem not in known:  # left by a writer killed before its commit
                    path.unlink(missing_ok=True)

    def copy_to(self, target: Path) -> None:
        """Write a complete copy into a staging folder beside ``target``, then rename it into place."""
        with self.write_lock:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
            try:
                with self.state_lock:
                    self.catalog.backup_to(staging / CATALOG_NAME)
                    names = [view.segment.name for view in self.views]
                for name in names:
                    for source in segment_files(self.folder, name):
                        if source.exists():
                            shutil.copy2(source, staging / source.name)
                if target.exists():
                    target.rmdir()  # an empty folder (checked by the caller)
                staging.rename(target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise

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
            codes, scales = segments[name].gather(np.array([row]), self.num_vectors)
            out[position] = self.fmt.decode(codes[:, 0], None if scales is None else scales[:, 0])
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
                scales = None if segment.scales is None else segment.scales[:r_c, start:stop]
                values = self.fmt.decode(segment.codes[:r_c, start:stop], scales).transpose(0, 1)
                yield list(view.ids[start:stop][alive]), values[torch.from_numpy(alive)].contiguous()

    def close(self) -> None:
        with self.write_lock, self.state_lock:
            self.views = ()
            self.catalog.close()


__all__ = ["SegmentStore"]
