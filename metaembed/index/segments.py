"""Immutable, memory-mapped vector files ("segments") in position-major layout.

A segment holds ``rows`` candidates of ``R`` vectors of dimension ``D`` as one
array of shape ``(R, rows, D)``: position-major, so a budget prefix ``r_c``
reads exactly the first ``r_c`` contiguous slabs and the cheap first stage of
coarse-to-fine search (``r_c = 1``) reads one ``rows * D`` slab. int8 segments
keep a second file of fp32 scales ``(R, rows, G)``, one per group of ``D / G``
values (the int8 codec of :mod:`metaembed.index.codecs`).

Segments are written once to a temporary name, flushed and fsynced, then
renamed; they are never modified afterwards. A segment only becomes part of an
index when the catalog commits it (see :mod:`metaembed.index.catalog`), so a
writer killed while writing leaves at most an unreferenced file behind.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from metaembed.index.codecs import Codec
from metaembed.scoring import CandidateSource

VECTOR_SUFFIX = ".vec"
SCALE_SUFFIX = ".scale"
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
    """

    name: str
    codes: np.ndarray
    scales: np.ndarray | None
    fmt: Codec

    @property
    def rows(self) -> int:
        return int(self.codes.shape[1])

    def source(self, r_c: int, start: int, stop: int, column: int) -> CandidateSource:
        """The first ``r_c`` vectors of rows ``[start, stop)`` for the kernel, at output ``column`` on.

        The codec decides how: views of the stored codes where the kernel reads them, no copy.
        """
        scales = None if self.scales is None else self.scales[:r_c, start:stop]
        return self.fmt.source(self.codes[:r_c, start:stop], scales, column)

    def gather(self, rows: np.ndarray, r_c: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Copy the first ``r_c`` vectors of the given rows: C-contiguous codes ``(r_c, n, D)`` and scales ``(r_c, n, G)``."""
        order = np.sort(rows)  # sorted reads are sequential on a memmap
        # np.take keeps the position-major order; fancy indexing codes[:r_c, order] would
        # return a (n, r_c, D)-ordered array and cost a transposing copy downstream.
        codes = np.take(self.codes[:r_c], order, axis=1)
        scales = None if self.scales is None else np.take(self.scales[:r_c], order, axis=1)
        if not np.array_equal(order, rows):
            back = np.argsort(np.argsort(rows))
            codes = np.take(codes, back, axis=1)
            scales = None if scales is None else np.take(scales, back, axis=1)
        return codes, scales


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish(tmp: Path, final: Path, array: np.memmap) -> None:
    array.flush()
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def new_segment_name() -> str:
    return f"seg-{uuid.uuid4().hex}"


def segment_files(folder: Path, name: str) -> list[Path]:
    return [folder / f"{name}{VECTOR_SUFFIX}", folder / f"{name}{SCALE_SUFFIX}"]


def write_segment(
    folder: Path,
    rows: int,
    num_vectors: int,
    dim: int,
    fmt: Codec,
    blocks: Iterable[tuple[int, np.ndarray, np.ndarray | None]],
    groups: int = 1,
) -> str:
    """Write a new segment file from ``blocks`` and return its name.

    ``blocks`` yields ``(start, codes, scales)`` with ``codes`` of shape
    ``(R, n, D)`` already in the storage dtype and, for int8, ``scales`` of shape
    ``(R, n, groups)``, covering rows ``0..rows``. If the iterator raises, the partial files are removed and the error propagates.
    """
    name = new_segment_name()
    vec_path, scale_path = segment_files(folder, name)
    tmp_vec, tmp_scale = vec_path.with_suffix(".tmp"), scale_path.with_suffix(".stmp")
    try:
        out = np.memmap(tmp_vec, dtype=fmt.file_dtype, mode="w+", shape=(num_vectors, rows, fmt.code_width(dim)))
        out_scale = (
            np.memmap(tmp_scale, dtype=np.float32, mode="w+", shape=(num_vectors, rows, groups))
            if fmt.has_scale
            else None
        )
        for start, block, block_scale in blocks:
            stop = start + block.shape[1]
            out[:, start:stop] = block
            if out_scale is not None:
                out_scale[:, start:stop] = block_scale
        if out_scale is not None:
            _finish(tmp_scale, scale_path, out_scale)
        _finish(tmp_vec, vec_path, out)
        _fsync_dir(folder)
    except BaseException:
        for path in (tmp_vec, tmp_scale, vec_path, scale_path):
            path.unlink(missing_ok=True)
        raise
    return name


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
    folder: Path, name: str, rows: int, num_vectors: int, dim: int, fmt: Codec, groups: int = 1
) -> Segment:
    """Memory-map a committed segment read-only (``groups`` int8 scales per vector)."""
    vec_path, scale_path = segment_files(folder, name)
    codes = np.memmap(vec_path, dtype=fmt.file_dtype, mode="r", shape=(num_vectors, rows, fmt.code_width(dim)))
    scale_shape = (num_vectors, rows, groups)
    scales = np.memmap(scale_path, dtype=np.float32, mode="r", shape=scale_shape) if fmt.has_scale else None
    return Segment(name, codes, scales, fmt)


__all__ = ["Segment", "write_segment", "encoded_blocks", "merged_blocks", "open_segment", "segment_files"]
