"""Immutable, memory-mapped vector files ("segments") in position-major layout.

A segment holds ``rows`` candidates of ``R`` vectors of dimension ``D`` as one
array of shape ``(R, rows, D)``: position-major, so a budget prefix ``r_c``
reads exactly the first ``r_c`` contiguous slabs and the cheap first stage of
coarse-to-fine search (``r_c = 1``) reads one ``rows * D`` slab. int8 segments
keep a second file of fp32 scales ``(R, rows, G)``, one per group of ``D / G``
values (the int8 codec of :mod:`metaembed.index.codecs`).

Segments are written once to a temporary name through file I/O into
preallocated space (a full disk is ``ENOSPC``, not a ``SIGBUS``), fsynced, then
renamed; they are never modified afterwards. Each carries chunk checksums
(:mod:`metaembed.index.checksum`) that a read verifies the first time it touches
a chunk. A segment only becomes part of an
index when the catalog commits it (see :mod:`metaembed.index.catalog`), so a
writer killed while writing leaves at most an unreferenced file behind.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from metaembed.errors import IndexCorruptError
from metaembed.index.checksum import CHUNK_ROWS, ChunkHasher, FileChecks, chunk_checksum, decode_checks, encode_checks
from metaembed.index.codecs import Codec
from metaembed.index.files import fsync_dir
from metaembed.scoring import CandidateSource

VECTOR_SUFFIX = ".vec"
SCALE_SUFFIX = ".scale"
# Names of files being written (renamed to the two above when complete).
TMP_SUFFIX = ".tmp"
SCALE_TMP_SUFFIX = ".stmp"
# Candidates converted and written per step, so adding a large (memmapped)
# batch never holds more than a few hundred MB of fp32 at once.
_WRITE_ROWS = 4096


@dataclass(frozen=True)
class Segment:
    """A read-only view of one segment file.

    Attributes:
        name: file stem, unique in the index.
        codes: ``(R, rows, W)`` array (memmap) in the codec's file dtype (``W = D`` but for a
            compressed codec).
        scales: ``(R, rows, G)`` fp32 array for int8 storage (a scale per group of
            ``D / G`` values), else ``None``.
        paths: the vector file and the scale file (``None`` without scales), named in errors.
        checks: chunk checksums of the two files (``None`` for an index written before
            checksums: its chunks are checked for NaN/inf instead).
        chunk_rows: rows per checksummed chunk.
    """

    name: str
    codes: np.ndarray
    scales: np.ndarray | None
    fmt: Codec
    paths: tuple[Path, Path | None] = (Path(), None)
    checks: tuple[FileChecks, FileChecks | None] | None = None
    chunk_rows: int = CHUNK_ROWS
    _legacy_verified: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool), repr=False)
    # The kernel's views of the first r_c slabs, by r_c: made once (the files never change), not per shortlist.
    _slabs: dict[int, CandidateSource] = field(default_factory=dict, repr=False, compare=False)

    @property
    def rows(self) -> int:
        return int(self.codes.shape[1])

    def source(self, r_c: int, start: int, stop: int, column: int) -> CandidateSource:
        """The first ``r_c`` vectors of rows ``[start, stop)`` for the kernel, at output ``column`` on.

        The codec decides how: views of the stored codes where the kernel reads them, no copy.
        The chunks read are verified against their checksums the first time (:meth:`check`).
        """
        self.check(r_c, start, stop)
        slots = self.fmt.slots(r_c)
        scales = None if self.scales is None else self.scales[:slots, start:stop]
        return self.fmt.source(self.codes[:slots, start:stop], scales, column, r_c)

    def rows_source(self, rows: np.ndarray, r_c: int, column: int) -> CandidateSource:
        """The first ``r_c`` vectors of the sorted ``rows`` for the kernel, at output ``column`` on.

        Where the kernel reads the stored codes (floats, int8), the source is the stored slabs
        with the row numbers, so the kernel reads each shortlisted row in place: no gathered
        copy. Other codecs decode a gathered copy. The chunks read are verified first.
        """
        if self.fmt.kernel_dtype is None:
            codes, scales = self.gather(rows, r_c)
            return self.fmt.source(codes, scales, column, r_c)
        self.check_chunks(r_c, np.unique(rows // self.chunk_rows))
        whole = self._slabs.get(r_c)
        if whole is None:
            scales = None if self.scales is None else self.scales[:r_c]
            whole = self._slabs.setdefault(r_c, self.fmt.source(self.codes[:r_c], scales))
        return CandidateSource(whole.positions, whole.scales, column, torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)))

    def gather(self, rows: np.ndarray, r_c: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Copy the first ``r_c`` vectors of the given rows: C-contiguous codes ``(slots, n, W)`` and scales ``(slots, n, G)``.

        ``slots`` is ``fmt.slots(r_c)``: ``r_c`` but for a codec that packs each item into one
        byte stream (:meth:`Codec.slots`).
        """
        order = np.sort(rows)  # sorted reads are sequential on a memmap
        self.check_chunks(r_c, np.unique(order // self.chunk_rows))
        slots = self.fmt.slots(r_c)
        # np.take keeps the position-major order; fancy indexing codes[:slots, order] would
        # return a (n, slots, W)-ordered array and cost a transposing copy downstream.
        codes = np.take(self.codes[:slots], order, axis=1)
        scales = None if self.scales is None else np.take(self.scales[:slots], order, axis=1)
        if not np.array_equal(order, rows):
            back = np.argsort(np.argsort(rows))
            codes = np.take(codes, back, axis=1)
            scales = None if scales is None else np.take(scales, back, axis=1)
        return codes, scales

    # ------------------------------------------------------------- verification
    def check(self, r_c: int, start: int, stop: int) -> None:
        """Verify (once per process) the chunks of slabs ``< r_c`` holding rows ``[start, stop)``."""
        if stop > start:
            self.check_chunks(r_c, np.arange(start // self.chunk_rows, (stop - 1) // self.chunk_rows + 1))

    def check_chunks(self, r_c: int, chunks: np.ndarray) -> None:
        """:class:`IndexCorruptError` naming the file if a chunk of the slabs holding ``r_c`` vectors is damaged."""
        slots = self.fmt.slots(r_c)
        done = self._legacy_verified if self.checks is None else self.checks[0].verified
        if done.size and done[:slots, chunks].all():
            return
        for j in range(slots):
            for chunk in chunks.tolist():
                self._check_chunk(j, int(chunk))

    def _check_chunk(self, j: int, chunk: int) -> None:
        rows = slice(chunk * self.chunk_rows, (chunk + 1) * self.chunk_rows)
        arrays = ((self.codes, self.paths[0]), (self.scales, self.paths[1]))
        if self.checks is None:  # written before checksums: at least refuse NaN/inf
            if self._legacy_verified[j, chunk]:
                return
            for position, (array, path) in enumerate(arrays):
                if array is not None and not finite_codes(array[j, rows], self.fmt, scales=position == 1):
                    self._damaged(path, j, rows, "holds NaN, inf or negative scales")
            self._legacy_verified[j, chunk] = True
            return
        for (array, path), checks in zip(arrays, self.checks):
            if array is None or checks is None or checks.verified[j, chunk]:
                continue
            if chunk_checksum(array, j, chunk, self.chunk_rows) != int(checks.values[j, chunk]):
                self._damaged(path, j, rows, "fails its checksum")
            checks.verified[j, chunk] = True

    def _damaged(self, path: Path | None, j: int, rows: slice, what: str) -> None:
        last = min(rows.stop, self.rows) - 1
        raise IndexCorruptError(
            f"index file {str(path)!r} (segment {self.name}) {what} at vector {j}, rows {rows.start}-{last}: "
            f"it is damaged; 'metaembed index check {str(path.parent) if path else ''}' lists the damage "
            "and 'metaembed index repair' drops it"
        )

    def verify_all(self) -> None:
        """Read every chunk of both files (checksums, or NaN/inf for an index written before checksums)."""
        chunks = np.arange(max(1, -(-self.rows // self.chunk_rows)))
        self.check_chunks(int(self.codes.shape[0]), chunks)


def finite_codes(codes: np.ndarray, fmt: Codec, scales: bool = False) -> bool:
    """Whether stored ``codes`` (or fp32 ``scales``, which must also be non-negative) hold only finite values.

    Floating file dtypes are checked directly; bfloat16 (stored as raw 16-bit patterns) by its
    exponent bits; integer codes (int8, packed codecs) cannot hold NaN or inf.
    """
    if scales:
        return bool(np.isfinite(codes).all() and (codes >= 0).all())
    if fmt.name == "bfloat16":  # exponent all ones is inf or NaN
        return not bool(((codes & 0x7F80) == 0x7F80).any())
    if np.dtype(fmt.file_dtype).kind == "f":
        return bool(np.isfinite(codes).all())
    return True


def new_segment_name() -> str:
    return f"seg-{uuid.uuid4().hex}"


def segment_files(folder: Path, name: str) -> list[Path]:
    return [folder / f"{name}{VECTOR_SUFFIX}", folder / f"{name}{SCALE_SUFFIX}"]


class _FileWriter:
    """A ``(R, rows, width)`` file written block by block through ``pwrite`` into preallocated space.

    No memory map is written: a full disk surfaces as ``ENOSPC`` from
    ``posix_fallocate`` (before any data) or ``pwrite``, never as a ``SIGBUS``.
    """

    def __init__(self, path: Path, dtype: np.dtype, num_vectors: int, rows: int, width: int) -> None:
        self.path, self.dtype, self.rows, self.width = path, np.dtype(dtype), rows, width
        self.hasher = ChunkHasher(num_vectors, rows)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        size = num_vectors * rows * width * self.dtype.itemsize
        if size:
            os.posix_fallocate(self.fd, 0, size)

    def write(self, start: int, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self.hasher.update(start, block)
        row_bytes = self.width * self.dtype.itemsize
        for j in range(block.shape[0]):
            data = memoryview(block[j]).cast("B")
            offset = (j * self.rows + start) * row_bytes
            while data:  # pwrite may write less than asked
                written = os.pwrite(self.fd, data, offset)
                data, offset = data[written:], offset + written

    def finish(self) -> None:
        os.fsync(self.fd)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_segment(
    folder: Path,
    rows: int,
    num_vectors: int,
    dim: int,
    fmt: Codec,
    blocks: Iterable[tuple[int, np.ndarray, np.ndarray | None]],
    groups: int = 1,
) -> tuple[str, str]:
    """Write a new segment file from ``blocks``; return its name and its chunk checksums (catalog text).

    ``blocks`` yields ``(start, codes, scales)`` with ``codes`` of shape
    ``(R, n, D)`` already in the storage dtype and, for int8, ``scales`` of shape
    ``(R, n, groups)``, covering rows ``0..rows``. If anything fails (the iterator,
    a full disk) the partial files are removed and the error propagates.
    """
    name = new_segment_name()
    vec_path, scale_path = segment_files(folder, name)
    tmp_vec, tmp_scale = vec_path.with_suffix(TMP_SUFFIX), scale_path.with_suffix(SCALE_TMP_SUFFIX)
    writers: list[_FileWriter] = []
    try:
        writers.append(_FileWriter(tmp_vec, fmt.file_dtype, num_vectors, rows, fmt.code_width(dim)))
        if fmt.has_scale:
            writers.append(_FileWriter(tmp_scale, np.dtype(np.float32), num_vectors, rows, groups))
        for start, block, block_scale in blocks:
            writers[0].write(start, block)
            if fmt.has_scale:
                writers[1].write(start, block_scale)
        for writer in writers:
            writer.finish()
        if fmt.has_scale:
            os.replace(tmp_scale, scale_path)
        os.replace(tmp_vec, vec_path)
        fsync_dir(folder)
    except BaseException:
        for writer in writers:
            writer.close()
        for path in (tmp_vec, tmp_scale, vec_path, scale_path):
            path.unlink(missing_ok=True)
        raise
    scale_checks = writers[1].hasher.values if fmt.has_scale else None
    return name, encode_checks(CHUNK_ROWS, writers[0].hasher.values, scale_checks)


def encoded_blocks(
    embeddings: torch.Tensor,
    num_vectors: int,
    fmt: Codec,
    check: Callable[[torch.Tensor, int], None],
) -> Iterable[tuple[int, np.ndarray, np.ndarray | None]]:
    """Encode ``(N, R, D)`` embeddings block by block into position-major ``(R, n, D)`` codes.

    ``check(block_fp32, start)`` is called on each fp32 block first (it raises
    on NaN/inf), so validation and conversion share one pass over the input.
    """
    for start in range(0, embeddings.shape[0], _WRITE_ROWS):
        block = embeddings[start : start + _WRITE_ROWS, :num_vectors].to(torch.float32)
        check(block, start)
        codes, scales = fmt.encode(block.transpose(0, 1))
        yield start, codes, scales


def merged_blocks(parts: list[tuple[Segment, np.ndarray]]) -> Iterable[tuple[int, np.ndarray, np.ndarray | None]]:
    """The live rows of several segments, copied in their stored form (no re-quantisation)."""
    start = 0
    for segment, rows in parts:
        for offset in range(0, len(rows), _WRITE_ROWS):
            chosen = rows[offset : offset + _WRITE_ROWS]
            codes, scales = segment.gather(chosen, segment.codes.shape[0])
            yield start, codes, scales
            start += len(chosen)


def open_segment(
    folder: Path,
    name: str,
    rows: int,
    num_vectors: int,
    dim: int,
    fmt: Codec,
    groups: int = 1,
    checks: str | None = None,
) -> Segment:
    """Memory-map a committed segment read-only (``groups`` int8 scales per vector).

    ``checks`` is the catalog text of its chunk checksums (``None`` for an index
    written before checksums). Raises ``FileNotFoundError`` for a missing file and
    :class:`IndexCorruptError` for a file of the wrong size or malformed checksums.
    """
    vec_path, scale_path = segment_files(folder, name)
    files = [(vec_path, fmt.file_dtype, fmt.code_width(dim))] + ([(scale_path, np.dtype(np.float32), groups)] if fmt.has_scale else [])
    arrays = []
    for path, dtype, width in files:
        expected = num_vectors * rows * width * np.dtype(dtype).itemsize
        size = path.stat().st_size
        if size != expected:
            raise IndexCorruptError(
                f"index file {str(path)!r} (segment {name}) holds {size} bytes where the catalog's "
                f"{rows} rows x {num_vectors} vectors x {width} values need {expected}: it is damaged"
            )
        arrays.append(np.memmap(path, dtype=dtype, mode="r", shape=(num_vectors, rows, width)) if rows else
                      np.zeros((num_vectors, 0, width), dtype=dtype))
    codes, scales = arrays[0], (arrays[1] if fmt.has_scale else None)
    chunks = max(1, -(-rows // CHUNK_ROWS))
    if checks is None:
        return Segment(name, codes, scales, fmt, (vec_path, scale_path if fmt.has_scale else None), None,
                       CHUNK_ROWS, np.zeros((num_vectors, chunks), dtype=bool))
    try:
        chunk_rows, vec, scale = decode_checks(checks)
        if vec.shape != (num_vectors, -(-rows // chunk_rows) or 1) or (scale is None) == fmt.has_scale:
            raise ValueError("checksums do not match the segment's shape")
        if scale is not None and scale.shape != vec.shape:
            raise ValueError("scale checksums do not match the segment's shape")
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as error:
        raise IndexCorruptError(
            f"index catalog entry of segment {name} ({str(vec_path.parent / 'catalog.sqlite')!r}) "
            f"has malformed checksums ({error})"
        ) from None
    file_checks = (FileChecks(vec), None if scale is None else FileChecks(scale))
    return Segment(name, codes, scales, fmt, (vec_path, scale_path if fmt.has_scale else None), file_checks, chunk_rows)


__all__ = [
    "Segment",
    "write_segment",
    "encoded_blocks",
    "merged_blocks",
    "open_segment",
    "segment_files",
    "finite_codes",
    "TMP_SUFFIX",
    "SCALE_TMP_SUFFIX",
]
