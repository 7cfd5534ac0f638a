"""Request and response bodies of the HTTP service, validated by pydantic.

Limits are deliberate: a request that would make the server hold a huge image, a huge batch or an
absurd ``k`` in memory is refused with a 422 before any work is done.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, Literal, Optional

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from metaembed.budget import Budget
from metaembed.errors import BudgetError

MAX_TEXT_CHARS = 8_192
#: Base64 text of at most ~12 MB, i.e. an image file of at most ~9 MB.
MAX_IMAGE_B64_CHARS = 12_000_000
#: An image larger than this many pixels is refused (a decompression bomb guard).
MAX_IMAGE_PIXELS = 40_000_000
MAX_K = 1_000
MAX_ITEMS_PER_REQUEST = 256
MAX_ID_CHARS = 512


def decode_image(data: str) -> Image.Image:
    """Decode a base64 string (optionally a ``data:image/...;base64,`` URL) to an RGB PIL image.

    Raises ``ValueError`` with a message fit for the client when it is not a readable image.
    """
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(f"image is {width}x{height}; at most {MAX_IMAGE_PIXELS} pixels are accepted")
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise ValueError("image could not be decoded: send a PNG, JPEG, WebP or GIF file as base64") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _HasContent(_Strict):
    text: Optional[str] = Field(None, max_length=MAX_TEXT_CHARS, description="Text of the item.")
    image: Optional[str] = Field(
        None, max_length=MAX_IMAGE_B64_CHARS, description="An image file encoded as base64 (or a data: URL)."
    )

    @field_validator("image")
    @classmethod
    def _image_decodes(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            decode_image(value)  # raises with a clear message; the decoded image is rebuilt later
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> "_HasContent":
        if not (self.text and self.text.strip()) and self.image is None:
            raise ValueError("give 'text', 'image' or both")
        return self

    def to_item(self) -> dict[str, Any]:
        """The item dict that :func:`metaembed.model.items.to_item` understands."""
        item: dict[str, Any] = {}
        if self.text:
            item["text"] = self.text
        if self.image is not None:
            item["image"] = decode_image(self.image)
        return item


class SearchRequest(_HasContent):
    """``POST /search``: a query (text and/or image), how many results and at which budget."""

    k: int = Field(10, ge=1, le=MAX_K, description="How many results to return.")
    budget: Optional[str] = Field(
        None, description="'r_q,r_c', e.g. '4,8'. Default: the largest budget recorded in the index."
    )
    mode: Literal["exact", "coarse"] = Field("exact", description="Exact MaxSim or coarse-to-fine search.")

    @field_validator("budget")
    @classmethod
    def _budget_parses(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                Budget.parse(value)
            except BudgetError as error:
                raise ValueError(str(error)) from None
        return value


class SearchHit(BaseModel):
    rank: int
    id: str
    score: float
    payload: dict[str, Any]


class SearchResponse(BaseModel):
    budget: str
    results: list[SearchHit]


class NewItem(_HasContent):
    """One item of ``POST /items``: a unique id, its content and an optional JSON payload."""

    id: str = Field(..., min_length=1, max_length=MAX_ID_CHARS)
    payload: dict[str, Any] = Field(default_factory=dict, description="Stored with the item, returned with hits.")


class AddItemsRequest(_Strict):
    items: list[NewItem] = Field(..., min_length=1, max_length=MAX_ITEMS_PER_REQUEST)

    @model_validator(mode="after")
    def _unique_ids(self) -> "AddItemsRequest":
        ids = [item.id for item in self.items]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"ids must be unique within a request; repeated: {duplicates}")
        return self
