"""Which shard owns an id: a stable hash, the same in every process, machine and Python version.

Python's built-in ``hash`` of a string is salted per process (``PYTHONHASHSEED``), so two
workers would disagree on where an id lives. Placement uses the first 8 bytes of the id's
BLAKE2b digest instead, read as an unsigned integer, modulo the number of shards. The rule is
recorded in the collection manifest (:data:`PLACEMENT`), so a future rule cannot silently
misroute an existing collection's ids.

>>> shard_of("report.pdf#page=3", 4)
3
>>> split_by_shard([f"doc-{i}" for i in range(6)], 3)   # shard 0 happens to own none of these
{1: [0, 1, 5], 2: [2, 3, 4]}
"""

from __future__ import annotations

import hashlib
from typing import Sequence

#: The name of the placement rule, recorded in every collection manifest.
PLACEMENT = "blake2b64-mod"


def shard_of(item_id: str, num_shards: int) -> int:
    """The shard ``0..num_shards-1`` that owns ``item_id``."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def split_by_shard(ids: Sequence[str], num_shards: int) -> dict[int, list[int]]:
    """Positions of ``ids`` grouped by owning shard (only shards that own some), in input order."""
    groups: dict[int, list[int]] = {}
    for position, item_id in enumerate(ids):
        groups.setdefault(shard_of(item_id, num_shards), []).append(position)
    return dict(sorted(groups.items()))


__all__ = ["PLACEMENT", "shard_of", "split_by_shard"]
