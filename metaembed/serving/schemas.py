"""Request and response bodies of the HTTP service, validated by pydantic.

Limits are deliberate: a request that would make the server hold a huge image, a huge batch or an
absurd ``k`` in memory is refused with a 422 before any work is done. So is anything JSON can
carry but the index cannot store or the model cannot read: a lone surrogate (``"\\ud800"``) in any
string, ``NaN``/``Infinity`` in query vectors.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Annotated, Any, Literal, Optional, Union

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from metaembed.budget import DEFAULT_SHORTLIST
from metaembed.index import search_modes

MAX_TEXT_CHARS = 8_192
#: Base64 text of at most ~12 MB, i.e. an image file of at most ~9 MB.
MAX_IMAGE_B64_CHARS = 12_000_000
#: An image larger than this many pixels is refused (a decompression bomb guard).
MAX_IMAGE_PIXELS = 40_000_000
MAX_K = 1_000
#: The largest first-stage shortlist a request may ask for (each is re-ranked exactly).
MAX_SHORTLIST = 100_000
MAX_ITEMS_PER_REQUEST = 256
MAX_QUERIES_PER_REQUEST = 64
MAX_ID_CHARS = 512
#: Query vectors: at most this many per query and this dimension (far above any MetaEmbed model).
MAX_QUERY_VECTORS = 256
MAX_VECTOR_DIM = 8_192
MAX_FILTER_FIELDS = 32
MAX_FILTER_VALUES = 1_024

#: The OpenAPI ``format`` of base64 image fields (a PNG/JPEG/WebP/GIF file, aspect ratio below 200).
IMAGE_FORMAT = "base64-image"
#: "r_q,r_c" in ASCII digits (checked against the index's limits by the service).
BUDGET_PATTERN = r"^\s*[0-9]+\s*,\s*[0-9]+\s*$"


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
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError):
        raise ValueError("image could not be decoded: send a PNG, JPEG, WebP or GIF file as base64") from None


def _lone_surrogate(value: Any, where: str) -> Optional[str]:
    """Where in a raw JSON value a string holds a lone surrogate (``None`` if nowhere)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return f"{where or 'the body'} holds a lone surrogate ({ascii(value[error.start])[1:-1]}) at character {error.start}"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, inner in items:
        found = _lone_surrogate(key, f"a key of {where or 'the body'}") or _lone_surrogate(
            inner, f"{where}.{key}" if where else str(key)
        )
        if found:
            return found
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Body(_Strict):
    """A whole request body: refuses strings that are not valid Unicode anywhere inside it."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        found = _lone_surrogate(data, "")
        if found:
            raise ValueError(f"{found}: send valid Unicode (UTF-8) text")
        return data


#: Query vectors are L2-normalised; a bound keeps every MaxSim score finite in fp32.
MAX_VECTOR_VALUE = 1e6
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
VectorValue = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_VECTOR_VALUE, le=MAX_VECTOR_VALUE)]
FilterScalar = Union[Annotated[str, Field(max_length=MAX_TEXT_CHARS)], bool, int, FiniteFloat, None]


class InFilter(_Strict):
    """``{"in": [values]}``: the field holds one of the values."""

    in_: list[FilterScalar] = Field(..., alias="in", max_length=MAX_FILTER_VALUES)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


PayloadFilterBody = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)], Union[InFilter, FilterScalar]],
    Field(
        max_length=MAX_FILTER_FIELDS,
        description="Only items whose payload matches compete, before top-k: {field: value} for equality, "
        "{field: {\"in\": [values]}} for one of several; every field must match. Values are compared "
        "with their JSON type (true never equals 1).",
        examples=[{"lang": "en", "year": {"in": [2023, 2024]}}],
    ),
]


def filter_spec(body: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The request's filter as :class:`metaembed.index.filters.PayloadFilter` reads it."""
    if body is None:
        return None
    return {field: {"in": list(value.in_)} if isinstance(value, InFilter) else value for field, value in body.items()}


def _no_default(schema: dict[str, Any], **extra: Any) -> None:
    """Drop ``default: null`` from a field's schema: the field is left out, never sent as null."""
    schema.pop("default", None)
    schema.update(extra)


def _present(*fields: str) -> list[dict[str, Any]]:
    return [{"required": [field]} for field in fields]


class Content(_Strict):
    """What to embed: text, an image, or both. A field is left out rather than sent as null."""

    # Typed without None: a field is left out, never sent as null (pydantic does not validate defaults).
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS, pattern=r"\S")] = Field(  # type: ignore[assignment]
        None, description="Text of the item (not blank).", json_schema_extra=_no_default
    )
    image: Annotated[str, Field(max_length=MAX_IMAGE_B64_CHARS)] = Field(  # type: ignore[assignment]
        None, description="An image file encoded as base64 (or a data: URL).",
        json_schema_extra=lambda schema: _no_default(schema, contentEncoding="base64", contentMediaType="image/*",
                                                  format=IMAGE_FORMAT),
    )

    @field_validator("image")
    @classmethod
    def _image_decodes(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            decode_image(value)  # raises with a clear message; the decoded image is rebuilt later
        return value

    def has_content(self) -> bool:
        return self.text is not None or self.image is not None

    def to_item(self) -> dict[str, Any]:
        """The item dict that :func:`metaembed.model.items.to_item` understands."""
        item: dict[str, Any] = {}
        if self.text is not None:
            item["text"] = self.text
        if self.image is not None:
            item["image"] = decode_image(self.image)
        return item


class Query(Content):
    """One query: text and/or an image to encode, or precomputed query ``vectors``."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"anyOf": _present("text", "image"), "not": {"required": ["vectors"]}},
        {"required": ["vectors"], "not": {"anyOf": _present("text", "image")}},
    ]})

    vectors: Annotated[
        list[Annotated[list[VectorValue], Field(min_length=1, max_length=MAX_VECTOR_DIM)]],
        Field(min_length=1, max_length=MAX_QUERY_VECTORS),
    ] = Field(  # type: ignore[assignment]
        None,
        description="Precomputed query embedding (R_q, D), e.g. from 'metaembed encode' or "
        "MetaEmbedModel.encode_queries; its first r_q rows are used. Instead of text/image.",
        json_schema_extra=_no_default,
    )

    @model_validator(mode="after")
    def _one_kind(self) -> "Query":
        if self.vectors is not None:
            if self.has_content():
                raise ValueError("give either 'vectors' or 'text'/'image', not both")
            if len({len(row) for row in self.vectors}) != 1:
                raise ValueError("every row of 'vectors' must have the same length (the dimension D)")
        elif not self.has_content():
            raise ValueError("give 'text', 'image' or both (or 'vectors')")
        return self


class SearchOptions(_Body):
    k: int = Field(10, ge=1, le=MAX_K, description="How many results to return (per query).")
    budget: Optional[str] = Field(
        None,
        json_schema_extra={"pattern": BUDGET_PATTERN},
        description="'r_q,r_c', e.g. '4,8'. Default: the largest budget recorded in the index.",
    )
    mode: Literal[tuple(search_modes())] = Field(  # type: ignore[valid-type]
        "exact",
        description="'exact': MaxSim over every item; 'coarse': every item at budget 1,1, the best 'shortlist' "
        "re-ranked exactly; 'ann': the shortlist from a FAISS HNSW graph (sub-linear), re-ranked exactly.",
    )
    shortlist: int = Field(
        DEFAULT_SHORTLIST, ge=1, le=MAX_SHORTLIST,
        description="'coarse' / 'ann': candidates the first stage hands to the exact re-rank (at least 'k' are "
        "kept); fewer is faster, more is closer to exact search.",
    )
    filter: Optional[PayloadFilterBody] = None

    @field_validator("budget")
    @classmethod
    def _budget_reads(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.match(BUDGET_PATTERN, value):
            raise ValueError(f"cannot read budget {value!r}: write it as 'r_q,r_c', for example '4,8'")
        return value


class SearchRequest(SearchOptions, Query):
    """``POST /search``: one query, how many results, at which budget, in which mode, with which filter."""


class BatchSearchRequest(SearchOptions):
    """``POST /search/batch``: several queries sharing ``k``, ``budget``, ``mode`` and ``filter``."""

    queries: list[Query] = Field(..., min_length=1, max_length=MAX_QUERIES_PER_REQUEST)


class SearchHit(BaseModel):
    rank: int
    id: str
    score: float
    payload: dict[str, Any]


class SearchResponse(BaseModel):
    budget: str
    results: list[SearchHit]


class BatchSearchResponse(BaseModel):
    budget: str
    results: list[list[SearchHit]] = Field(..., description="One list of hits per query, in order.")


class ItemBody(Content):
    model_config = ConfigDict(json_schema_extra={"anyOf": _present("text", "image")})

    payload: dict[str, Any] = Field(default_factory=dict, description="Stored with the item, returned with hits.")

    @model_validator(mode="after")
    def _not_empty(self) -> "ItemBody":
        if not self.has_content():
            raise ValueError("give 'text', 'image' or both")
        return self


class NewItem(ItemBody):
    """One item of ``POST /items``: a unique id, its content and an optional JSON payload."""

    id: str = Field(..., min_length=1, max_length=MAX_ID_CHARS)


class AddItemsRequest(_Body):
    """``POST /items``: new items; an id repeated within the request conflicts like an id already stored (409)."""

    items: list[NewItem] = Field(..., min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class ReplaceItemRequest(ItemBody, _Body):
    """``PUT /items/{id}``: the item's new content and payload (it is created if absent)."""


class AddItemsResponse(BaseModel):
    added: int
    size: int


class ReplaceItemResponse(BaseModel):
    id: str
    created: bool = Field(..., description="True if the id was new (201), false if it was replaced (200).")
    size: int


class DeleteItemResponse(BaseModel):
    deleted: str
    size: int


class ItemResponse(BaseModel):
    id: str
    payload: dict[str, Any]
    vectors: Optional[list[list[float]]] = Field(
        None, description="The stored (num_vectors, D) vectors, with ?vectors=true."
    )


class BudgetCost(BaseModel):
    budget: str
    memory_bytes: int
    flops_per_query: int


class InfoResponse(BaseModel):
    model: str
    size: int
    shards: int = Field(1, description="shards of a sharded collection (1 for one index)")
    dim: int
    max_budget: str
    budgets: list[str]
    per_budget: list[BudgetCost]
    supports_images: bool


class HealthResponse(BaseModel):
    status: Literal["ok"]
    size: int


class ErrorDetail(BaseModel):
    loc: list[Union[str, int]]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error: a one-line ``detail``; request-validation errors also list each problem in ``errors``."""

    detail: str
    errors: Optional[list[ErrorDetail]] = None
