"""Distributed encoding: a folder or JSONL into a sharded collection, with a pool of model replicas on Ray Data.

The pipeline (:func:`build_collection`, ``metaembed index build --ray``)::

    records (ids + lazy loaders)  --Ray Data-->  load + encode: _Encoder actors, one model replica each
                                                 (one GPU each where the cluster has GPUs, CPU otherwise)
                                  --Ray Data-->  write: _Writer, which routes each batch to the shard actors
    driver: counts written items for the progress bar

Records come from :func:`metaembed.ingest.iter_records`, so a folder (images, PDFs page by page,
text) or a JSONL reads exactly as in ``metaembed index build``; files are opened or rendered by the
encoder replicas, not by the driver. The build is resumable like the single-process one: ids
already in the collection are skipped before anything is encoded, and each batch is stored with
:meth:`ShardedIndex.add_missing`, so a batch that Ray Data retries is never stored twice.
Embeddings travel from the encoders to the shard actors through Ray's object store, not through
the driver.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from metaembed.budget import BudgetLike, ladder_within
from metaembed.errors import IndexStateError, InputError
from metaembed.distributed.actors import RayShards
from metaembed.distributed.collection import is_collection
from metaembed.distributed.sharded import ShardedIndex
from metaembed.ingest import iter_records
from metaembed.retriever import MODEL_KEY, MODEL_PATH_KEY, index_metadata, load_model, recorded_location


def connect(address: str | None = None, **init_options: Any) -> bool:
    """Connect to the Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``), or start a local one
    (``None`` or ``"local"``).

    Does nothing if Ray is already initialised in this process. Returns whether this call
    started the connection (so the caller knows whether to ``ray.shutdown()``).
    """
    try:
        import ray
    except ImportError:
        raise InputError('Ray is not installed: pip install "metaembed[ray]"') from None
    if ray.is_initialized():
        return False
    ray.init(address=None if address in (None, "local") else address, **init_options)
    return True


@contextlib.contextmanager
def connected(address: str | None = None, **init_options: Any) -> Iterator[None]:
    """:func:`connect` for the duration of a ``with`` block; disconnects (and stops a local cluster) if it connected."""
    started = connect(address, **init_options)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _model_spec(model_path: str) -> dict[str, int]:
    model = load_model(model_path)
    return {"dim": int(model.embedding_dim), "num_query_tokens": int(model.num_query_tokens),
            "num_candidate_tokens": int(model.num_candidate_tokens), "supports_images": bool(model.supports_images)}


class _Encoder:
    """One model replica (a Ray Data actor): loads and encodes a batch of records as candidates."""

    def __init__(self, model_path: str, batch_size: int) -> None:
        import torch

        self.model = load_model(model_path)
        if torch.cuda.is_available():  # Ray gives the actor its GPU through CUDA_VISIBLE_DEVICES
            self.model.to("cuda")
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = list(batch["record"])
        embeddings = self.model.encode_candidates([r.item() for r in records], batch_size=self.batch_size,
                                                  show_progress=False)
        return {"id": np.array([r.id for r in records], dtype=object),
                "embeddings": embeddings.numpy(),
                "payload": np.array([json.dumps(r.payload) for r in records], dtype=object)}


class _Writer:
    """Routes encoded batches to the shard actors, storing only ids not yet present.

    It is given the driver's actor handles rather than opening the collection by name: the
    driver's lease keeps the actors alive for the whole build, and the writer takes none of its
    own (Ray Data ends it without a ``close``).
    """

    def __init__(self, root: str, handles: list[Any]) -> None:
        self.collection = ShardedIndex.open(root, backend=RayShards.sharing(handles))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["id"]]
        added = self.collection.add_missing(ids, batch["embeddings"], [json.loads(p) for p in batch["payload"]])
        return {"seen": np.array([len(ids)]), "added": np.array([added])}


def build_collection(
    model: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    num_shards: int | None = None,
    budgets: str | Iterable[BudgetLike] | None = None,
    batch_size: int = 16,
    dtype: str = "float16",
    replicas: int | None = None,
    shard_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> ShardedIndex:
    """Encode every record of ``source`` into the sharded collection at ``out`` on the connected Ray cluster.

    Creates the collection (``num_shards`` shards, recording the model folder and ``budgets``
    ladder like :func:`metaembed.retriever.build_index`) or resumes it: ids already stored are
    skipped. ``replicas`` model replicas encode in parallel (default: one per GPU of the
    cluster, else one per two CPUs); ``batch_size`` records go through a replica at a time.
    ``shard_options`` are :class:`~metaembed.distributed.actors.RayShards` options (``num_cpus``, ...).
    The collection folder must be reachable at the same path from every node.

    Returns the collection, open on its shard actors.
    """
    import logging

    import ray
    from tqdm.auto import tqdm

    if not ray.is_initialized():
        raise InputError("Ray is not initialised: call metaembed.distributed.build.connect(address) first")
    records = list(iter_records(source))
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise InputError(f"id {record.id!r} appears twice in the input")
        seen.add(record.id)
    out, model_path = Path(out), str(Path(model).resolve())
    shard_options = dict(shard_options or {})
    if is_collection(out):
        collection = ShardedIndex.open(out, backend="ray", **shard_options)
        recorded = recorded_location(collection.metadata, MODEL_KEY, MODEL_PATH_KEY, out)
        if recorded and Path(recorded).resolve() != Path(model_path):
            raise IndexStateError(f"collection {out} was built with model {recorded}, not {model_path}; "
                                  "use a new --out or the same model")
        if num_shards is not None and num_shards != collection.num_shards:
            raise IndexStateError(f"collection {out} has {collection.num_shards} shards, not {num_shards}")
    else:
        if num_shards is None:
            raise InputError("give the number of shards of the new collection (--shards)")
        spec = ray.get(ray.remote(_model_spec).remote(model_path))  # the driver never loads the model
        ladder = ladder_within(budgets, spec["num_query_tokens"], spec["num_candidate_tokens"])
        metadata = index_metadata(model_path, out, ladder, spec["num_query_tokens"], spec["supports_images"], source)
        collection = ShardedIndex.create(out, num_shards=num_shards, dim=spec["dim"],
                                         num_vectors=spec["num_candidate_tokens"], dtype=dtype, metadata=metadata,
                                         backend="ray", **shard_options)
    todo = [r for r, here in zip(records, collection.present([r.id for r in records])) if not here]
    if not todo:
        return collection
    # The bar below is the build's progress; Ray Data's own per-operator bars and logs would bury it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    replicas, cpus_each = _encoder_pool(replicas, gpus, ray.available_resources().get("CPU", 0.0))
    encoded = ray.data.from_items([{"record": r} for r in todo]).map_batches(
        _Encoder, fn_constructor_kwargs={"model_path": model_path, "batch_size": batch_size},
        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=replicas),
        num_gpus=1 if gpus else 0, num_cpus=cpus_each,
        batch_format="numpy",
    )
    written = encoded.map_batches(
        _Writer, fn_constructor_kwargs={"root": str(out), "handles": collection.backend.handles},
        batch_size=None, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0, batch_format="numpy",
    )
    with tqdm(total=len(todo), unit="item", desc="indexing", disable=not progress) as bar:
        for row in written.iter_rows():
            bar.update(int(row["seen"]))
    return collection


def _encoder_pool(replicas: int | None, gpus: int, free_cpus: float) -> tuple[int, float]:
    """How many encoder replicas, and the CPUs each reserves: one GPU each (no CPU reserved) where the
    cluster has GPUs, else one CPU each, or an equal share of what the shard actors leave free.

    Ray Data would wait for ever for replicas that cannot be placed, so that is refused here.

    >>> _encoder_pool(None, 0, 8.0), _encoder_pool(None, 4, 0.0), _encoder_pool(3, 0, 1.5)
    ((4, 1.0), (4, 0.0), (3, 0.5))
    """
    if gpus:
        return replicas or gpus, 0.0
    replicas = replicas or max(1, int(free_cpus) // 2)
    if free_cpus < 0.1 * replicas:
        raise InputError(
            f"the cluster has {free_cpus:g} CPUs free for {replicas} encoder replicas (the shard actors reserve "
            "the rest): add nodes, use fewer shards, or give the shards a smaller num_cpus")
    return replicas, min(1.0, free_cpus / replicas)


__all__ = ["build_collection", "connect", "connected"]
