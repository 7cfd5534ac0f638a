"""An on-disk cache of multi-vector embeddings, written shard by shard so a run can resume.

Layout::

    <cache_dir>/<model key>/<side>-<items fingerprint>/manifest.json
    <cache_dir>/<model key>/<side>-<items fingerprint>/shard-00000.safetensors   (items 0..S-1)
    ...

A folder is named by the model and by a fingerprint of the items (texts, image
paths, instructions, in order), so a corpus shared by two tasks (ViDoRe v2's
English and multilingual tasks) is encoded once, and changed data never
reads stale embeddings. The manifest records the model identity, the side
("queries" / "candidates"), the data sets that used it, and the shards written
so far. Each shard is written to a temporary name and renamed, and the manifest
is rewritten after every shard, so an interrupted run leaves only whole shards
and resumes after the last one. A shard or manifest that cannot be read raises
:class:`~metaembed.errors.InputError` naming it (delete it to re-encode).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from metaembed.errors import InputError
from metaembed.evaluation.tasks import fingerprint_items
from metaembed.model.items import Item

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_FORMAT = 1
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return repr(value)


def _parameter_digest(model: Any) -> str | None:
    """A cheap digest of the weights: the first and last 64 values of every tensor.

    Two randomly initialised models with the same config, or a fine-tune that
    changed only LoRA adapters or the Meta Tokens, must not share a cache;
    hashing every weight of a 7B model would take minutes.
    """
    parameters = getattr(model, "parameters", None)
    if not callable(parameters):
        return None
    digest = hashlib.sha256()
    count = 0
    for tensor in parameters():
        flat = tensor.detach().reshape(-1)
        for sample in (flat[:64], flat[-64:]):
            digest.update(sample.to("cpu", torch.float32).numpy().tobytes())
        count += 1
    return digest.hexdigest()[:16] if count else None


def model_identity(model: Any, name: str | None = None) -> dict[str, Any]:
    """What identifies an encoder in cache keys: a name, its config, its numbers of
    Meta Tokens and a digest of some of its weights (when it has ``parameters()``).

    ``name`` defaults to ``model.name_or_path`` or the class name.
    """
    label = name or getattr(model, "name_or_path", None) or type(model).__name__
    config = getattr(model, "config", None)
    return {
        "name": str(label),
        "config": json.loads(json.dumps(config, default=_jsonable, sort_keys=True)) if config is not None else None,
        "weights": _parameter_digest(model),
        "num_query_tokens": getattr(model, "num_query_tokens", None),
        "num_candidate_tokens": getattr(model, "num_candidate_tokens", None),
    }


def model_key(identity: dict[str, Any]) -> str:
    """A folder name for ``identity``: a readable prefix and a hash of the whole."""
    text = json.dumps(identity, sort_keys=True, default=str)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(identity["name"]).name)[:48] or "model"
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass
class EmbeddingCache:
    """The cached embeddings of one list of items for one model.

    ``encode`` takes a list of items and returns ``(n, R, D)`` float; the cache
    calls it once per missing shard of ``shard_size`` items. ``dtype`` is the
    storage type ("float16" halves the disk of float32; scoring converts back
    to float32). ``dataset`` is a label for logs and the manifest.
    """

    folder: Path
    identity: dict[str, Any]
    side: str
    fingerprint: str
    dataset: str = ""
    shard_size: int = 256
    dtype: str = "float16"
    encode_calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise InputError(f"cache dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.shard_size < 1:
            raise InputError(f"shard_size must be at least 1, got {self.shard_size}")
        # Compare identities as the manifest stores them (tuples become lists in JSON).
        self.identity = json.loads(json.dumps(self.identity, sort_keys=True, default=str))

    @classmethod
    def for_items(
        cls,
        cache_dir: str | Path,
        identity: dict[str, Any],
        side: str,
        items: Sequence[Item],
        dataset: str = "",
        **options: Any,
    ) -> "EmbeddingCache":
        """The cache of ``items`` (one side of a data set) under ``cache_dir`` for the model ``identity``."""
        fingerprint = fingerprint_items(items)
        folder = Path(cache_dir) / model_key(identity) / f"{side}-{fingerprint[:24]}"
        return cls(folder=folder, identity=identity, side=side, fingerprint=fingerprint, dataset=dataset, **options)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def _read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(
                f"cache manifest {self.manifest_path} is unreadable ({error}); delete {self.folder} to re-encode"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise InputError(
                f"cache manifest {self.manifest_path} is not a metaembed cache manifest; delete {self.folder}"
            )
        return manifest

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        partial = self.manifest_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        partial.replace(self.manifest_path)

    def _fresh_manifest(self, fingerprint: str, count: int) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "model": self.identity,
            "datasets": [self.dataset],
            "side": self.side,
            "fingerprint": fingerprint,
            "num_items": count,
            "shard_size": self.shard_size,
            "dtype": self.dtype,
            "shards": [],
        }

    def _load_shard(self, name: str, expected_rows: int) -> torch.Tensor:
        path = self.folder / name
        if not path.is_file():
            raise InputError(f"cached shard {path} listed in {self.manifest_path} is missing; delete {self.folder}")
        try:
            tensor = load_file(path)["embeddings"]
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            raise InputError(
                f"cached shard {path} is corrupt ({error}); delete it (or {self.folder}) to re-encode"
            ) from None
        if tensor.ndim != 3 or tensor.shape[0] != expected_rows:
            raise InputError(
                f"cached shard {path} holds shape {tuple(tensor.shape)}, expected {expected_rows} items; "
                f"delete {self.folder} to re-encode"
            )
        return tensor

    def cached_items(self) -> int:
        """How many of the items are already encoded in this cache."""
        manifest = self._read_manifest()
        if manifest is None or manifest["fingerprint"] != self.fingerprint or manifest["model"] != self.identity:
            return 0
        return sum(shard["stop"] - shard["start"] for shard in manifest["shards"])

    def get_or_encode(
        self,
        items: Sequence[Item],
        encode: Callable[[list[Item]], torch.Tensor],
    ) -> torch.Tensor:
        """All embeddings of ``items`` as ``(N, R, D)`` in the storage dtype, encoding
        only the shards the cache lacks (``encode`` gets one shard's items)."""
        if not items:
            raise InputError(f"nothing to encode for {self.dataset!r} ({self.side})")
        fingerprint = fingerprint_items(items)
        if fingerprint != self.fingerprint:
            raise InputError(f"the cache in {self.folder} was opened for other items than these")
        manifest = self._read_manifest()
        if manifest is not None and (
            manifest["fingerprint"] != fingerprint
            or manifest["model"] != self.identity
            or manifest["shard_size"] != self.shard_size
            or manifest["dtype"] != self.dtype
        ):
            # Another model or storage format under the same name: start over.
            for stale in self.folder.glob("shard-*.safetensors"):
                stale.unlink()
            manifest = None
        self.folder.mkdir(parents=True, exist_ok=True)
        if manifest is None:
            manifest = self._fresh_manifest(fingerprint, len(items))
            self._write_manifest(manifest)
        elif self.dataset not in manifest["datasets"]:
            manifest["datasets"].append(self.dataset)
            self._write_manifest(manifest)

        done = {shard["start"]: shard for shard in manifest["shards"]}
        if done:
            logger.info("%s: %d of %d shards cached in %s", self.side, len(done),
                        -(-len(items) // self.shard_size), self.folder)
        # Filled shard by shard: concatenating at the end would hold every shard twice.
        out: torch.Tensor | None = None
        for start in range(0, len(items), self.shard_size):
            stop = min(start + self.shard_size, len(items))
            shard = done.get(start)
            if shard is not None and shard["stop"] == stop:
                part = self._load_shard(shard["file"], stop - start)
            else:
                part = self._encode_shard(items, start, stop, encode, manifest)
            if out is None:
                out = torch.empty((len(items), *part.shape[1:]), dtype=part.dtype)
            elif part.shape[1:] != out.shape[1:]:
                raise InputError(
                    f"cached shards in {self.folder} disagree on (vectors, dim): "
                    f"{tuple(out.shape[1:])} and {tuple(part.shape[1:])}; delete the folder to re-encode"
                )
            out[start:stop] = part
        assert out is not None  # items is not empty
        return out

    def _encode_shard(
        self,
        items: Sequence[Item],
        start: int,
        stop: int,
        encode: Callable[[list[Item]], torch.Tensor],
        manifest: dict[str, Any],
    ) -> torch.Tensor:
        embeddings = encode(list(items[start:stop]))
        self.encode_calls += 1
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 3 or embeddings.shape[0] != stop - start:
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise InputError(
                f"the encoder returned {shape} for {stop - start} items; expected a (items, vectors, dim) tensor"
            )
        stored = embeddings.detach().to("cpu", _DTYPES[self.dtype]).contiguous()
        name = f"shard-{start // self.shard_size:05d}.safetensors"
        partial = self.folder / (name + ".partial")
        save_file({"embeddings": stored}, str(partial))
        partial.replace(self.folder / name)  # atomic: a crash never leaves half a shard
        manifest["shards"].append({"file": name, "start": start, "stop": stop})
        self._write_manifest(manifest)
        return stored


__all__ = ["EmbeddingCache", "model_identity", "model_key"]
