"""Schemathesis hooks for the bounded run in ``test_schemathesis.py`` (loaded via SCHEMATHESIS_HOOKS).

The API documents image fields as ``format: base64-image``; JSON Schema cannot say "a decodable
image", so this teaches the generator what such a value is: small PNGs of random size and colour.
"""

from __future__ import annotations

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

from metaembed.serving.schemas import IMAGE_FORMAT


def _png(width: int, height: int, color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


_channel = st.integers(0, 255)
schemathesis.openapi.format(
    IMAGE_FORMAT,
    st.builds(_png, st.integers(8, 96), st.integers(8, 96), st.tuples(_channel, _channel, _channel)),
)
