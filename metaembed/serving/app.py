"""The FastAPI app: search, update and describe one index over HTTP.

``create_app`` wraps a :class:`~metaembed.retriever.Retriever`. FastAPI runs the (blocking)
endpoints in its thread pool; the retriever lets searches run in parallel with each other and with
additions (query encodes never wait behind an addition's encoding), serialises writes, and picks up
commits that other processes (``metaembed index add`` / ``delete``) make while the server runs.

Every error is JSON ``{"detail": "<one line>"}`` (request-validation errors add ``errors``, one
entry per problem) with the status documented in the OpenAPI schema:

    401  missing or wrong X-API-Key (every endpoint but GET /health, when a key is set)
    404  no item with that id
    409  POST /items of an id already in the index
    422  a malformed body: schema violations, an undecodable image, text with a lone surrogate,
         a budget beyond what the index holds, vectors of the wrong shape, a bad filter, ...
    500  the index data is damaged (IndexCorruptError: run the index checks) or an unexpected fault
    503  another process holds the index's writer lock (IndexBusyError); retry after Retry-After
    507  the disk is full (StorageFullError); the index keeps its last committed state
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from metaembed.budget import Budget
from metaembed.errors import (
    IndexBusyError,
    IndexCorruptError,
    IndexStateError,
    InputError,
    MetaEmbedError,
    StorageFullError,
)
from metaembed.retriever import Retriever
from metaembed.serving.schemas import (
    MAX_ID_CHARS,
    AddItemsRequest,
    AddItemsResponse,
    BatchSearchRequest,
    BatchSearchResponse,
    DeleteItemResponse,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    ItemResponse,
    Query,
    ReplaceItemRequest,
    ReplaceItemResponse,
    SearchOptions,
    SearchRequest,
    SearchResponse,
    filter_spec,
)

if TYPE_CHECKING:
    from metaembed.index import MultiVectorIndex, SearchResult
    from metaembed.model import MetaEmbedModel

#: The Swagger UI files ``/docs`` loads, with their media types (only these are served).
_DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}

logger = logging.getLogger(__name__)

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

_STATUS_TEXT = {
    400: "The body is not UTF-8 JSON.",
    401: "Missing or wrong X-API-Key header (when the server has a key).",
    404: "No item with this id.",
    409: "An id is already in the index, or the index refused the change.",
    422: "The request is malformed; `detail` says what to change.",
    500: "The index data is damaged (or an unexpected fault); `detail` names the file.",
    503: "Another process is writing the index; retry after `Retry-After` seconds.",
    507: "The disk is full; nothing was written.",
}


def _documented(*codes: int) -> dict[Union[int, str], dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _STATUS_TEXT[code]} for code in codes}


_READ = (400, 401, 422, 500)
_WRITE = (400, 401, 409, 422, 500, 503, 507)


class SafeJSONResponse(JSONResponse):
    """JSON that always renders: text that is not valid Unicode (a lone surrogate stored through the
    Python API) is sent \\u-escaped instead of failing the response."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, detail: str, **extra: Any) -> SafeJSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return SafeJSONResponse(status_code=status, content={"detail": detail, **extra}, headers=headers)


def _validation_summary(errors: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A one-line message and the errors without their ``input``/``ctx`` (which may hold values
    JSON cannot carry, such as ``Infinity``, or megabytes of base64)."""
    cleaned = [
        {"loc": [p if isinstance(p, (str, int)) else str(p) for p in e.get("loc", ())],
         "msg": str(e.get("msg", "")).removeprefix("Value error, "), "type": str(e.get("type", ""))}
        for e in errors
    ]
    parts = [f"{'.'.join(str(p) for p in e['loc'][1:] or e['loc'])}: {e['msg']}" for e in cleaned[:3]]
    more = f" (and {len(cleaned) - 3} more)" if len(cleaned) > 3 else ""
    return "; ".join(parts) + more, cleaned


def _number_pattern(largest: int) -> str:
    """A regex for the integers 1..largest (leading zeros allowed)."""
    return "0*(?:" + "|".join(str(n) for n in range(largest, 0, -1)) + ")"


def _fit_schema_to_index(schema: dict[str, Any], retriever: Retriever) -> None:
    """State this index's limits in the OpenAPI schema, so that every schema-valid request is one
    the server accepts: budgets up to (max r_q, max r_c), query vectors of all r_q rows of dimension D."""
    budget = rf"^\s*{_number_pattern(retriever.max_r_q)}\s*,\s*{_number_pattern(retriever.max_r_c)}\s*$"
    dim = int(retriever.index.dim)
    for component in schema.get("components", {}).get("schemas", {}).values():
        properties = component.get("properties", {})
        if "budget" in properties:
            properties["budget"]["pattern"] = budget
        if "vectors" in properties and properties["vectors"].get("type") == "array":
            properties["vectors"]["minItems"] = retriever.max_r_q
            properties["vectors"]["items"].update(minItems=dim, maxItems=dim)


def _open_retriever(
    index_path_or_index: Union[str, Path, "MultiVectorIndex", Retriever],
    model: Union["MetaEmbedModel", str, Path, None],
) -> Retriever:
    if isinstance(index_path_or_index, Retriever):
        return index_path_or_index
    if isinstance(index_path_or_index, (str, Path)):
        return Retriever.open(index_path_or_index, model)
    if model is None:
        recorded = index_path_or_index.metadata.get("model")
        if not recorded:
            raise IndexStateError("the index does not record its model; pass model=")
        from metaembed.retriever import resolve_reference

        # recorded relative to the index folder (or as a built-in name)
        model = resolve_reference(str(recorded), index_path_or_index.path or ".")
    if isinstance(model, (str, Path)):
        from metaembed.retriever import load_model

        model = load_model(model)
    return Retriever(index_path_or_index, model)


def create_app(
    index_path_or_index: Union[str, Path, "MultiVectorIndex", Retriever],
    model: Union["MetaEmbedModel", str, Path, None] = None,
    api_key: Optional[str] = None,
) -> FastAPI:
    """Build the HTTP app for one index.

    ``index_path_or_index`` is an index folder, an open ``MultiVectorIndex`` or a ``Retriever``.
    ``model`` defaults to the model folder recorded in the index metadata. With ``api_key`` set,
    every endpoint except ``GET /health`` (``/docs`` and ``/openapi.json`` included) requires the
    header ``X-API-Key: <api_key>`` (401 otherwise).
    """
    retriever = _open_retriever(index_path_or_index, model)
    expected_key = None if api_key is None else api_key.encode("utf-8")

    def check_key(key: Optional[str] = Security(_api_key_header)) -> None:
        if expected_key is None:
            return
        # Header values arrive decoded as latin-1, so this recovers the bytes the client sent.
        if key is None or not secrets.compare_digest(key.encode("latin-1", "replace"), expected_key):
            raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")

    app = FastAPI(
        title="metaembed",
        summary="MetaEmbed multi-vector search at a budget r_q,r_c chosen per request.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=SafeJSONResponse,
    )
    app.state.retriever = retriever
    guarded = [Depends(check_key)]
    generic_openapi = app.openapi

    def openapi_for_this_index() -> dict[str, Any]:
        if app.openapi_schema is None:
            _fit_schema_to_index(generic_openapi(), retriever)
        return app.openapi_schema

    app.openapi = openapi_for_this_index  # type: ignore[method-assign]

    # --- errors ---------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        detail, errors = _validation_summary(error.errors())
        return _error(422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)  # also the router's own 404 / 405
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        response = _error(error.status_code, str(error.detail))
        response.headers.update(error.headers or {})
        if error.status_code == 405:
            # the router names only the first route of the path; a path served by several lists all
            allowed = {method for route in app.router.routes if isinstance(route, Route)
                       and route.matches(request.scope)[0] is not Match.NONE for method in route.methods or ()}
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

    @app.exception_handler(MetaEmbedError)
    async def _user_error(_: Request, error: MetaEmbedError) -> JSONResponse:
        return _error(422, str(error))

    @app.exception_handler(IndexStateError)
    async def _index_refused(_: Request, error: IndexStateError) -> JSONResponse:
        return _error(409, str(error))

    @app.exception_handler(IndexBusyError)
    async def _index_busy(_: Request, error: IndexBusyError) -> JSONResponse:
        return _error(503, f"the index is busy: {error}")

    @app.exception_handler(StorageFullError)
    async def _disk_full(_: Request, error: StorageFullError) -> JSONResponse:
        return _error(507, f"not enough disk space: {error}")

    @app.exception_handler(IndexCorruptError)
    async def _index_damaged(_: Request, error: IndexCorruptError) -> JSONResponse:
        logger.error("index damaged: %s", error)
        return _error(500, f"the index data is damaged: {error}")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _error(500, f"internal error ({type(error).__name__}); see the server log")

    # --- description ----------------------------------------------------------------------------
    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    def docs() -> HTMLResponse:
        # Swagger UI's script, style and icon are served from here, not a CDN: /docs works offline.
        return get_swagger_ui_html(openapi_url="/openapi.json", title="metaembed API",
                                   swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                                   swagger_favicon_url="/docs/favicon-32x32.png")

    @app.get("/docs/{asset}", include_in_schema=False)
    def docs_asset(asset: str) -> FileResponse:
        """One of Swagger UI's files (the swagger-ui-bundle-v2 package's copy); 404 for anything else."""
        from swagger_ui_bundle import swagger_ui_path

        if asset not in _DOCS_ASSETS:
            raise HTTPException(status_code=404, detail=f"no docs asset {asset!r}")
        return FileResponse(Path(str(swagger_ui_path)) / asset, media_type=_DOCS_ASSETS[asset])

    @app.get("/health", response_model=HealthResponse, responses=_documented(500))
    def health() -> dict[str, Any]:
        """Liveness: 200 while the process serves; reports the number of items."""
        return {"status": "ok", "size": len(retriever)}

    @app.get("/info", response_model=InfoResponse, dependencies=guarded, responses=_documented(401, 500))
    def info() -> dict[str, Any]:
        """Model folder, size, available budgets and memory / FLOPs per budget."""
        return retriever.info()

    # --- search ---------------------------------------------------------------------------------
    def run_search(queries: list[Query], options: SearchOptions) -> tuple[str, list[list[SearchResult]]]:
        import torch

        # read at the edge (the schema has checked that it parses), checked once by the retriever
        budget = Budget.parse(options.budget) if options.budget is not None else retriever.default_budget
        for number, query in enumerate(queries):
            if query.vectors is not None and len(query.vectors) < retriever.max_r_q:
                raise InputError(f"query {number}: send all {retriever.max_r_q} query vectors the model makes "
                                 f"(got {len(query.vectors)}); the budget picks the first r_q")
        prepared = [
            torch.tensor(q.vectors, dtype=torch.float32) if q.vectors is not None else q.to_item() for q in queries
        ]
        hits = retriever.search_many(
            prepared, k=options.k, budget=budget, mode=options.mode, filter=filter_spec(options.filter),
            shortlist=options.shortlist,
        )
        return str(budget), hits

    @app.post("/search", response_model=SearchResponse, dependencies=guarded, responses=_documented(*_READ))
    def search(request: SearchRequest) -> dict[str, Any]:
        """Search with text and/or a base64 image, or precomputed query vectors, at a budget; returns
        the top ``k`` hits among the items that match ``filter``."""
        budget, [hits] = run_search([request], request)
        return {"budget": budget, "results": [h.as_dict() for h in hits]}

    @app.post("/search/batch", response_model=BatchSearchResponse, dependencies=guarded,
              responses=_documented(*_READ))
    def search_batch(request: BatchSearchRequest) -> dict[str, Any]:
        """Several queries at once (encoded together): one list of hits per query, in order."""
        budget, hits = run_search(request.queries, request)
        return {"budget": budget, "results": [[h.as_dict() for h in row] for row in hits]}

    # --- items ----------------------------------------------------------------------------------
    item_id_param = PathParam(..., min_length=1, max_length=MAX_ID_CHARS,
                              description="The item's id; slashes and '#' (percent-encoded) are allowed.")

    @app.post("/items", status_code=201, response_model=AddItemsResponse, dependencies=guarded,
              responses=_documented(*_WRITE))
    def add_items(request: AddItemsRequest) -> dict[str, Any]:
        """Encode and add items; every id must be new and appear once (409 otherwise, and nothing is added)."""
        ids = [item.id for item in request.items]
        repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
        if repeated:
            raise HTTPException(status_code=409, detail=f"ids repeated within the request: {repeated[:5]}")
        retriever.add(
            ids,
            [item.to_item() for item in request.items],
            [item.payload for item in request.items],
        )
        return {"added": len(request.items), "size": len(retriever)}

    @app.put("/items/{item_id:path}", response_model=ReplaceItemResponse, dependencies=guarded,
             responses={201: {"model": ReplaceItemResponse, "description": "The id was new: the item was created."},
                        **_documented(*_WRITE)})
    def replace_item(request: ReplaceItemRequest, response: Response, item_id: str = item_id_param) -> dict[str, Any]:
        """Store the item under ``item_id``, replacing its vectors and payload if it exists (200)
        or creating it (201), in one commit."""
        replaced = retriever.upsert_items([item_id], [request.to_item()], [request.payload])
        response.status_code = 200 if replaced else 201
        return {"id": item_id, "created": not replaced, "size": len(retriever)}

    @app.get("/items/{item_id:path}", response_model=ItemResponse, response_model_exclude_none=True,
             dependencies=guarded, responses=_documented(401, 404, 422, 500))
    def get_item(item_id: str = item_id_param, vectors: bool = False) -> dict[str, Any]:
        """The item's payload (and, with ``?vectors=true``, its stored vectors)."""
        found = retriever.get(item_id, vectors=vectors)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no item with id {item_id!r}")
        return found

    @app.delete("/items/{item_id:path}", response_model=DeleteItemResponse, dependencies=guarded,
                responses=_documented(401, 404, 422, 500, 503, 507))
    def delete_item(item_id: str = item_id_param) -> dict[str, Any]:
        """Remove one item by id (404 when it is not in the index)."""
        missing = HTTPException(status_code=404, detail=f"no item with id {item_id!r}")
        if not retriever.contains(item_id):
            raise missing
        try:
            retriever.delete([item_id])
        except IndexStateError:
            if retriever.contains(item_id):
                raise
            raise missing from None  # deleted by another request meanwhile
        return {"deleted": item_id, "size": len(retriever)}

    return app
