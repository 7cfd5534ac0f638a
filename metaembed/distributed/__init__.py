"""Beyond one machine: a sharded index served by Ray actors, distributed encoding and a Ray Serve app.

* :class:`ShardedIndex` — S ordinary indexes under one collection folder, ids placed by a
  stable hash, searched as one (exact or coarse-to-fine, merged top-k). Runs in-process
  (``backend="local"``) or one Ray actor per shard (``backend="ray"``).
* :func:`build_collection` — encode a folder or JSONL with a pool of model replicas on Ray Data
  and write the shards (``metaembed index build --ray``).
* :mod:`metaembed.distributed.serve` — the HTTP API of ``metaembed serve`` as a Ray Serve app.

Ray is an optional dependency (``pip install "metaembed[ray]"``); only the Ray parts import it.
The names below are imported lazily, so a Ray worker that needs only a light module of this
package (the lease keeper, the manifest) does not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaembed.registry import lazy_exports

_EXPORTS = {
    "ShardedIndex": "metaembed.distributed.sharded",
    "ShardedResults": "metaembed.distributed.sharded",
    "shard_of": "metaembed.distributed.placement",
    "is_collection": "metaembed.distributed.collection",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from metaembed.distributed.collection import is_collection
    from metaembed.distributed.placement import shard_of
    from metaembed.distributed.sharded import ShardedIndex, ShardedResults


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["ShardedIndex", "ShardedResults", "shard_of", "is_collection"]
