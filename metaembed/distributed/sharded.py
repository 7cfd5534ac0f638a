"""ShardedIndex: S ordinary indexes behind one search/add/delete API, in-process or on Ray actors.

Ids are placed by a stable hash (:mod:`metaembed.distributed.placement`); a write
goes to the shards that own its ids, and each shard commits its part with its own
crash safety. A search fans out to every shard and merges their answers:

* ``exact``: each shard returns its own top-``k`` at the budget; the collection's
  top-``k`` is the best ``k`` of their union, the same as one index holding every
  item (ties aside).
* ``coarse``: two phases, so the shortlist is the collection's, not the shards':
  every shard scores its rows at ``first_stage_budget`` and returns its best
  ``shortlist``; the merged best ``shortlist`` are re-ranked exactly at ``budget``,
  each by the shard that holds it. Same results as one index's coarse-to-fine.
* ``ann``: each shard runs its own FAISS first stage and re-ranks its shortlist;
  approximate, like ``ann`` on one index.

Faults: a shard that does not answer (its actor died and Ray is restarting it
from its folder) is waited for, up to ``timeout`` seconds, and asked again
(searches are read-only, so asking again is safe). After the timeout a search
raises :class:`~metaembed.errors.ShardUnavailableError` naming the shards, or,
with ``allow_partial=True``, returns the other shards' merged answer as
:class:`ShardedResults` with ``partial=True`` and the shards that did and did not
answer. A write whose shard died is resolved once the shard is back: the shard is
asked which of the ids it holds, and only what its last commit lacks is sent
again, so nothing is lost or stored twice.

>>> import torch
>>> collection = ShardedIndex.create(None, num_shards=3, dim=4, num_vectors=2)
>>> vectors = torch.nn.functional.normalize(torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
>>> collection.add([f"doc-{i}" for i in range(6)], vectors)
>>> len(collection), collection.shard_sizes()
(6, [0, 3, 3])
>>> collection.search(vectors[:1], k=1, budget="2,2")[0][0].id
'doc-0'
>>> collection.close()
"""

from __future__ import annotations

import tempfile
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from metaembed.budget import DEFAULT_SHORTLIST, Budget, BudgetLike
from metaembed.errors import IndexStateError, InputError, ShardUnavailableError
from metaembed.distributed.collection import Manifest, shard_name
from metaembed.distributed.placement import shard_of, split_by_shard
from metaembed.distributed.actors import RayShards
from metaembed.distributed.shard import LocalShards, ShardBackend
from metaembed.index import MultiVectorIndex, Searcher, SearchResult, merge_results, search_modes
from metaembed.index.searcher import SearchMode
from metaembed.index.filters import FilterLike, PayloadFilter
from metaembed.index.inputs import check_finite, id_list, json_dict, json_payloads, positive_int, unique_ids
from metaembed.index.codecs import embedding_bytes
from metaembed.scoring import ArrayLike, as_tensor, maxsim_flops

#: Seconds a call waits for a shard that is restarting before it gives up.
DEFAULT_TIMEOUT = 30.0
#: Seconds opening a collection waits for its shards to start (a new actor is a new process).
OPEN_TIMEOUT = 180.0
# How often a write whose shard died is resolved and sent again before giving up.
_WRITE_ATTEMPTS = 3
# (timeout, allow_partial) of the search() call in progress in this thread or task, for search_batch.
_SEARCH_OPTIONS: ContextVar[tuple[float, bool] | None] = ContextVar("sharded_search_options", default=None)


class ShardedResults(list):
    """One list of :class:`~metaembed.index.SearchResult` per query, best first, and which shards answered.

    Attributes:
        answered: the shard numbers whose items the results cover.
        missing: shards that did not answer (empty unless the search allowed a partial result).
    """

    def __init__(self, rows: list[list[SearchResult]], answered: Sequence[int], missing: Sequence[int] = ()) -> None:
        super().__init__(rows)
        self.answered = tuple(answered)
        self.missing = tuple(missing)

    @property
    def partial(self) -> bool:
        """Whether some shards' items are absent from the results."""
        return bool(self.missing)


class ShardedIndex(Searcher):
    """A collection of ``num_shards`` :class:`~metaembed.index.MultiVectorIndex` shards searched as one.

    Create with :meth:`create`, reopen with :meth:`open`. ``backend="local"`` serves
    every shard in this process; ``backend="ray"`` serves each shard from a Ray actor
    (``ray.init`` first). Embeddings are ``(N, R, D)`` as for a single index. It is a
    :class:`~metaembed.index.Searcher`, so a :class:`~metaembed.retriever.Retriever` (and the
    HTTP app on it) searches it like one index.

    Attributes:
        timeout: seconds a search waits for restarting shards (a :meth:`search` argument overrides it).
        allow_partial: what a search does after ``timeout``: ``False`` raises
            :class:`ShardUnavailableError`, ``True`` returns a result flagged ``partial``.
    """

    def __init__(self, root: Path, manifest: Manifest, backend: ShardBackend,
                 scratch: tempfile.TemporaryDirectory | None = None) -> None:
        self.timeout = DEFAULT_TIMEOUT
        self.allow_partial = False
        self.root = root
        self.manifest = manifest
        self.backend = backend
        self._scratch = scratch
        try:
            info = self._call_all("info", timeout=OPEN_TIMEOUT)  # new actors start a process and import torch
        except BaseException:
            backend.close()  # a collection that fails to open holds no shards (nor, on Ray, a lease)
            raise
        first = info[0]
        for number, other in enumerate(info):
            if (other["dim"], other["num_vectors"], other["dtype"]) != (first["dim"], first["num_vectors"], first["dtype"]):
                raise IndexStateError(f"shard {number} of {str(root)!r} stores {other} but shard 0 stores {first}")
        self._dim, self._num_vectors, self._dtype = int(first["dim"]), int(first["num_vectors"]), str(first["dtype"])
        self._metadata: dict[str, Any] = dict(first["metadata"])

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, path: str | Path | None, num_shards: int, dim: int, num_vectors: int, dtype: str = "float16",
               metadata: dict[str, Any] | None = None, backend: str | ShardBackend = "local",
               **ray_options: Any) -> "ShardedIndex":
        """Create an empty collection of ``num_shards`` shards at ``path`` (a new or empty folder).

        ``None`` makes a scratch collection deleted on :meth:`close`. ``dim``, ``num_vectors``,
        ``dtype`` and ``metadata`` are those of :meth:`MultiVectorIndex.create`, for every shard.
        ``ray_options`` go to :class:`~metaembed.distributed.actors.RayShards` (``num_cpus``, ...).
        """
        num_shards = positive_int(num_shards, "num_shards")
        scratch = None
        if path is None:
            scratch = tempfile.TemporaryDirectory(prefix="metaembed-collection-")
            root = Path(scratch.name)
        else:
            root = Path(path)
            if root.exists() and (not root.is_dir() or any(root.iterdir())):
                raise IndexStateError(f"cannot create a collection at {str(root)!r}: it exists and is not empty")
            root.mkdir(parents=True, exist_ok=True)
        names = tuple(shard_name(number) for number in range(num_shards))
        for name in names:
            MultiVectorIndex.create(root / name, dim=dim, num_vectors=num_vectors, dtype=dtype, metadata=metadata).close()
        manifest = Manifest(names)
        manifest.write(root)  # the commit point: without it the folder is no collection
        return cls(root, manifest, _backend(root, manifest, backend, ray_options), scratch)

    @classmethod
    def open(cls, path: str | Path, backend: str | ShardBackend = "local", **ray_options: Any) -> "ShardedIndex":
        """Open the collection at ``path``; :class:`IndexStateError` if it is not one."""
        root = Path(path)
        manifest = Manifest.read(root)
        return cls(root, manifest, _backend(root, manifest, backend, ray_options))

    def close(self, terminate: bool = False) -> None:
        """Release the shards. On Ray actors: give this collection's lease back (the last lease stops
        the actors; other clients keep them running), or with ``terminate=True`` stop them now."""
        if isinstance(self.backend, RayShards):
            self.backend.close(terminate=terminate)
        else:
            self.backend.close()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- properties
    @property
    def path(self) -> Path | None:
        return None if self._scratch is not None else self.root

    @property
    def num_shards(self) -> int:
        return self.manifest.num_shards

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def num_vectors(self) -> int:
        """Vectors stored per candidate: the largest ``r_c`` a search may use."""
        return self._num_vectors

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def metadata(self) -> dict[str, Any]:
        """The collection's metadata (kept identical in every shard). Assigning persists it in every shard."""
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise InputError(f"metadata must be a dict, got {type(value).__name__}")
        json_dict(value, "metadata")
        self._call_all("set_metadata", dict(value))
        self._metadata = dict(value)

    def shard_sizes(self) -> list[int]:
        """Live items per shard."""
        return self._call_all("ping")

    def __len__(self) -> int:
        return sum(self._call_all("ping"))

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str) or not item_id:
            return False
        return self.present([item_id])[0]

    def present(self, ids: Sequence[str]) -> list[bool]:
        """Which of ``ids`` the collection holds (one call per owning shard)."""
        ids = list(ids)
        found = [False] * len(ids)
        groups = split_by_shard(ids, self.num_shards)
        answers = self._call_each({s: ("present", [ids[p] for p in positions]) for s, positions in groups.items()})
        for shard, positions in groups.items():
            for position, here in zip(positions, answers[shard]):
                found[position] = here
        return found

    @property
    def ids(self) -> list[str]:
        """Live ids, shard by shard, each shard in its storage order."""
        return [item_id for shard_ids in self._call_all("ids") for item_id in shard_ids]

    def shard_of(self, item_id: str) -> int:
        """The shard that owns (or would own) ``item_id``."""
        return shard_of(item_id, self.num_shards)

    def __repr__(self) -> str:
        return (f"ShardedIndex({str(self.path or '<scratch>')!r}, shards={self.num_shards}, dim={self.dim}, "
                f"num_vectors={self.num_vectors}, dtype={self.dtype!r})")

    def memory_bytes(self, budget: BudgetLike | None = None) -> int:
        """Bytes of candidate vectors a search at ``budget`` reads, over all shards (see :meth:`MultiVectorIndex.memory_bytes`)."""
        return embedding_bytes(self.check_budget(budget).r_c, self.dim, self.dtype, num_candidates=len(self))

    def flops(self, budget: BudgetLike | None = None, num_queries: int = 1) -> int:
        """Multiply-add FLOPs of an exact search at ``budget``, over all shards."""
        return maxsim_flops(self.check_budget(budget), self.dim, num_candidates=len(self), num_queries=num_queries)

    def vectors(self, ids: Sequence[str]) -> torch.Tensor:
        """fp32 ``(N, num_vectors, D)`` stored vectors of ``ids``, from their shards."""
        ids = list(ids)
        out = torch.empty(len(ids), self.num_vectors, self.dim)
        groups = split_by_shard(ids, self.num_shards)
        answers = self._call_each({s: ("vectors", [ids[p] for p in positions]) for s, positions in groups.items()})
        for shard, positions in groups.items():
            out[positions] = torch.from_numpy(np.array(answers[shard]))  # Ray's results are read-only
        return out

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """The stored payloads of those ``ids`` that are in the collection, from their shards."""
        ids = id_list(ids)
        groups = split_by_shard(ids, self.num_shards)
        answers = self._call_each({s: ("payloads", [ids[p] for p in positions]) for s, positions in groups.items()})
        return {item_id: payload for found in answers.values() for item_id, payload in found.items()}

    # ----------------------------------------------------------------- writes
    def add(self, ids: Sequence[str], embeddings: ArrayLike, payloads: Sequence[dict | None] | None = None) -> None:
        """Add new candidates (see :meth:`MultiVectorIndex.add`), each to the shard that owns its id.

        Everything is checked before any shard writes (shapes, values, payloads, ids new
        in the collection), so a bad batch stores nothing.
        """
        self._write("add", ids, embeddings, payloads)

    def upsert(self, ids: Sequence[str], embeddings: ArrayLike, payloads: Sequence[dict | None] | None = None) -> None:
        """Add candidates, replacing those whose id exists (per shard, one commit)."""
        self._write("upsert", ids, embeddings, payloads)

    def add_missing(self, ids: Sequence[str], embeddings: ArrayLike, payloads: Sequence[dict | None] | None = None) -> int:
        """Add the candidates whose id is not in the collection yet, skip the others; returns how many were added.

        Idempotent, so a resumed or retried build never stores an item twice.
        """
        return self._write("add_missing", ids, embeddings, payloads)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove candidates by id. :class:`IndexStateError` naming them if any id is not in the collection."""
        ids = list(dict.fromkeys(id_list(ids)))
        absent = [item_id for item_id, here in zip(ids, self.present(ids)) if not here]
        if absent:
            raise IndexStateError(f"ids not in the index: {absent[:5]}" + (" ..." if len(absent) > 5 else ""))
        for shard, positions in split_by_shard(ids, self.num_shards).items():
            mine = [ids[p] for p in positions]
            self._write_shard(shard, "delete", mine, (mine,))

    def compact(self) -> None:
        """Reclaim deleted rows and merge segments in every shard."""
        self._call_all("compact")

    def _write(self, method: str, ids: Sequence[str], embeddings: ArrayLike, payloads: Any) -> int:
        ids = unique_ids(ids)
        values = _check_embeddings(as_tensor(embeddings, "embeddings"), len(ids), self.dim, self.num_vectors)
        json_payloads(payloads, len(ids))  # raises on a bad payload before anything is written
        payloads = None if payloads is None else list(payloads)
        if method == "add":
            present = [item_id for item_id, here in zip(ids, self.present(ids)) if here]
            if present:
                raise IndexStateError(f"ids already in the index: {present[:5]}" + (" ..." if len(present) > 5 else ""))
        array = _as_numpy(values[:, : self.num_vectors])
        added = 0
        for shard, positions in split_by_shard(ids, self.num_shards).items():
            mine = [ids[p] for p in positions]
            part = None if payloads is None else [payloads[p] for p in positions]
            added += self._write_shard(shard, method, mine, (mine, array[positions], part))
        return added if method == "add_missing" else len(ids)

    def _write_shard(self, shard: int, method: str, ids: list[str], args: tuple) -> int:
        """Send one shard its part of a write; if the shard dies, resolve what its last commit holds and resend the rest."""
        for _ in range(_WRITE_ATTEMPTS):
            try:
                result = self.backend.submit(shard, method, *args).result(None)
                return result if method == "add_missing" else len(ids)
            except ShardUnavailableError:
                if not self.backend.wait_ready(shard, DEFAULT_TIMEOUT):
                    raise ShardUnavailableError(
                        f"shard {shard} died during a {method} of {len(ids)} items and did not come back within "
                        f"{DEFAULT_TIMEOUT:.0f} s; it holds its last commit: check with 'id in collection' and "
                        "write the missing items again", [shard]) from None
            here = self.backend.submit(shard, "present", ids).result(DEFAULT_TIMEOUT)
            if method in ("add", "add_missing"):
                keep = [i for i, found in enumerate(here) if not found]
                if not keep:
                    return 0 if method == "add_missing" else len(ids)  # the commit landed before the shard died
                ids = [ids[i] for i in keep]
                args = (ids, args[1][keep], None if args[2] is None else [args[2][i] for i in keep])
            elif method == "delete":
                ids = [item_id for item_id, found in zip(ids, here) if found]
                if not ids:
                    return 0
                args = (ids,)
            # upsert: idempotent, sent again as it is
        raise ShardUnavailableError(f"shard {shard} kept failing during a {method} of {len(ids)} items", [shard])

    # ----------------------------------------------------------------- search
    def search(
        self,
        queries: ArrayLike,
        k: int = 10,
        budget: BudgetLike | None = None,
        mode: SearchMode = "exact",
        shortlist: int = DEFAULT_SHORTLIST,
        first_stage_budget: BudgetLike = (1, 1),
        filter: PayloadFilter | FilterLike | None = None,
        *,
        timeout: float | None = None,
        allow_partial: bool | None = None,
    ) -> ShardedResults:
        """Top-``k`` of each query over every shard; arguments as :meth:`MultiVectorIndex.search`.

        Args:
            timeout: seconds to wait for shards that are restarting (default :attr:`timeout`).
            allow_partial: after ``timeout``, return the answering shards' results flagged
                ``partial`` instead of raising :class:`ShardUnavailableError` (default :attr:`allow_partial`).

        Returns:
            :class:`ShardedResults`: one list per query, best first, and the shards covered.
        """
        options = (self.timeout if timeout is None else float(timeout),
                   self.allow_partial if allow_partial is None else bool(allow_partial))
        token = _SEARCH_OPTIONS.set(options)
        try:
            # checks, then search_batch
            return super().search(queries, k, budget, mode, shortlist, first_stage_budget, filter)
        finally:
            _SEARCH_OPTIONS.reset(token)

    def search_batch(
        self,
        queries: torch.Tensor,
        k: int,
        budget: Budget,
        mode: SearchMode = "exact",
        shortlist: int = DEFAULT_SHORTLIST,
        first_stage_budget: Budget = Budget(1, 1),
        filter: PayloadFilter | None = None,
    ) -> ShardedResults:
        """:meth:`search` on checked inputs (see :meth:`~metaembed.index.Searcher.search_batch`);
        each shard applies ``filter`` before its own top-k."""
        if isinstance(mode, str) and mode not in search_modes():
            raise InputError(f"unknown search mode {mode!r}; expected one of {search_modes()}")
        timeout, allow_partial = _SEARCH_OPTIONS.get() or (self.timeout, self.allow_partial)
        array = _as_numpy(queries.to(torch.float32))
        deadline = time.monotonic() + timeout
        everyone = range(self.num_shards)
        if mode != "coarse":
            args = (array, k, budget, mode, shortlist, first_stage_budget, filter)
            answers, missing = self._fan_out({s: ("search", args) for s in everyone}, deadline, allow_partial, timeout)
            return ShardedResults(_merge(answers, len(array), k), sorted(answers), missing)
        width = max(shortlist, k)
        stage, missing = self._fan_out({s: ("first_stage", (array, first_stage_budget, width, filter)) for s in everyone},
                                       deadline, allow_partial, timeout)
        owned: dict[int, list[list[str]]] = {s: [[] for _ in range(len(array))] for s in stage}
        for query, row in enumerate(_merge_pairs(stage, len(array), width)):
            for shard, item_id in row:
                owned[shard][query].append(item_id)
        wanted = {s: ("rerank", (array, owned[s], budget, k)) for s in owned if any(owned[s])}
        answers, late = self._fan_out(wanted, deadline, allow_partial, timeout)
        answered = sorted(s for s in stage if s not in late)
        return ShardedResults(_merge(answers, len(array), k), answered, sorted({*missing, *late}))

    # ----------------------------------------------------------------- fan-out
    def _fan_out(self, calls: dict[int, tuple[str, tuple]], deadline: float, allow_partial: bool,
                 timeout: float) -> tuple[dict[int, Any], list[int]]:
        """Run ``{shard: (method, args)}`` on every shard at once; retry shards that died until ``deadline``."""
        pending = {s: self.backend.submit(s, method, *args) for s, (method, args) in calls.items()}
        answers: dict[int, Any] = {}
        missing: list[int] = []
        while pending:
            failed = []
            for shard, call in pending.items():
                try:
                    answers[shard] = call.result(max(deadline - time.monotonic(), 0.01))
                except ShardUnavailableError:
                    failed.append(shard)
            pending = {}
            for shard in failed:
                left = deadline - time.monotonic()
                if left > 0 and self.backend.wait_ready(shard, left):
                    pending[shard] = self.backend.submit(shard, calls[shard][0], *calls[shard][1])
                else:
                    missing.append(shard)
        if missing and not allow_partial:
            searching = any(method in ("search", "first_stage", "rerank") for method, _ in calls.values())
            hint = (" (search with allow_partial=True to get the other shards' results, flagged partial)"
                    if searching else "")
            raise ShardUnavailableError(
                f"shards {sorted(missing)} did not answer within {timeout:.1f} s, so no result is returned{hint}",
                sorted(missing))
        return answers, sorted(missing)

    def _call_each(self, calls: dict[int, tuple], timeout: float = DEFAULT_TIMEOUT) -> dict[int, Any]:
        pairs = {s: (call[0], call[1:]) for s, call in calls.items()}
        return self._fan_out(pairs, time.monotonic() + timeout, False, timeout)[0]

    def _call_all(self, method: str, *args: Any, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
        answers = self._call_each({s: (method, *args) for s in range(self.num_shards)}, timeout)
        return [answers[s] for s in range(self.num_shards)]


# --------------------------------------------------------------------- helpers
def _backend(root: Path, manifest: Manifest, backend: str | ShardBackend, ray_options: dict[str, Any]) -> ShardBackend:
    paths = manifest.shard_paths(root)
    if backend == "local":
        if ray_options:
            raise InputError(f"options {sorted(ray_options)} apply to backend='ray' only")
        return LocalShards(paths)
    if backend == "ray":
        return RayShards(root, paths, **ray_options)
    if isinstance(backend, str):
        raise InputError(f"unknown backend {backend!r}; expected 'local' or 'ray'")
    return backend


def _check_embeddings(values: torch.Tensor, count: int, dim: int, num_vectors: int) -> torch.Tensor:
    if values.ndim != 3:
        raise InputError(f"embeddings must have shape (N, R, D), got shape {tuple(values.shape)}")
    n, r, d = values.shape
    if n != count:
        raise InputError(f"got {count} ids but {n} embeddings")
    if d != dim:
        raise InputError(f"embeddings have dimension D={d} but the index stores D={dim}")
    if r < num_vectors:
        raise InputError(f"embeddings have {r} vectors per item but the index stores {num_vectors}")
    check_finite(values[:, :num_vectors].to(torch.float32), 0)
    return values


def _as_numpy(values: torch.Tensor) -> np.ndarray:
    """A numpy array for the shards (bfloat16 has no numpy dtype: it travels as float32)."""
    if values.dtype == torch.bfloat16:
        values = values.to(torch.float32)
    return np.ascontiguousarray(values.detach().cpu().numpy())


def _merge(answers: dict[int, list[list[SearchResult]]], num_queries: int, k: int) -> list[list[SearchResult]]:
    """The best ``k`` of each query over the shards that answered (in shard order, so ties keep it)."""
    if not answers:
        return [[] for _ in range(num_queries)]
    return merge_results([answers[s] for s in sorted(answers)], k)


def _merge_pairs(stage: dict[int, list[list[tuple[str, float]]]], num_queries: int, width: int) -> list[list[tuple[int, str]]]:
    """The best ``width`` first-stage ``(shard, id)`` of each query over the shards."""
    rows: list[list[tuple[float, int, str]]] = [[] for _ in range(num_queries)]
    for shard, part in stage.items():
        for query, pairs in enumerate(part):
            rows[query].extend((score, shard, item_id) for item_id, score in pairs)
    return [[(shard, item_id) for _, shard, item_id in sorted(row, key=lambda t: -t[0])[:width]] for row in rows]


__all__ = ["ShardedIndex", "ShardedResults", "DEFAULT_TIMEOUT"]
