"""The HTTP API of ``metaembed serve`` as a Ray Serve application over a sharded collection.

Three kinds of processes, scaled independently::

    HTTP --> Gateway replicas (the FastAPI app of metaembed.serving, unchanged)
               |-- query items --> QueryEncoder replicas (@serve.batch: concurrent requests share a forward pass)
               '-- vectors ------> shard actors (one per shard, shared by every gateway replica)

The gateway runs :func:`metaembed.serving.create_app` on a :class:`~metaembed.retriever.Retriever`
whose model is a :class:`RemoteEncoder` (a handle to the encoder deployment) and whose index is a
:class:`~metaembed.distributed.ShardedIndex` on Ray actors, so the request and response schemas,
the API key, the status codes and the limits are those of ``metaembed serve``. The shard actors
are named after the collection (see :mod:`metaembed.distributed.actors`): every gateway replica
reaches the same actor per shard, so each shard keeps a single writer, and each replica holds a
lease on them. :func:`shutdown` stops the app and the actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ray import serve

from metaembed.budget import Budget
from metaembed.distributed.collection import Manifest
from metaembed.distributed.sharded import ShardedIndex
from metaembed.errors import IndexStateError, ShardUnavailableError
from metaembed.index import MultiVectorIndex
from metaembed.retriever import MODEL_KEY, MODEL_PATH_KEY, Retriever, load_model, recorded_location

#: Name of the Serve application (and prefix of its deployments).
APP_NAME = "metaembed"


@serve.deployment(name="QueryEncoder")
class QueryEncoder:
    """Model replicas: query items are batched across concurrent requests; candidates per request."""

    def __init__(self, model_path: str, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.01) -> None:
        self.model = load_model(model_path)
        if torch.cuda.is_available():  # a replica given num_gpus sees its GPU
            self.model.to("cuda")
        self.encode_query.set_max_batch_size(max_batch_size)
        self.encode_query.set_batch_wait_timeout_s(batch_wait_timeout_s)
        # The model injects its Meta Tokens through a hook on a shared module: one forward pass at a time.
        self._model_lock = threading.Lock()
        self.largest_batch = 0

    def spec(self) -> dict[str, Any]:
        """What the gateway needs to know of the model without loading it."""
        model = self.model
        return {"embedding_dim": int(model.embedding_dim), "num_query_tokens": int(model.num_query_tokens),
                "num_candidate_tokens": int(model.num_candidate_tokens), "supports_images": bool(model.supports_images)}

    def stats(self) -> dict[str, int]:
        """The largest number of queries encoded in one forward pass so far."""
        return {"largest_batch": self.largest_batch}

    def _encode(self, side: str, items: list[Any]) -> np.ndarray:
        with self._model_lock:
            encode = self.model.encode_queries if side == "query" else self.model.encode_candidates
            return encode(items, batch_size=len(items), show_progress=False).numpy()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def encode_query(self, items: list[Any]) -> list[np.ndarray]:
        """One query item in, its ``(R_q, D)`` fp32 embedding out; Serve groups concurrent calls into one batch."""
        self.largest_batch = max(self.largest_batch, len(items))
        return list(await asyncio.to_thread(self._encode, "query", items))

    async def encode_candidates(self, items: list[Any]) -> np.ndarray:
        """``(N, R_c, D)`` fp32 embeddings of one request's candidate items."""
        return await asyncio.to_thread(self._encode, "candidate", items)


class RemoteEncoder:
    """Stands in for a :class:`~metaembed.model.MetaEmbedModel` in the gateway: encodes on the encoder deployment."""

    def __init__(self, handle: Any, spec: dict[str, Any]) -> None:
        self.handle = handle
        self.embedding_dim = spec["embedding_dim"]
        self.num_query_tokens = spec["num_query_tokens"]
        self.num_candidate_tokens = spec["num_candidate_tokens"]
        self.supports_images = spec["supports_images"]

    def encode_queries(self, items: Sequence[Any], *, budget: int | Budget | None = None, **_: Any) -> torch.Tensor:
        """``(N, r_q, D)`` fp32: one call per item, so the encoder can batch them with other requests' items."""
        responses = [self.handle.encode_query.remote(item) for item in items]
        out = torch.from_numpy(np.stack([response.result() for response in responses]))
        keep = budget.r_q if isinstance(budget, Budget) else budget
        return out if keep is None else out[:, :keep]

    def encode_candidates(self, items: Sequence[Any], **_: Any) -> torch.Tensor:
        """``(N, R_c, D)`` fp32 embeddings of ``items``, encoded together by one replica."""
        return torch.from_numpy(np.array(self.handle.encode_candidates.remote(list(items)).result()))


class _ShardedRetriever(Retriever):
    """A retriever whose encodes may overlap: they are remote calls, batched by the encoder deployment."""

    def __init__(self, index: ShardedIndex, model: RemoteEncoder) -> None:
        super().__init__(index, model)  # type: ignore[arg-type]
        # Retriever serialises encodes because a local model cannot run two at once; the remote
        # encoder can (it serialises its own forward passes), and overlapping calls are what it batches.
        self._encode_lock = contextlib.nullcontext()


@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway:
    """The HTTP ingress: ``metaembed.serving``'s FastAPI app on a sharded collection and a remote encoder."""

    async def __init__(self, encoder: Any, collection: str, api_key: str | None, shard_options: dict[str, Any],
                       timeout: float) -> None:
        spec = await encoder.spec.remote()
        index = await asyncio.to_thread(ShardedIndex.open, collection, "ray", **shard_options)
        index.timeout = timeout
        self.retriever = _ShardedRetriever(index, RemoteEncoder(encoder, spec))
        self.api_key = api_key

    def __serve_build_asgi_app__(self) -> Any:
        from fastapi.responses import JSONResponse

        from metaembed.serving import create_app

        app = create_app(self.retriever, api_key=self.api_key)

        async def unavailable(_: Any, error: Exception) -> JSONResponse:
            # A shard restarting is the server's state, not the client's mistake: 503, try again.
            return JSONResponse(status_code=503, content={"detail": str(error)}, headers={"Retry-After": "5"})

        app.add_exception_handler(ShardUnavailableError, unavailable)
        return app


def build_app(
    collection: str | Path,
    *,
    model: str | Path | None = None,
    api_key: str | None = None,
    encoder_replicas: int = 1,
    gateway_replicas: int = 1,
    encoder_options: dict[str, Any] | None = None,
    gateway_options: dict[str, Any] | None = None,
    shard_options: dict[str, Any] | None = None,
    max_batch_size: int = 16,
    batch_wait_timeout_s: float = 0.01,
    timeout: float = 30.0,
) -> Any:
    """The Serve application for ``collection`` (pass it to ``serve.run``).

    Args:
        model: the model folder; default: the one the collection records.
        api_key: as ``metaembed serve --api-key``: required in ``X-API-Key`` except for ``GET /health``.
        encoder_replicas / gateway_replicas: replicas of each deployment (shards: one actor each).
        encoder_options / gateway_options: Ray actor options of the replicas, e.g. ``{"num_gpus": 1}``;
            the encoder default asks for one GPU when the cluster has one, one CPU otherwise.
        shard_options: :class:`~metaembed.distributed.actors.RayShards` options (``num_cpus``, ...).
        max_batch_size / batch_wait_timeout_s: how many concurrent queries one encoder forward pass
            takes, and how long it waits to fill a batch.
        timeout: seconds a search waits for a restarting shard before answering 503.
    """
    import ray

    root = Path(collection).resolve()
    manifest = Manifest.read(root)
    if model is None:
        with MultiVectorIndex.open(manifest.shard_paths(root)[0]) as first:
            model = recorded_location(first.metadata, MODEL_KEY, MODEL_PATH_KEY, root)  # relative to the collection
        if not model:
            raise IndexStateError(f"collection {root} does not record its model; pass model=")
    if encoder_options is None:
        encoder_options = {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) else {"num_cpus": 1}
    encoder = QueryEncoder.options(num_replicas=encoder_replicas, ray_actor_options=encoder_options).bind(
        str(Path(model).resolve()), max_batch_size, batch_wait_timeout_s)
    gateway = Gateway.options(num_replicas=gateway_replicas, ray_actor_options=gateway_options or {"num_cpus": 0.5})
    return gateway.bind(encoder, str(root), api_key, dict(shard_options or {}), timeout)


def run(collection: str | Path, *, host: str = "127.0.0.1", port: int = 8000, blocking: bool = False,
        **app_options: Any) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and deploy :func:`build_app` (Ray must be initialised).

    With ``blocking=True``, serve until interrupted, then :func:`shutdown`.
    """
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(collection, **app_options), name=APP_NAME, route_prefix="/")
    if not blocking:
        return
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        shutdown(collection)


def shutdown(collection: str | Path) -> None:
    """Delete the Serve app and stop the collection's shard actors (the gateways' leases go with them)."""
    from metaembed.distributed.actors import stop_shards

    root = Path(collection).resolve()
    serve.delete(APP_NAME)
    stop_shards(root, Manifest.read(root).num_shards)


__all__ = ["build_app", "run", "shutdown", "QueryEncoder", "Gateway", "RemoteEncoder", "APP_NAME"]
