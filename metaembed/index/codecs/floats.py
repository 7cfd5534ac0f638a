"""The float codecs: ``float32`` (exact, 4 bytes a value), ``float16`` (the default) and ``bfloat16``.

numpy has no bfloat16, so bfloat16 files hold the raw 16-bit patterns as ``uint16`` and are
viewed as ``torch.bfloat16``. The kernel reads all three directly and upcasts one block at a
time, so fp16 storage loses nothing beyond its own rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from metaembed.index.codecs import CODECS, Codec


class FloatCodec(Codec):
    """Vectors stored as floats of ``torch_dtype`` in a file of ``file_dtype``."""

    def __init__(self, name: str, file_dtype: np.dtype, torch_dtype: torch.dtype) -> None:
        self.name = name
        self.file_dtype = np.dtype(file_dtype)
        self.kernel_dtype = torch_dtype

    def encode(self, vectors: torch.Tensor) -> tuple[np.ndarray, None]:
        converted = vectors.to(torch.float32).to(self.kernel_dtype)
        if self.kernel_dtype == torch.bfloat16:
            return converted.view(torch.int16).numpy().view(np.uint16), None
        return converted.numpy(), None

    def decode(self, codes: np.ndarray, scales: np.ndarray | None = None) -> torch.Tensor:
        return self.as_torch(codes).to(torch.float32)


for _codec in (
    FloatCodec("float32", np.float32, torch.float32),
    FloatCodec("float16", np.float16, torch.float16),
    FloatCodec("bfloat16", np.uint16, torch.bfloat16),
):
    CODECS.register(_codec)

__all__ = ["FloatCodec"]
