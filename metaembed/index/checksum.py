"""Checksums that let an index notice damage instead of returning wrong scores.

Two kinds, both CRC-32C (hardware-accelerated, several GB/s):

* **Chunk checksums of a segment file**: one per position slab ``j`` and chunk of
  :data:`CHUNK_ROWS` rows, computed from the bytes as they are written and kept
  in the catalog. A search verifies a chunk the first time it reads it (so the
  cost follows what is read, once per process) and
  :meth:`~metaembed.index.MultiVectorIndex.verify` reads every chunk.
* **Row checksums of the catalog**: every configuration value, every segment row
  (name, rows, chunk checksums) and every item's place (id, segment, row) and
  payload carry the CRC of their fields, checked when they are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

import crc32c
import numpy as np

#: Rows per checksummed chunk of a position slab.
CHUNK_ROWS = 4096


def crc(data: bytes | memoryview | np.ndarray, value: int = 0) -> int:
    """CRC-32C of ``data`` (any contiguous buffer), continuing from ``value``."""
    if isinstance(data, np.ndarray) and not data.flags.c_contiguous:
        data = np.ascontiguousarray(data)
    return crc32c.crc32c(data, value)


_SEPARATOR = "\x1f"  # between a row's fields in the checksummed text


def row_check(*fields: object) -> int:
    """The checksum of one catalog row: CRC-32C of its fields, unit-separated."""
    return crc(_SEPARATOR.join("" if f is None else str(f) for f in fields).encode("utf-8", "surrogatepass"))


def item_rows_sound(rows: Iterable[tuple[object, object, object, object]], checked: bool = True) -> bool:
    """Whether every catalog item row ``(id, segment, row, check)`` has ``str``, ``str``, ``int``
    fields and ``check == row_check(id, segment, row)``: the bulk form, for opening an index.
    ``checked=False`` (catalogs from before checksums) tests the types only.

    One pass with no per-row calls (100k rows in a fraction of :func:`row_check`'s time);
    the text it checksums is :func:`row_check`'s for these three fields.
    """
    c32, sep = crc32c.crc32c, _SEPARATOR
    if not checked:
        return all(type(item_id) is str and type(segment) is str and type(row) is int for item_id, segment, row, _ in rows)
    return all(
        type(item_id) is str and type(segment) is str and type(row) is int
        and check == c32(f"{item_id}{sep}{segment}{sep}{row}".encode("utf-8", "surrogatepass"))
        for item_id, segment, row, check in rows
    )


def payload_rows_sound(rows: Iterable[tuple[object, object, object]]) -> bool:
    """Whether every catalog payload row ``(id, payload, check)`` has ``check == row_check(id, payload)``
    (``payload`` a ``str`` or ``None``): the bulk form, for the payloads of a search's results."""
    c32, sep = crc32c.crc32c, _SEPARATOR
    return all(
        type(item_id) is str and (payload is None or type(payload) is str)
        and check == c32(f"{item_id}{sep}{'' if payload is None else payload}".encode("utf-8", "surrogatepass"))
        for item_id, payload, check in rows
    )


@dataclass
class FileChecks:
    """Chunk checksums of one segment file: ``values[j, c]`` covers slab ``j``, rows ``[c * chunk_rows, ...)``."""

    values: np.ndarray  # (R, chunks) uint32
    verified: np.ndarray = field(init=False)  # (R, chunks) bool: checked since this process opened the file

    def __post_init__(self) -> None:
        self.verified = np.zeros(self.values.shape, dtype=bool)


class ChunkHasher:
    """Running chunk checksums of a file written block by block, rows in increasing order."""

    def __init__(self, num_vectors: int, rows: int, chunk_rows: int = CHUNK_ROWS) -> None:
        self.chunk_rows = chunk_rows
        self.values = np.zeros((num_vectors, max(1, -(-rows // chunk_rows))), dtype=np.uint32)

    def update(self, start: int, block: np.ndarray) -> None:
        """Feed rows ``[start, start + n)`` of every slab: ``block`` is ``(R, n, ...)``."""
        stop = start + block.shape[1]
        row = start
        while row < stop:
            chunk = row // self.chunk_rows
            end = min(stop, (chunk + 1) * self.chunk_rows)
            for j in range(block.shape[0]):
                self.values[j, chunk] = crc(block[j, row - start : end - start], int(self.values[j, chunk]))
            row = end


def chunk_checksum(array: np.ndarray, j: int, chunk: int, chunk_rows: int) -> int:
    """The checksum of chunk ``chunk`` of slab ``j`` of ``array`` ``(R, rows, ...)`` as stored."""
    return crc(array[j, chunk * chunk_rows : (chunk + 1) * chunk_rows])


def encode_checks(chunk_rows: int, vec: np.ndarray, scale: np.ndarray | None) -> str:
    """The catalog text of a segment's chunk checksums."""
    return json.dumps({"chunk_rows": chunk_rows, "vec": vec.tolist(), "scale": None if scale is None else scale.tolist()})


def decode_checks(text: str) -> tuple[int, np.ndarray, np.ndarray | None]:
    """``(chunk_rows, vec, scale)`` from :func:`encode_checks` text (raises ``ValueError``/``KeyError`` if malformed)."""
    found = json.loads(text)
    scale = found["scale"]
    return (
        int(found["chunk_rows"]),
        np.asarray(found["vec"], dtype=np.uint32),
        None if scale is None else np.asarray(scale, dtype=np.uint32),
    )


__all__ = [
    "CHUNK_ROWS",
    "crc",
    "row_check",
    "item_rows_sound",
    "payload_rows_sound",
    "FileChecks",
    "ChunkHasher",
    "chunk_checksum",
    "encode_checks",
    "decode_checks",
]
