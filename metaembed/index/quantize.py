"""Storage precisions of an index: how fp32 vectors become bytes on disk and back.

The index stores every vector once, in a compact precision chosen at creation,
and the scorer upcasts it to fp32 chunk by chunk (see :mod:`metaembed.scoring`).

* ``float16`` (default) and ``bfloat16``: 2 bytes per value. numpy has no
  bfloat16, so bfloat16 files hold the raw 16-bit patterns as ``uint16`` and are
  viewed as ``torch.bfloat16``.
* ``int8``: symmetric quantisation in groups of
  :data:`~metaembed.scoring.INT8_GROUP` consecutive values,
  ``value ~= code * scale`` with ``scale = max|group| / 127`` kept as fp32 beside
  the codes (1 byte per value plus 4 bytes per group: 53.1% of float16 when 64
  divides D; one scale per vector otherwise, see :func:`~metaembed.scoring.int8_groups`).
* ``float32``: exact, 4 bytes per value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metaembed.errors import InputError
from metaembed.scoring import STORAGE_DTYPES, int8_groups

_INT8_LEVELS = 127.0


@dataclass(frozen=True)
class StorageFormat:
    """One storage precision: its name, the numpy dtype of its file and the torch dtype the scorer sees."""

    name: str
    file_dtype: np.dtype
    torch_dtype: torch.dtype

    @property
    def has_scale(self) -> bool:
        """Whether vectors carry fp32 scales, one per group of values (int8)."""
        return self.name == "int8"


_FORMATS = {
    "float32": StorageFormat("float32", np.dtype(np.float32), torch.float32),
    "float16": StorageFormat("float16", np.dtype(np.float16), torch.float16),
    "bfloat16": StorageFormat("bfloat16", np.dtype(np.uint16), torch.bfloat16),
    "int8": StorageFormat("int8", np.dtype(np.int8), torch.int8),
}
assert set(_FORMATS) == set(STORAGE_DTYPES)


def storage_format(name: str) -> StorageFormat:
    """The :class:`StorageFormat` called ``name``; :class:`InputError` for an unknown one."""
    if not isinstance(name, str) or name not in _FORMATS:
        raise InputError(f"unknown index dtype {name!r}; expected one of {list(_FORMATS)}")
    return _FORMATS[name]


def encode(vectors: torch.Tensor, fmt: StorageFormat) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert fp32 ``vectors`` of shape ``(..., D)`` to the file dtype of ``fmt``.

    Returns ``(codes, scales)``: ``codes`` has the shape of ``vectors`` in
    ``fmt.file_dtype``; for int8 ``scales`` is fp32 ``vectors.shape[:-1] + (G,)``
    with ``G = int8_groups(D)`` (one scale per group of consecutive values), else ``None``.
    """
    vectors = vectors.to(torch.float32)
    if fmt.name == "int8":
        grouped = vectors.unflatten(-1, (int8_groups(vectors.shape[-1]), -1))
        scales = grouped.abs().amax(dim=-1) / _INT8_LEVELS
        # An all-zero group has scale 0; divide by 1 instead so its codes are 0, not NaN.
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(grouped / safe[..., None]).clamp_(-_INT8_LEVELS, _INT8_LEVELS).to(torch.int8)
        return codes.flatten(-2).numpy(), scales.numpy()
    converted = vectors.to(fmt.torch_dtype)
    if fmt.name == "bfloat16":
        return converted.view(torch.int16).numpy().view(np.uint16), None
    return converted.numpy(), None


def as_torch(codes: np.ndarray, fmt: StorageFormat) -> torch.Tensor:
    """View stored ``codes`` (a numpy array or memmap) as a torch tensor of ``fmt.torch_dtype``, no copy."""
    import warnings

    with warnings.catch_warnings():
        # Memmaps are opened read-only and torch only reads them.
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(codes)
    if fmt.name == "bfloat16":
        return tensor.view(torch.bfloat16)
    return tensor


def decode(codes: np.ndarray, scales: np.ndarray | None, fmt: StorageFormat) -> torch.Tensor:
    """The fp32 values that ``codes`` (and ``scales`` for int8) stand for: the inverse of :func:`encode`."""
    values = as_torch(codes, fmt).to(torch.float32)
    if scales is not None:
        group_scales = as_torch(scales, _FORMATS["float32"])
        values = (values.unflatten(-1, (group_scales.shape[-1], -1)) * group_scales[..., None]).flatten(-2)
    return values


__all__ = ["StorageFormat", "storage_format", "encode", "decode", "as_torch"]
