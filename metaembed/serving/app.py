"""The FastAPI app: search, update and describe one index over HTTP.

``create_app`` wraps a :class:`~metaembed.retriever.Retriever`, which serialises index reads and
writes with a lock while encoding runs in parallel, so concurrent searches and additions are safe.
FastAPI runs the (blocking) endpoints in its thread pool.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from metaembed.budget import Budget
from metaembed.errors import IndexStateError, MetaEmbedError
from metaembed.retriever import Retriever
from metaembed.serving.schemas import AddItemsRequest, SearchRequest, SearchResponse

if TYPE_CHECKING:
    from metaembed.index import MultiVectorIndex
    from metaembed.model import MetaEmbedModel

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def create_app(
    index_path_or_index: Union[str, Path, "MultiVectorIndex", Retriever],
    model: Union["MetaEmbedModel", str, Path, None] = None,
    api_key: Optional[str] = None,
) -> FastAPI:
    """Build the HTTP app for one index.

    ``index_path_or_index`` is an index folder, an open ``MultiVectorIndex`` or a ``Retriever``.
    ``model`` defaults to the model folder recorded in the index metadata. With ``api_key`` set,
    every endpoint except ``GET /health`` requires the header ``X-API-Key: <api_key>`` (401
    otherwise).
    """
    if isinstance(index_path_or_index, Retriever):
        retriever = index_path_or_index
    elif isinstance(index_path_or_index, (str, Path)):
        retriever = Retriever.open(index_path_or_index, model)
    else:
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
        retriever = Retriever(index_path_or_index, model)

    def check_key(key: Optional[str] = Security(_api_key_header)) -> None:
        if api_key is not None and (key is None or not secrets.compare_digest(key, api_key)):
            raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")

    app = FastAPI(
        title="metaembed",
        summary="MetaEmbed multi-vector search at a budget r_q,r_c chosen per request.",
    )
    app.state.retriever = retriever
    guarded = [Depends(check_key)]

    @app.exception_handler(IndexStateError)
    async def _index_state(_: Request, error: IndexStateError) -> JSONResponse:
        # Unknown ids are 404, every other inconsistency (duplicates, shapes) a conflict.
        status = 404 if "not in the index" in str(error) else 409
        return JSONResponse(status_code=status, content={"detail": str(error)})

    @app.exception_handler(MetaEmbedError)
    async def _user_error(_: Request, error: MetaEmbedError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(error)})

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness: always 200 while the process serves; reports the number of items."""
        return {"status": "ok", "size": len(retriever)}

    @app.get("/info", dependencies=guarded)
    def info() -> dict[str, Any]:
        """Model folder, size, available budgets and memory / FLOPs per budget."""
        return retriever.info()

    @app.post("/search", response_model=SearchResponse, dependencies=guarded)
    def search(request: SearchRequest) -> dict[str, Any]:
        """Search with text and/or a base64 image at a budget; returns the top ``k`` hits."""
        # read at the edge (the schema has checked that it parses), checked once by the retriever
        budget = Budget.parse(request.budget) if request.budget is not None else retriever.default_budget
        hits = retriever.search(request.to_item(), k=request.k, budget=budget, mode=request.mode)
        return {"budget": str(budget), "results": [h.as_dict() for h in hits]}

    @app.post("/items", status_code=201, dependencies=guarded)
    def add_items(request: AddItemsRequest) -> dict[str, Any]:
        """Encode and add items; every id must be new (409 otherwise, and nothing is added)."""
        present = [item.id for item in request.items if retriever.contains(item.id)]
        if present:
            raise HTTPException(status_code=409, detail=f"ids already in the index: {present}")
        retriever.add(
            [item.id for item in request.items],
            [item.to_item() for item in request.items],
            [item.payload for item in request.items],
        )
        return {"added": len(request.items), "size": len(retriever)}

    @app.delete("/items/{item_id:path}", dependencies=guarded)
    def delete_item(item_id: str) -> dict[str, Any]:
        """Remove one item by id (404 when it is not in the index)."""
        if not retriever.contains(item_id):
            raise HTTPException(status_code=404, detail=f"no item with id {item_id!r}")
        retriever.delete([item_id])
        return {"deleted": item_id, "size": len(retriever)}

    return app
