"""The SQLite catalog of an index: its configuration, committed segments, ids and payloads.

The catalog is the index's single commit point. Every change (add, upsert,
delete, merge of segments, metadata) is one SQLite transaction, written with
``synchronous=FULL``; vector files are written and fsynced *before* the
transaction that references them. A process killed at any moment therefore
leaves the catalog at its last commit, pointing only at complete files.

Tables:
  ``config(key, value)``  format marker, dim, num_vectors, dtype, metadata (JSON)
  ``segments(name, rows, seq)``  committed vector files, in insertion order
  ``items(id, segment, row, payload)``  one row per live candidate; a segment
  row no item points at is a tombstone, reclaimed when segments are merged.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from metaembed.errors import IndexStateError

CATALOG_NAME = "catalog.sqlite"
FORMAT_NAME = "metaembed-multivector-index"
# 2: int8 scales per group of values (config key scale_groups); 1: one scale per vector.
FORMAT_VERSION = 2

_SCHEMA = """
CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE segments (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE items (
    id TEXT PRIMARY KEY, segment TEXT NOT NULL REFERENCES segments(name), row INTEGER NOT NULL, payload TEXT
);
CREATE INDEX items_by_segment ON items(segment, row);
"""


class Catalog:
    """One SQLite connection to an index's catalog. Not thread-safe by itself: the index serialises calls."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @classmethod
    def create(cls, folder: Path, config: dict[str, Any]) -> "Catalog":
        """Create the catalog of a new index in ``folder`` with ``config`` (dim, num_vectors, dtype, metadata)."""
        path = folder / CATALOG_NAME
        db = cls._connect(path)
        catalog = cls(db, path)
        with catalog.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            rows = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
            rows.update({key: json.dumps(value) for key, value in config.items()})
            db.executemany("INSERT INTO config VALUES (?, ?)", rows.items())
        return catalog

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
            found = dict(db.execute("SELECT key, value FROM config").fetchall())
        except sqlite3.DatabaseError as error:
            raise IndexStateError(f"{str(folder)!r} is not an index: {CATALOG_NAME} is unreadable ({error})") from None
        if found.get("format") != FORMAT_NAME:
            db.close()
            raise IndexStateError(f"{str(folder)!r} is not a metaembed index (format {found.get('format')!r})")
        if int(found.get("format_version", 0)) > FORMAT_VERSION:
            db.close()
            raise IndexStateError(
                f"index {str(folder)!r} has format version {found['format_version']}; "
                f"this metaembed reads up to {FORMAT_VERSION}"
            )
        return cls(db, path)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable write: everything inside commits together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def config(self) -> dict[str, Any]:
        """dim, num_vectors, dtype and metadata as stored."""
        rows = self._db.execute("SELECT key, value FROM config WHERE key NOT LIKE 'format%'").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def segments(self) -> list[tuple[str, int]]:
        """Committed segments ``(name, rows)`` in insertion order."""
        return self._db.execute("SELECT name, rows FROM segments ORDER BY seq").fetchall()

    def items(self) -> list[tuple[str, str, int]]:
        """Every live item as ``(id, segment, row)``."""
        return self._db.execute("SELECT id, segment, row FROM items").fetchall()

    def payloads(self, ids: Sequence[str]) -> dict[str, Any]:
        """The payloads of ``ids`` that exist (``None`` where none was stored)."""
        found: dict[str, Any] = {}
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for item_id, payload in self._db.execute(f"SELECT id, payload FROM items WHERE id IN ({marks})", chunk):
                found[item_id] = None if payload is None else json.loads(payload)
        return found

    def ids_where(self, condition: str, params: Sequence[Any]) -> list[str]:
        """Ids of the items whose row satisfies the SQL ``condition`` (over ``items``; see ``index.filters``)."""
        return [row[0] for row in self._db.execute(f"SELECT id FROM items WHERE {condition}", list(params))]

    def data_version(self) -> int:
        """SQLite's ``data_version``: changes when *another* connection (process) commits; own commits leave it."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _next_seq(self, db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM segments").fetchone()[0])

    def _delete_ids(self, db: sqlite3.Connection, ids: Sequence[str]) -> None:
        db.executemany("DELETE FROM items WHERE id = ?", ((i,) for i in ids))

    def commit_add(
        self,
        segment: str,
        rows: int,
        ids: Sequence[str],
        payloads: Sequence[str | None],
        replaced: Sequence[str],
    ) -> None:
        """Register a new segment and its items, dropping ``replaced`` ids (upsert) in the same commit."""
        with self.transaction() as db:
            self._delete_ids(db, replaced)
            db.execute("INSERT INTO segments VALUES (?, ?, ?)", (segment, rows, self._next_seq(db)))
            db.executemany(
                "INSERT INTO items VALUES (?, ?, ?, ?)",
                ((item_id, segment, row, payloads[row]) for row, item_id in enumerate(ids)),
            )

    def commit_delete(self, ids: Sequence[str]) -> None:
        """Remove ``ids`` (their segment rows become tombstones)."""
        with self.transaction() as db:
            self._delete_ids(db, ids)

    def commit_merge(self, segment: str, rows: int, moved: Sequence[str], dropped: Sequence[str]) -> None:
        """Replace segments ``dropped`` by ``segment``, whose row ``i`` holds item ``moved[i]``."""
        with self.transaction() as db:
            # The merged segment takes the place of the oldest one it replaces, so
            # iteration order (and ``ids``) stays close to insertion order.
            marks = ",".join("?" * len(dropped))
            oldest = db.execute(f"SELECT MIN(seq) FROM segments WHERE name IN ({marks})", list(dropped)).fetchone()[0]
            seq = self._next_seq(db) if oldest is None else int(oldest)
            db.executemany("DELETE FROM segments WHERE name = ?", ((name,) for name in dropped))
            if rows:
                db.execute("INSERT INTO segments VALUES (?, ?, ?)", (segment, rows, seq))
            db.executemany(
                "UPDATE items SET segment = ?, row = ? WHERE id = ?",
                ((segment, row, item_id) for row, item_id in enumerate(moved)),
            )

    def set_config(self, key: str, value: Any) -> None:
        """Store one JSON-able configuration value (used for ``metadata``)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO config VALUES (?, ?)", (key, json.dumps(value)))

    def backup_to(self, path: Path) -> None:
        """A consistent copy of the catalog at ``path`` (SQLite's online backup)."""
        target = sqlite3.connect(str(path))
        try:
            self._db.backup(target)
        finally:
            target.close()

    def close(self) -> None:
        self._db.close()


__all__ = ["Catalog", "CATALOG_NAME", "FORMAT_NAME", "FORMAT_VERSION"]
