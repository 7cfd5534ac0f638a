"""The ``int8`` codec: symmetric quantisation with an fp32 scale per group of 64 values.

``value ~= code * scale`` with ``scale = max|group| / 127`` kept as fp32 beside the codes:
1 byte per value plus 4 bytes per group, 53.1% of float16 when 64 divides ``D`` (one scale
per vector otherwise, see :func:`int8_groups`). The kernel reads the codes and scales
directly and multiplies each upcast block by its scales.
"""

from __future__ import annotations

import numpy as np
import torch

from metaembed.index.codecs import CODECS, Codec, tensor_view

#: int8 storage quantises each vector in groups of this many consecutive values, each group
#: with its own fp32 scale. A scale per 64 values costs 1/16 byte per value and, against one
#: scale per vector, shrinks the rounding step at large D: the largest of 64 values sits
#: nearer the typical value than the largest of 2048. A dimension that 64 does not divide
#: keeps one scale per vector.
INT8_GROUP = 64
_LEVELS = 127.0


def int8_groups(dim: int) -> int:
    """Scale groups per vector of dimension ``dim`` in int8 storage (see :data:`INT8_GROUP`).

    >>> int8_groups(2048), int8_groups(128), int8_groups(96)
    (32, 2, 1)
    """
    return dim // INT8_GROUP if dim % INT8_GROUP == 0 else 1


class Int8Codec(Codec):
    """int8 codes ``(..., D)`` and fp32 scales ``(..., G)``, ``G = int8_groups(D)``."""

    name = "int8"
    file_dtype = np.dtype(np.int8)
    kernel_dtype = torch.int8
    has_scale = True

    def scale_groups(self, dim: int) -> int:
        return int8_groups(dim)

    def encode(self, vectors: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        vectors = vectors.to(torch.float32)
        grouped = vectors.unflatten(-1, (int8_groups(vectors.shape[-1]), -1))
        scales = grouped.abs().amax(dim=-1) / _LEVELS
        # An all-zero group has scale 0; divide by 1 instead so its codes are 0, not NaN.
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(grouped / safe[..., None]).clamp_(-_LEVELS, _LEVELS).to(torch.int8)
        return codes.flatten(-2).numpy(), scales.numpy()

    def decode(self, codes: np.ndarray, scales: np.ndarray | None) -> torch.Tensor:
        values = self.as_torch(codes).to(torch.float32)
        group_scales = tensor_view(scales)
        return (values.unflatten(-1, (group_scales.shape[-1], -1)) * group_scales[..., None]).flatten(-2)


CODECS.register(Int8Codec())

__all__ = ["Int8Codec", "INT8_GROUP", "int8_groups"]
