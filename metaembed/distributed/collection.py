"""A sharded collection on disk: S ordinary index folders under one folder, and a small manifest.

Layout::

    <collection>/
      collection.json     format, number of shards, placement rule, shard folder names
      shard-0000/         an ordinary MultiVectorIndex folder (catalog.sqlite + segments)
      shard-0001/
      ...

Each shard keeps its own crash safety (see :mod:`metaembed.index.store`). The manifest is
written last, to a temporary file that is fsynced and renamed, so a folder either holds a
whole collection or is not recognised as one. Every shard carries the collection's
configuration and metadata, so one shard folder also opens on its own as an index.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaembed.errors import IndexStateError
from metaembed.distributed.placement import PLACEMENT

MANIFEST_NAME = "collection.json"
FORMAT_NAME = "metaembed-sharded-collection"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """What ``collection.json`` records: the shard folders (relative names) and the placement rule."""

    shards: tuple[str, ...]
    placement: str = PLACEMENT

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def shard_paths(self, root: Path) -> list[Path]:
        return [root / name for name in self.shards]

    def write(self, root: Path) -> None:
        """Write atomically: a temporary file, fsynced, renamed over ``collection.json``."""
        data = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "num_shards": self.num_shards,
            "placement": self.placement,
            "shards": list(self.shards),
        }
        tmp = root / f".{MANIFEST_NAME}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, root / MANIFEST_NAME)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @classmethod
    def read(cls, root: Path) -> "Manifest":
        """Read ``root/collection.json``; :class:`IndexStateError` naming what is wrong."""
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise IndexStateError(f"{str(root)!r} is not a sharded collection: it has no {MANIFEST_NAME}")
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise IndexStateError(f"{str(path)!r} is unreadable: {error}") from None
        if data.get("format") != FORMAT_NAME:
            raise IndexStateError(f"{str(path)!r} is not a metaembed collection manifest")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise IndexStateError(
                f"collection {str(root)!r} has format version {data['format_version']}; "
                f"this metaembed reads up to {FORMAT_VERSION}"
            )
        if data.get("placement") != PLACEMENT:
            raise IndexStateError(
                f"collection {str(root)!r} places ids by {data.get('placement')!r}; this metaembed knows {PLACEMENT!r}"
            )
        shards = tuple(data.get("shards") or ())
        if not shards or len(shards) != data.get("num_shards"):
            raise IndexStateError(f"{str(path)!r} lists {len(shards)} shards but says num_shards={data.get('num_shards')}")
        missing = [name for name in shards if not (root / name).is_dir()]
        if missing:
            raise IndexStateError(f"collection {str(root)!r} is missing shard folders {missing}")
        return cls(shards)


def shard_name(number: int) -> str:
    return f"shard-{number:04d}"


def is_collection(path: str | Path) -> bool:
    """Whether ``path`` holds a sharded collection (a manifest), as opposed to one index folder."""
    return (Path(path) / MANIFEST_NAME).is_file()


__all__ = ["Manifest", "MANIFEST_NAME", "shard_name", "is_collection"]
