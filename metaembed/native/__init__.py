"""Compiled kernels: the fused budgeted MaxSim of :mod:`metaembed.native.maxsim` (C, AVX2 + FMA + F16C),
and the apq2 encoder (``apq.c``, portable C: :func:`apq_encode`).

The kernel picks the widest instructions this CPU has (Intel's AMX tiles for
float16 / bfloat16 / int8 candidates where present, AVX-512, else AVX2);
``METAEMBED_NATIVE_ISA=avx2`` (or ``avx512``) keeps it there.
The extension is built by ``pip install`` when a C compiler is present and is
optional: where it is missing, cannot run on this CPU, or is switched off with
``METAEMBED_NATIVE=0``, :func:`available` is false and :mod:`metaembed.scoring`
uses its BLAS path. Inputs the kernel does not handle (e.g. a row stride that
differs between positions) raise :class:`NativeUnsupported`, so only that case
falls back; any other error is a real one.
"""

from __future__ import annotations

import os
import struct
from typing import Sequence

import torch

try:
    from metaembed.native import _maxsim  # type: ignore[attr-defined]
except ImportError:  # built without a compiler, or a platform the wheel was not built for
    _maxsim = None
try:
    from metaembed.native import _apq  # type: ignore[attr-defined]
except ImportError:
    _apq = None

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.int8: 3}


class NativeUnsupported(Exception):
    """These inputs are outside what the compiled kernel handles; use the BLAS path."""


def _switched_off() -> bool:
    return os.environ.get("METAEMBED_NATIVE", "1").strip().lower() in {"0", "false", "no", "off"}


def available() -> bool:
    """True when the fused kernel is built, runs on this CPU, and is not switched off (``METAEMBED_NATIVE=0``)."""
    return not _switched_off() and _maxsim is not None and bool(_maxsim.available())


def apq_available() -> bool:
    """True when the compiled apq2 encoder is built and not switched off (``METAEMBED_NATIVE=0``)."""
    return not _switched_off() and _apq is not None


def apq_encode(vectors: torch.Tensor, centroids: torch.Tensor, eta: float, passes: int) -> torch.Tensor:
    """apq2 codes ``(n, M)`` uint8 of fp32 unit ``vectors`` ``(n, M * run)`` against codebooks
    ``(M, 256, run)`` fp32: anisotropic coordinate descent with weight ``eta``, ``passes`` passes
    (see :mod:`metaembed.index.codecs.anisotropic`). Runs on the calling thread, GIL released.

    Raises:
        NativeUnsupported: the encoder is not built or switched off.
    """
    if not apq_available():
        raise NativeUnsupported("the compiled apq2 encoder is not available")
    width, centroid_count, run = centroids.shape
    if (vectors.dtype != torch.float32 or centroids.dtype != torch.float32 or vectors.dim() != 2
            or vectors.shape[1] != width * run or centroid_count != 256):
        raise ValueError(f"apq_encode needs fp32 (n, {width * run}) vectors and (M, 256, run) codebooks")
    lengths = (centroids**2).sum(-1).contiguous()
    vectors, centroids = vectors.contiguous(), centroids.transpose(1, 2).contiguous()  # (M, run, 256)
    codes = torch.empty(vectors.shape[0], width, dtype=torch.uint8)
    _apq.encode(vectors.data_ptr(), vectors.shape[0], width, run, centroids.data_ptr(), lengths.data_ptr(),
                float(eta), int(passes), codes.data_ptr())
    return codes


_ISA_CODES = {"auto": 0, "avx2": 1, "avx512": 2, "amx": 3}


def _wanted() -> str:
    wanted = os.environ.get("METAEMBED_NATIVE_ISA", "auto").strip().lower()
    if wanted not in _ISA_CODES:
        raise ValueError(f"METAEMBED_NATIVE_ISA must be one of {sorted(_ISA_CODES)}, got {wanted!r}")
    return wanted


def isa() -> str | None:
    """The instruction set the kernel runs with here: ``"amx"``, ``"avx512"``, ``"avx2"``, or ``None`` when unavailable.

    ``"amx"`` (Intel's tile unit, Sapphire Rapids and later, where the OS grants it) scores float16,
    bfloat16 and int8 candidates at fp32 accuracy for batches of at least 64 query rows (every batch
    when pinned); other storage and smaller batches run on AVX-512. ``METAEMBED_NATIVE_ISA``
    (``avx2``, ``avx512``, ``amx`` or ``auto``) overrides the automatic choice.
    """
    if not available():
        return None
    wanted = _wanted()
    has_avx512 = bool(_maxsim.has_avx512())
    has_amx = has_avx512 and bool(_maxsim.has_amx())
    if wanted == "avx512" and not has_avx512:
        raise NativeUnsupported("METAEMBED_NATIVE_ISA=avx512 but this CPU has no AVX-512")
    if wanted == "amx" and not has_amx:
        raise NativeUnsupported("METAEMBED_NATIVE_ISA=amx but this CPU (or its OS) offers no AMX tiles")
    if wanted == "avx2" or not has_avx512:
        return "avx2"
    return "amx" if wanted in ("auto", "amx") and has_amx else "avx512"


def _pointers(tensors: Sequence[torch.Tensor]) -> bytes:
    return struct.pack(f"={len(tensors)}Q", *(tensor.data_ptr() for tensor in tensors))


def _common_row_stride(tensors: Sequence[torch.Tensor], what: str) -> int:
    strides = {tensor.stride(0) for tensor in tensors}
    if len(strides) != 1 or any(tensor.stride(1) != 1 for tensor in tensors):
        raise NativeUnsupported(f"{what} rows must be contiguous with one shared row stride")
    return strides.pop()


def score_run(
    query_rows: torch.Tensor,
    r_q: int,
    positions: Sequence[torch.Tensor],
    scales: Sequence[torch.Tensor] | None,
    out: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> None:
    """Write the MaxSim scores of ``query_rows`` against one run of candidates into ``out``.

    Args:
        query_rows: fp32 ``(Q*r_q, D)``, contiguous (the prefix ``r_q`` of each query stacked).
        r_q: query vectors per query.
        positions: ``r_c`` tensors ``(n, D)`` of one dtype (fp32, fp16, bf16 or int8) whose
            rows are contiguous and share one row stride; ``positions[j][c]`` is the
            ``j``-th vector of candidate ``c``.
        scales: for int8, ``r_c`` fp32 ``(n, G)`` tensors (value = code * scale of its
            group of ``D / G`` values) sharing one row stride; ``None`` otherwise.
        out: fp32 ``(Q, n)`` view whose rows are contiguous; receives the scores.
        rows: optional int64 ``(n,)`` contiguous row numbers: candidate ``c`` is row ``rows[c]``
            of ``positions`` (a shortlist scored in place, no gathered copy); their range is the
            caller's to check.

    Raises:
        NativeUnsupported: the kernel is unavailable or these layouts are outside it.
    """
    if isa() is None:
        raise NativeUnsupported("the compiled MaxSim kernel is not available")
    dtype = positions[0].dtype
    if dtype not in _DTYPE_CODES or any(block.dtype != dtype for block in positions):
        raise NativeUnsupported(f"positions of dtype {dtype} (or mixed dtypes)")
    if query_rows.dtype != torch.float32 or not query_rows.is_contiguous():
        raise NativeUnsupported("query rows must be contiguous fp32")
    if out.dtype != torch.float32 or (out.shape[1] > 1 and out.stride(1) != 1):
        raise NativeUnsupported("out must be fp32 with contiguous rows")
    if rows is not None and (rows.dtype != torch.int64 or rows.dim() != 1 or not rows.is_contiguous()):
        raise NativeUnsupported("row numbers must be a contiguous int64 vector")
    num_rows, dim = query_rows.shape
    count = positions[0].shape[0] if rows is None else rows.shape[0]
    row_stride = _common_row_stride(positions, "candidate")
    scale_pointers, scale_stride, groups = b"", 0, 1
    if dtype == torch.int8:
        if scales is None:
            raise NativeUnsupported("int8 positions need scales")
        scales = [scale if scale.dtype == torch.float32 else scale.float() for scale in scales]
        scale_stride = _common_row_stride(scales, "scale")
        groups = scales[0].shape[1]
        scale_pointers = _pointers(scales)
    _maxsim.score(
        query_rows.data_ptr(), num_rows, r_q, dim,
        _pointers(positions), row_stride, _DTYPE_CODES[dtype],
        scale_pointers, scale_stride, groups,
        count, out.data_ptr(), out.stride(0), _ISA_CODES[_wanted()], 0 if rows is None else rows.data_ptr(),
    )  # fmt: skip


# The largest k the compiled top-k takes (topk.h's TOPK_MAX): an insertion shifts up to k entries.
TOPK_MAX = 128


def topk_rows(scores: torch.Tensor, k: int, values: torch.Tensor, columns: torch.Tensor) -> bool:
    """Each row's ``k`` largest scores, best first, into ``values`` / ``columns``.

    Args:
        scores: fp32 ``(R, N)`` with contiguous rows, ``1 <= k <= min(N, TOPK_MAX)``.
        values: contiguous fp32 ``(R, k)``; receives the scores (equal scores: lower column first).
        columns: contiguous int64 ``(R, k)``; receives their columns.

    Runs on the calling thread, GIL released. NaN ranks below every number.

    Returns:
        True; False when the scores needed too many insertions into the running list (e.g.
        scores rising along the row, where ``torch.topk`` is faster): the outputs are then
        incomplete and the caller should use ``torch.topk``.

    Raises:
        NativeUnsupported: the kernel is unavailable or these layouts are outside it.
    """
    if not available():
        raise NativeUnsupported("the compiled kernels are not available")
    rows, cols = scores.shape
    if (scores.dtype != torch.float32 or (cols > 1 and scores.stride(1) != 1) or (rows > 1 and scores.stride(0) < cols)
            or not 1 <= k <= min(cols, TOPK_MAX)):
        raise NativeUnsupported("top-k takes fp32 scores with contiguous rows and 1 <= k <= min(N, 128)")
    if (values.dtype, columns.dtype) != (torch.float32, torch.int64) or not (values.is_contiguous() and columns.is_contiguous()):
        raise NativeUnsupported("top-k writes contiguous fp32 values and int64 columns")
    if values.shape != (rows, k) or columns.shape != (rows, k):
        raise ValueError(f"top-k outputs must be ({rows}, {k})")
    return bool(_maxsim.topk(scores.data_ptr(), rows, cols, scores.stride(0) if rows > 1 else cols, k,
                             values.data_ptr(), columns.data_ptr()))


__all__ = ["available", "isa", "score_run", "topk_rows", "TOPK_MAX", "NativeUnsupported", "apq_available", "apq_encode"]
