"""Text from pictures of text: OCR with RapidOCR's PP-OCR models, packaged in its wheel.

The built-in model reads text, so a screenshot, a scan or a PDF page without a text layer is
read through OCR before it is embedded. RapidOCR ships its detection, orientation and
recognition networks (ONNX, about 32 MB) inside the ``rapidocr`` wheel and runs them on the CPU
with ``onnxruntime``: nothing is downloaded. The engine is built once per process (about a
second) and reused.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np
from PIL import Image

_LOCK = threading.Lock()  # one engine, one page at a time: onnxruntime sessions are not re-entrant here


@functools.lru_cache(maxsize=1)
def _engine() -> Any:
    import logging

    from rapidocr import RapidOCR

    engine = RapidOCR(params={"Global.log_level": "critical"})
    logging.getLogger("RapidOCR").setLevel(logging.CRITICAL)
    return engine


def read_text(image: Image.Image) -> str:
    """The text that OCR reads on ``image``, one detected line per line, top to bottom ("" if none)."""
    pixels = np.asarray(image.convert("RGB"))
    with _LOCK:
        result = _engine()(pixels)
    lines = [line.strip() for line in (result.txts or ()) if line and line.strip()]
    return "\n".join(lines)


__all__ = ["read_text"]
