"""The SQLite catalog of an index: its configuration, committed segments, ids and payloads.

The catalog is the index's single commit point. Every change (add, upsert,
delete, merge of segments, metadata) is one SQLite transaction, written with
``synchronous=FULL``; vector files are written and fsynced *before* the
transaction that references them. A process killed at any moment therefore
leaves the catalog at its last commit, pointing only at complete files. Every
commit also advances ``generation``, so a reader can tell cheaply whether its
snapshot is still the newest one.

Tables (format 3):
  ``config(key, value, crc)``  format marker, dim, num_vectors, dtype, scale_groups, metadata, generation (JSON)
  ``segments(name, rows, seq, checks, crc)``  committed vector files in insertion order, with their chunk checksums
  ``items(id, segment, row, payload, crc, payload_crc)``  one row per live candidate; a segment
  row no item points at is a tombstone, reclaimed when segments are merged.
Every ``crc`` is :func:`~metaembed.index.checksum.row_check` of its row's fields. Formats 1 and 2
(no checksums) open as they are and are upgraded to format 3 by their first write.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from metaembed.errors import IndexCorruptError, IndexStateError
from metaembed.index.checksum import item_rows_sound, payload_rows_sound, row_check

CATALOG_NAME = "catalog.sqlite"
FORMAT_NAME = "metaembed-multivector-index"
# 3: row checksums, segment chunk checksums, generation. 2: int8 scales per group of
# values (config key scale_groups). 1: one scale per vector.
FORMAT_VERSION = 3

_SCHEMA = """
CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL, crc INTEGER);
CREATE TABLE segments (
    name TEXT PRIMARY KEY, rows INTEGER NOT NULL, seq INTEGER NOT NULL, checks TEXT, crc INTEGER
);
CREATE TABLE items (
    id TEXT PRIMARY KEY, segment TEXT NOT NULL REFERENCES segments(name), row INTEGER NOT NULL, payload TEXT,
    crc INTEGER, payload_crc INTEGER
);
CREATE INDEX items_by_segment ON items(segment, row);
"""
_UPGRADE = (
    "ALTER TABLE config ADD COLUMN crc INTEGER",
    "ALTER TABLE segments ADD COLUMN checks TEXT",
    "ALTER TABLE segments ADD COLUMN crc INTEGER",
    "ALTER TABLE items ADD COLUMN crc INTEGER",
    "ALTER TABLE items ADD COLUMN payload_crc INTEGER",
)
_CORRUPT = (sqlite3.DatabaseError, UnicodeDecodeError, ValueError, KeyError, TypeError, OverflowError)


@dataclass(frozen=True)
class Damage:
    """One damaged part of an index found by a read: what it is, the file it is in, what it costs.

    ``kind`` is ``"config"`` (cannot be repaired: rebuild), ``"segment"`` (a vector file or its
    catalog row; repair drops the segment and its ``ids``), ``"item"`` (a catalog item row;
    repair drops the item) or ``"catalog"`` (SQLite's own structure).
    """

    kind: str
    file: str
    message: str
    segment: str | None = None
    ids: tuple[str, ...] = ()


@dataclass
class Snapshot:
    """One committed state of the catalog, read in a single transaction."""

    generation: int
    config: dict[str, Any]
    segments: list[tuple[str, int, str | None]]  # (name, rows, checks) in insertion order
    placed: dict[str, tuple[list[str], np.ndarray]]  # segment -> (its items' ids, their rows (n,) int64)
    damage: list[Damage] = field(default_factory=list)


def _by_segment(items: Iterable[tuple]) -> dict[str, tuple[list[str], np.ndarray]]:
    """``(id, segment, row, ...)`` rows grouped as ``segment -> (ids, rows)``; items come in runs of a segment."""
    grouped: dict[str, tuple[list[str], list[int]]] = {}
    for segment, run in groupby(items, key=itemgetter(1)):
        run_ids, _, run_rows, *_ = zip(*run)
        ids, rows = grouped.setdefault(segment, ([], []))
        ids.extend(run_ids)
        rows.extend(run_rows)
    return {segment: (ids, np.asarray(rows, dtype=np.int64)) for segment, (ids, rows) in grouped.items()}


def _decoded_payloads(rows: list[tuple[str, str | None, Any]], checked: bool) -> list[tuple[str, Any]]:
    """``(id, decoded payload)`` of ``(id, payload text, ...)`` rows.

    ``checked`` (their checksums hold, so each text is one JSON value as it was written): one
    parse for all of them. Otherwise (an old catalog without checksums) one parse each, so that
    a damaged text cannot shift its neighbours.
    """
    texts = [payload for _, payload, _ in rows if payload is not None]
    values = iter(json.loads(f"[{','.join(texts)}]") if checked else [json.loads(text) for text in texts])
    return [(item_id, None if payload is None else next(values)) for item_id, payload, _ in rows]


def _item_check(item_id: str, segment: str, row: int) -> int:
    return row_check(item_id, segment, row)


def _segment_check(name: str, rows: int, checks: str | None) -> int:
    return row_check(name, rows, checks)


class Catalog:
    """One SQLite connection to an index's catalog. Not thread-safe by itself: the index serialises calls."""

    def __init__(self, connection: sqlite3.Connection, path: Path, version: int) -> None:
        self._db = connection
        self.path = path
        self.version = version

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA cell_size_check=ON")  # notice damaged b-tree pages instead of reading through them
        return db

    @classmethod
    def create(cls, folder: Path, config: dict[str, Any]) -> None:
        """Write the catalog of a new, empty index into ``folder`` (a staging folder) and close it."""
        path = folder / CATALOG_NAME
        db = cls._connect(path)
        try:
            catalog = cls(db, path, FORMAT_VERSION)
            with catalog.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                rows = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "generation": "0"}
                rows.update({key: json.dumps(value) for key, value in config.items()})
                db.executemany("INSERT INTO config VALUES (?, ?, ?)", ((k, v, row_check(k, v)) for k, v in rows.items()))
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the folder is renamed into place: keep it one file
        finally:
            db.close()

    @classmethod
    def open(cls, folder: Path) -> "Catalog":
        """Open the catalog in ``folder``; :class:`IndexStateError` if ``folder`` holds no index."""
        path = folder / CATALOG_NAME
        if not folder.is_dir():
            raise IndexStateError(f"{str(folder)!r} is not an index: no such directory")
        if not path.is_file():
            raise IndexStateError(f"{str(folder)!r} is not an index: it has no {CATALOG_NAME}")
        try:
            db = cls._connect(path)
            found = dict(db.execute("SELECT key, value FROM config WHERE key LIKE 'format%'").fetchall())
        except _CORRUPT as error:
            raise IndexCorruptError(f"{str(folder)!r} is not an index: {CATALOG_NAME} is unreadable ({error})") from None
        if found.get("format") != FORMAT_NAME:
            db.close()
            raise IndexStateError(f"{str(folder)!r} is not a metaembed index (format {found.get('format')!r})")
        try:
            version = int(found.get("format_version", 0))
        except ValueError:
            db.close()
            raise IndexCorruptError(f"{str(path)!r}: format_version {found.get('format_version')!r} is damaged") from None
        if version > FORMAT_VERSION:
            db.close()
            raise IndexStateError(
                f"index {str(folder)!r} has format version {version}; this metaembed reads up to {FORMAT_VERSION}: "
                "upgrade metaembed, or rebuild the index with 'metaembed index build'"
            )
        return cls(db, path, version)

    @property
    def legacy(self) -> bool:
        """Written before checksums (formats 1 and 2): readable, upgraded by :meth:`upgrade`."""
        return self.version < 3

    def _corrupt(self, what: str, error: BaseException | None = None) -> IndexCorruptError:
        detail = f" ({type(error).__name__}: {error})" if error is not None else ""
        return IndexCorruptError(f"index catalog {str(self.path)!r} is damaged: {what}{detail}")

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Turn SQLite/decoding failures inside the block into :class:`IndexCorruptError` naming the catalog."""
        try:
            yield
        except IndexStateError:
            raise
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise IndexStateError(f"index catalog {str(self.path)!r} is busy ({error}); retry") from None
            raise self._corrupt(what, error) from None
        except _CORRUPT as error:
            raise self._corrupt(what, error) from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable write: everything inside commits together or not at all; advances the generation."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            if not self.legacy:
                generation = str(self._generation() + 1)
                self._db.execute(
                    "INSERT OR REPLACE INTO config VALUES ('generation', ?, ?)",
                    (generation, row_check("generation", generation)),
                )
            self._db.execute("COMMIT")  # a COMMIT that fails (disk full) leaves the transaction to roll back
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _generation(self) -> int:
        row = self._db.execute("SELECT value FROM config WHERE key = 'generation'").fetchone()
        return 0 if row is None else int(row[0])

    def generation(self) -> int:
        """The number of commits so far: a cheap way to see whether another process committed."""
        with self._reading("reading the generation"):
            return self._generation()

    # ----------------------------------------------------------------- reads
    def snapshot(self, tolerate: bool = False) -> Snapshot:
        """The last committed state, read in one transaction, every row checked against its checksum.

        Damage raises :class:`IndexCorruptError` naming the catalog, or with
        ``tolerate`` is listed in :attr:`Snapshot.damage` (damaged rows left out) so
        that ``check`` and ``repair`` can report and drop it. Damaged configuration
        is never tolerated: without it nothing else can be read.
        """
        damage: list[Damage] = []
        file = str(self.path)

        def found(kind: str, message: str, segment: str | None = None, ids: tuple[str, ...] = ()) -> None:
            if not tolerate:
                raise self._corrupt(message)
            damage.append(Damage(kind, file, message, segment, ids))

        with self._reading("reading the committed state"):
            self._db.execute("BEGIN")  # one read transaction: a concurrent commit cannot tear the snapshot
            try:
                config = self._read_config()
                generation = int(config.pop("generation", 0))
                segments, known = [], {}
                sql = ("SELECT name, rows, NULL, NULL FROM segments ORDER BY seq" if self.legacy
                       else "SELECT name, rows, checks, crc FROM segments ORDER BY seq")
                for name, rows, checks, check in self._db.execute(sql):
                    if not isinstance(name, str) or not isinstance(rows, int) or rows < 0 or (
                        not self.legacy and check != _segment_check(name, rows, checks)
                    ):
                        found("segment", f"segment row {name!r} (rows={rows!r}) fails its checksum",
                              name if isinstance(name, str) else None)
                        continue
                    segments.append((name, rows, checks))
                    known[name] = rows
                placed = None if damage else self._sound_items(known)
                if placed is not None:
                    return Snapshot(generation, config, segments, placed, damage)
                items, taken = [], set()
                lost: dict[str, list[str]] = {d.segment: [] for d in damage if d.segment is not None}
                sql = "SELECT id, segment, row, NULL FROM items" if self.legacy else "SELECT id, segment, row, crc FROM items"
                for item_id, segment, row, check in self._db.execute(sql):
                    if not (isinstance(item_id, str) and isinstance(segment, str) and isinstance(row, int)) or (
                        not self.legacy and check != _item_check(item_id, segment, row)
                    ):
                        found("item", f"item row {item_id!r} -> ({segment!r}, {row!r}) fails its checksum",
                              ids=(item_id,) if isinstance(item_id, str) else ())
                        continue
                    if segment in lost:  # goes with its damaged segment
                        lost[segment].append(item_id)
                        continue
                    if segment not in known or not 0 <= row < known[segment] or (segment, row) in taken:
                        found("item", f"item {item_id!r} points at row {row} of segment {segment!r}, "
                              "which does not exist or belongs to another item", ids=(item_id,))
                        continue
                    taken.add((segment, row))
                    items.append((item_id, segment, row))
            finally:
                self._db.execute("COMMIT")
        damage = [Damage(d.kind, d.file, d.message, d.segment, tuple(lost[d.segment])) if d.segment in lost else d
                  for d in damage]
        return Snapshot(generation, config, segments, _by_segment(items), damage)

    def _sound_items(self, known: dict[str, int]) -> dict[str, tuple[list[str], np.ndarray]] | None:
        """:attr:`Snapshot.placed` if every item row is sound, else ``None``.

        The common case of :meth:`snapshot`, checked in bulk: types and checksums in one
        pass without per-row calls, places and uniqueness with array operations per segment.
        Any doubt returns ``None`` and the row-by-row check that names the damage runs.
        """
        rows = self._db.execute("SELECT id, segment, row, NULL FROM items" if self.legacy
                                else "SELECT id, segment, row, crc FROM items").fetchall()
        if not item_rows_sound(rows, checked=not self.legacy):
            return None
        placed = _by_segment(rows)
        for segment, (_, places) in placed.items():
            size = known.get(segment, 0)
            if not size or places.min() < 0 or places.max() >= size or np.bincount(places).max() > 1:
                return None
        return placed

    def _read_config(self) -> dict[str, Any]:
        sql = "SELECT key, value, NULL FROM config" if self.legacy else "SELECT key, value, crc FROM config"
        config: dict[str, Any] = {}
        for key, value, check in self._db.execute(sql):
            if not self.legacy and check != row_check(key, value):
                raise IndexCorruptError(
                    f"index catalog {str(self.path)!r} is damaged: configuration value {key!r} fails its checksum; "
                    "the index cannot be read: rebuild it with 'metaembed index build'"
                )
            if not key.startswith("format"):
                config[key] = json.loads(value)
        for key in ("dim", "num_vectors", "dtype"):
            if key not in config:
                raise IndexCorruptError(f"index catalog {str(self.path)!r} is damaged: it has no {key!r}")
        return config

    def ids_where(self, condition: str, params: Sequence[Any]) -> list[str]:
        """Ids of the items whose row satisfies the SQL ``condition`` over ``items`` (see ``index.filters``)."""
        with self._reading("filtering payloads"):
            return [row[0] for row in self._db.execute(f"SELECT id FROM items WHERE {condition}", list(params))]

    def payloads(self, ids: Sequence[str]) -> dict[str, Any]:
        """The payloads of ``ids`` that exist (``None`` where none was stored), checked against their checksums."""
        found: dict[str, Any] = {}
        sql = "SELECT id, payload, NULL FROM items" if self.legacy else "SELECT id, payload, payload_crc FROM items"
        with self._reading("reading payloads"):
            for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"{sql} WHERE id IN ({marks})", chunk).fetchall()
                if not self.legacy and not payload_rows_sound(rows):
                    for item_id, payload, check in rows:
                        if check != row_check(item_id, payload):
                            raise self._corrupt(f"the payload of item {item_id!r} fails its checksum")
                found.update(_decoded_payloads(rows, checked=not self.legacy))
        return found

    def integrity_problems(self) -> list[str]:
        """SQLite's own full check of the catalog file (every page); empty when sound."""
        try:
            rows = self._db.execute("PRAGMA integrity_check").fetchall()
        except _CORRUPT as error:
            return [str(error)]
        return [] if rows == [("ok",)] else [str(row[0]) for row in rows]

    def payload_problems(self) -> list[Damage]:
        """Every item whose payload fails its checksum or is not JSON."""
        if self.legacy:
            return []
        out = []
        with self._reading("reading payloads"):
            for item_id, payload, check in self._db.execute("SELECT id, payload, payload_crc FROM items"):
                try:
                    ok = check == row_check(item_id, payload)
                    if ok and payload is not None:
                        json.loads(payload)
                except ValueError:
                    ok = False
                if not ok:
                    out.append(Damage("item", str(self.path), f"the payload of item {item_id!r} is damaged", ids=(item_id,)))
        return out

    # ----------------------------------------------------------------- writes
    def _next_seq(self, db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM segments").fetchone()[0])

    def _delete_ids(self, db: sqlite3.Connection, ids: Sequence[str]) -> None:
        db.executemany("DELETE FROM items WHERE id = ?", ((i,) for i in ids))

    def _set_config(self, db: sqlite3.Connection, updates: dict[str, Any] | None) -> None:
        for key, value in (updates or {}).items():
            text = json.dumps(value)
            db.execute("INSERT OR REPLACE INTO config VALUES (?, ?, ?)", (key, text, row_check(key, text)))

    def _insert_segment(self, db: sqlite3.Connection, name: str, rows: int, checks: str, seq: int) -> None:
        db.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?)", (name, rows, seq, checks, _segment_check(name, rows, checks)))

    def commit_add(
        self,
        segment: str,
        rows: int,
        checks: str,
        ids: Sequence[str],
        payloads: Sequence[str | None],
        replaced: Sequence[str],
        config: dict[str, Any] | None = None,
    ) -> None:
        """Register a new segment and its items, dropping ``replaced`` ids (upsert) and applying
        ``config`` updates (metadata changed in place) in the same commit."""
        with self.transaction() as db:
            self._delete_ids(db, replaced)
            self._insert_segment(db, segment, rows, checks, self._next_seq(db))
            db.executemany(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (item_id, segment, row, payloads[row], _item_check(item_id, segment, row),
                     row_check(item_id, payloads[row]))
                    for row, item_id in enumerate(ids)
                ),
            )
            self._set_config(db, config)

    def commit_delete(self, ids: Sequence[str], config: dict[str, Any] | None = None) -> None:
        """Remove ``ids`` (their segment rows become tombstones), with ``config`` updates."""
        with self.transaction() as db:
            self._delete_ids(db, ids)
            self._set_config(db, config)

    def commit_merge(self, segment: str, rows: int, checks: str, moved: Sequence[str], dropped: Sequence[str]) -> None:
        """Replace segments ``dropped`` by ``segment``, whose row ``i`` holds item ``moved[i]``."""
        with self.transaction() as db:
            # The merged segment takes the place of the oldest one it replaces, so
            # iteration order (and ``ids``) stays close to insertion order.
            marks = ",".join("?" * len(dropped))
            oldest = db.execute(f"SELECT MIN(seq) FROM segments WHERE name IN ({marks})", list(dropped)).fetchone()[0]
            seq = self._next_seq(db) if oldest is None else int(oldest)
            db.executemany("DELETE FROM segments WHERE name = ?", ((name,) for name in dropped))
            if rows:
                self._insert_segment(db, segment, rows, checks, seq)
            db.executemany(
                "UPDATE items SET segment = ?, row = ?, crc = ? WHERE id = ?",
                ((segment, row, _item_check(item_id, segment, row), item_id) for row, item_id in enumerate(moved)),
            )

    def commit_config(self, updates: dict[str, Any]) -> None:
        """Store JSON-able configuration values (``metadata``) in one commit."""
        with self.transaction() as db:
            self._set_config(db, updates)

    def commit_drop(self, segments: Sequence[str], ids: Sequence[str]) -> None:
        """Repair: forget damaged ``segments`` (with every item in them) and damaged item rows ``ids``."""
        with self.transaction() as db:
            db.executemany("DELETE FROM items WHERE segment = ?", ((name,) for name in segments))
            db.executemany("DELETE FROM segments WHERE name = ?", ((name,) for name in segments))
            self._delete_ids(db, ids)

    def upgrade(self, checks: dict[str, str]) -> None:
        """Rewrite a format 1/2 catalog as format 3: checksums for every row, ``checks`` for every segment."""
        if not self.legacy:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _UPGRADE:
                self._db.execute(statement)
            db = self._db
            db.execute("INSERT OR REPLACE INTO config VALUES ('format_version', ?, NULL)", (str(FORMAT_VERSION),))
            db.execute("INSERT OR REPLACE INTO config VALUES ('generation', '0', NULL)")
            for key, value in db.execute("SELECT key, value FROM config").fetchall():
                db.execute("UPDATE config SET crc = ? WHERE key = ?", (row_check(key, value), key))
            for name, rows in db.execute("SELECT name, rows FROM segments").fetchall():
                db.execute("UPDATE segments SET checks = ?, crc = ? WHERE name = ?",
                           (checks[name], _segment_check(name, rows, checks[name]), name))
            for item_id, segment, row, payload in db.execute("SELECT id, segment, row, payload FROM items").fetchall():
                db.execute("UPDATE items SET crc = ?, payload_crc = ? WHERE id = ?",
                           (_item_check(item_id, segment, row), row_check(item_id, payload), item_id))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self.version = FORMAT_VERSION

    def backup_to(self, path: Path) -> None:
        """A consistent copy of the catalog at ``path`` (SQLite's online backup)."""
        target = sqlite3.connect(str(path))
        try:
            self._db.backup(target)
        finally:
            target.close()

    def close(self) -> None:
        self._db.close()


__all__ = ["Catalog", "Damage", "Snapshot", "CATALOG_NAME", "FORMAT_NAME", "FORMAT_VERSION"]
