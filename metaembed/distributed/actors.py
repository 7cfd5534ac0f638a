"""Shard actors on Ray: :class:`RayShards`, and who keeps the actors alive.

Each shard of a collection is served by one named Ray actor (a
:class:`~metaembed.distributed.shard.ShardServer`), shared by every process of the cluster
that opens the collection: a build's writer, the gateways of a Serve app, a notebook.

Lifetime. A non-detached Ray actor belongs to the process that created it and is destroyed
when that process drops its handles, however many others still hold handles they got by
name. Shard actors made that way died under every other client whenever the first opener
closed its collection (or, in-process, when ``metaembed index build --ray`` returned), and a
lookup in that moment found the dying actor. So the shard actors are detached (no process
owns them) and a small detached keeper actor per collection
(:class:`~metaembed.distributed.keeper.Keeper`) holds the leases: every open takes a lease
and then looks the shard actors up, starting those that do not run; :meth:`RayShards.close`
gives the lease back; when the last lease is given back the keeper stops the shard actors
and itself. A shard actor whose process
dies is restarted by Ray (``max_restarts``) under the same actor id, reopening its folder at
its last commit. Each client renews its lease from a background thread; a client that dies
without closing stops renewing, and its lease runs out :data:`~metaembed.distributed.keeper.LEASE_SECONDS`
later (then, if it was the last, the actors stop). :func:`stop_shards` stops them at once,
whatever the leases.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Sequence

from metaembed.errors import IndexStateError, MetaEmbedError, ShardUnavailableError
from metaembed.distributed.keeper import (
    LEASE_SECONDS,
    NAMESPACE,
    STOP_WAIT,
    Keeper,
    actor_name,
    keeper_name,
    stop_actors,
)
from metaembed.distributed.shard import Call, ShardServer


class _RayCall:
    def __init__(self, ref: Any, shard: int) -> None:
        self.ref, self.shard = ref, shard

    def result(self, timeout: float | None) -> Any:
        import ray
        from ray import exceptions

        try:
            return ray.get(self.ref, timeout=timeout)
        except exceptions.GetTimeoutError:
            ray.cancel(self.ref)
            raise ShardUnavailableError(f"shard {self.shard} did not answer within {timeout:.1f} s", [self.shard]) from None
        except exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, (MetaEmbedError, ValueError, TypeError, KeyError)):
                raise cause from None
            raise
        except exceptions.RayActorError as error:
            if error.actor_init_failed:  # the shard cannot be opened: waiting for a restart would not help
                lines = [line.strip() for line in str(error).splitlines() if line.strip()]
                raise IndexStateError(f"shard {self.shard} could not be opened: {lines[-1] if lines else error}") from None
            raise ShardUnavailableError(f"shard {self.shard} is unavailable ({type(error).__name__})", [self.shard]) from None
        except (exceptions.WorkerCrashedError, exceptions.ObjectLostError) as error:
            raise ShardUnavailableError(f"shard {self.shard} is unavailable ({type(error).__name__})", [self.shard]) from None


def _renew(root: Path, client: str, every: float, stop: threading.Event) -> None:
    """Renew ``client``'s lease every ``every`` seconds until ``stop`` is set (a daemon thread's loop).

    Holds no reference to its :class:`RayShards`, so dropping that object still gives the lease back.
    """
    import ray

    while not stop.wait(every):
        try:
            ray.get_actor(keeper_name(root), namespace=NAMESPACE).renew.remote(client)
        except Exception:  # noqa: BLE001 - no keeper right now (it is restarting), or Ray shut down: try again later
            if not ray.is_initialized():
                return


def _give_back(root: Path, client: str, renewing: threading.Event) -> None:
    """Return ``client``'s lease to the collection's keeper (and let the keeper exit if it was the last)."""
    import ray
    from ray import exceptions

    renewing.set()
    if not ray.is_initialized():
        return  # the cluster went first (a local one stops with this process): nothing is left to stop
    try:
        keeper = ray.get_actor(keeper_name(root), namespace=NAMESPACE)
        if ray.get(keeper.release.remote(client), timeout=STOP_WAIT + 10):
            ray.get(keeper.retire.remote(), timeout=10)
    except (ValueError, exceptions.RayActorError, exceptions.GetTimeoutError):
        pass  # no keeper (stopped by stop_shards), or it exited on retire as it should


class RayShards:
    """One Ray actor per shard, named after the collection, shared by every process of the cluster.

    Opening takes a lease from the collection's keeper (see the module doc), which starts the
    shard actors if none run; :meth:`close` gives the lease back, and the last one stops the
    actors. Calls in flight when an actor died fail with :class:`ShardUnavailableError`; Ray
    restarts it (same actor id) and the collection decides whether to wait and ask again.

    Args:
        root: the collection folder (shard folders must be reachable at the same path on every node).
        paths: the shard folders.
        num_cpus: CPUs Ray reserves for each shard actor (fractions allowed). Half a CPU by default:
            a shard's searches are short bursts, and a build's encoders need the cores more.
        max_restarts: restarts Ray attempts per actor (``-1``: unlimited).
        max_concurrency: calls one actor serves at once (searches run concurrently; writes are serialised).
        lease_seconds: how long the lease lasts without renewal (renewed every sixth of it): how
            long the actors outlive a client killed without closing. The keeper's first opener sets it.

    The actor options count when the actors start: a collection whose actors already run is
    served by them as they are.
    """

    def __init__(self, root: Path, paths: Sequence[Path], *, num_cpus: float = 0.5, max_restarts: int = -1,
                 max_concurrency: int = 4, lease_seconds: float = LEASE_SECONDS) -> None:
        import ray
        from ray import exceptions

        if not ray.is_initialized():
            raise ShardUnavailableError("Ray is not initialised: call ray.init() (or metaembed.distributed.connect) first", [])
        self.root = Path(root).resolve()
        self.client = uuid.uuid4().hex
        names = [actor_name(self.root, number) for number in range(len(paths))]
        keeper = ray.remote(Keeper).options(name=keeper_name(self.root), namespace=NAMESPACE, get_if_exists=True,
                                            lifetime="detached", num_cpus=0, max_restarts=-1)
        for _ in range(100):  # a keeper that is exiting (its last lease just went) answers no more: ask its successor
            try:
                ray.get(keeper.remote(names, lease_seconds).acquire.remote(self.client), timeout=120)
                break
            except exceptions.RayActorError:
                time.sleep(0.05)
            except exceptions.GetTimeoutError:
                break
        else:
            raise ShardUnavailableError(f"the keeper of collection {str(self.root)!r} did not answer", [])
        actor = ray.remote(ShardServer)
        self.handles = [actor.options(name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                                      num_cpus=num_cpus, max_restarts=max_restarts, max_task_retries=0,
                                      max_concurrency=max_concurrency).remote(str(path))
                        for name, path in zip(names, paths)]
        self.num_shards = len(self.handles)
        self._renewing = renewing = threading.Event()
        threading.Thread(target=_renew, args=(self.root, self.client, lease_seconds / 6, renewing),
                         name="metaembed-lease-renewal", daemon=True).start()
        # Give the lease back if this object is dropped (or the process exits) without close().
        self._lease = weakref.finalize(self, _give_back, self.root, self.client, renewing)

    @classmethod
    def sharing(cls, handles: Sequence[Any]) -> "RayShards":
        """A backend on another backend's actor handles (passed to a Ray task or actor), without a lease of its own:
        its owner's lease keeps the actors alive while the borrower runs."""
        shards = cls.__new__(cls)
        shards.root, shards.client, shards._lease, shards._renewing = None, None, None, None
        shards.handles, shards.num_shards = list(handles), len(handles)
        return shards

    def submit(self, shard: int, method: str, *args: Any) -> Call:
        return _RayCall(getattr(self.handles[shard], method).remote(*args), shard)

    def wait_ready(self, shard: int, timeout: float) -> bool:
        """Ping ``shard`` until it answers (a restarting actor answers once it has reopened its folder) or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.submit(shard, "ping").result(min(left, 5.0))
                return True
            except ShardUnavailableError:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self, terminate: bool = False) -> None:
        """Give the lease back (the last one stops the actors); ``terminate=True`` stops them now, whatever the leases."""
        if terminate and self._lease is not None:
            self._lease.detach()
            self._renewing.set()
            stop_shards(self.root, len(self.handles))
        elif self._lease is not None:
            self._lease()
        self.handles = []


def stop_shards(root: str | Path, num_shards: int) -> None:
    """Stop the shard actors of the collection at ``root`` and its keeper, whoever holds leases."""
    stop_actors([keeper_name(root)] + [actor_name(root, number) for number in range(num_shards)])


__all__ = ["RayShards", "stop_shards"]
