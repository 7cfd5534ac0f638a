"""Shard actors on Ray: :class:`RayShards`, and who keeps the actors alive.

Each shard of a collection is served by one named Ray actor (a
:class:`~metaembed.distributed.shard.ShardServer`), shared by every process of the cluster
that opens the collection: a build's writer, the gateways of a Serve app, a notebook.

Lifetime. A non-detached Ray actor belongs to the process that created it and is destroyed
when that process drops its handles, however many others still hold handles they got by
name. Shard actors made that way died under every other client whenever the first opener
closed its collection (or, in-process, when ``metaembed index build --ray`` returned), and a
lookup in that moment found the dying actor. So the shard actors are detached (no process
owns them) and a small detached keeper actor per collection (:class:`_Keeper`) holds the
leases: the first :class:`RayShards` to open the collection makes the keeper start the shard
actors, every open takes a lease, and :meth:`RayShards.close` gives it back; when the last
lease is given back the keeper stops the shard actors and itself. A shard actor whose process
dies is restarted by Ray (``max_restarts``) under the same actor id, reopening its folder at
its last commit. A client that dies without closing leaves its lease behind (the actors keep
running); :func:`stop_shards` stops them whatever the leases.
"""

from __future__ import annotations

import hashlib
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Sequence

from metaembed.errors import IndexStateError, MetaEmbedError, ShardUnavailableError
from metaembed.distributed.shard import Call, ShardServer

#: Ray namespace of the shard and keeper actors; actor names derive from the collection's absolute path.
NAMESPACE = "metaembed"
# Seconds the keeper waits for a stopped actor's name to be free again, so a new open never finds it dying.
_STOP_WAIT = 30.0


def _digest(root: Path) -> str:
    return hashlib.blake2b(str(Path(root).resolve()).encode("utf-8"), digest_size=6).hexdigest()


def actor_name(root: Path, shard: int) -> str:
    """The Ray actor name of ``shard`` of the collection at ``root``: the same in every process of the cluster."""
    return f"metaembed-shard-{_digest(root)}-{shard:04d}"


def keeper_name(root: Path) -> str:
    """The Ray actor name of the collection's lease keeper."""
    return f"metaembed-collection-{_digest(root)}"


def _kill_and_wait(names: Sequence[str]) -> None:
    """Stop the named actors (no restart) and wait until their names are free."""
    import ray

    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:  # not running
            continue
    deadline = time.monotonic() + _STOP_WAIT
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.05)


class _Keeper:
    """One per collection (a detached Ray actor, calls served one at a time): starts the shard actors
    for the first lease, stops them when the last lease is given back."""

    def __init__(self, root: str, paths: list[str], shard_options: dict[str, Any]) -> None:
        self.root, self.paths, self.shard_options = Path(root), paths, shard_options
        self.clients: set[str] = set()

    def acquire(self, client: str) -> list[Any]:
        """Take a lease for ``client``; the shard actors' handles (started if absent)."""
        import ray

        self.clients.add(client)
        actor = ray.remote(ShardServer)
        return [actor.options(name=actor_name(self.root, number), namespace=NAMESPACE, get_if_exists=True,
                              lifetime="detached", max_task_retries=0, **self.shard_options).remote(path)
                for number, path in enumerate(self.paths)]

    def release(self, client: str) -> bool:
        """Give ``client``'s lease back; whether it was the last (then the shard actors are stopped).

        A client the keeper does not know (it leased from a keeper that has since been restarted)
        stops nothing: better a shard left running than one stopped under a client that uses it.
        """
        if client not in self.clients:
            return False
        self.clients.discard(client)
        if self.clients:
            return False
        _kill_and_wait([actor_name(self.root, number) for number in range(len(self.paths))])
        return True

    def retire(self) -> None:
        """Exit, unless a lease was taken since the last one was given back."""
        import ray

        if not self.clients:
            ray.actor.exit_actor()


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


def _give_back(root: Path, client: str) -> None:
    """Return ``client``'s lease to the collection's keeper (and let the keeper exit if it was the last)."""
    import ray
    from ray import exceptions

    if not ray.is_initialized():
        return  # the cluster went first (a local one stops with this process): nothing is left to stop
    try:
        keeper = ray.get_actor(keeper_name(root), namespace=NAMESPACE)
        if ray.get(keeper.release.remote(client), timeout=_STOP_WAIT + 10):
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

    The actor options count when the actors start: a collection whose actors already run is
    served by them as they are.
    """

    def __init__(self, root: Path, paths: Sequence[Path], *, num_cpus: float = 0.5, max_restarts: int = -1,
                 max_concurrency: int = 4) -> None:
        import ray
        from ray import exceptions

        if not ray.is_initialized():
            raise ShardUnavailableError("Ray is not initialised: call ray.init() (or metaembed.distributed.connect) first", [])
        self.root = Path(root).resolve()
        self.client = uuid.uuid4().hex
        options = {"num_cpus": num_cpus, "max_restarts": max_restarts, "max_concurrency": max_concurrency}
        keeper = ray.remote(_Keeper).options(name=keeper_name(self.root), namespace=NAMESPACE, get_if_exists=True,
                                             lifetime="detached", num_cpus=0, max_restarts=-1)
        for _ in range(100):  # a keeper that is exiting (its last lease just went) answers no more: ask its successor
            try:
                self.handles = ray.get(keeper.remote(str(self.root), [str(p) for p in paths], options)
                                       .acquire.remote(self.client), timeout=60)
                break
            except exceptions.RayActorError:
                time.sleep(0.05)
        else:
            raise ShardUnavailableError(f"the keeper of collection {str(self.root)!r} did not answer", [])
        self.num_shards = len(self.handles)
        # Give the lease back if this object is dropped (or the process exits) without close().
        self._lease = weakref.finalize(self, _give_back, self.root, self.client)

    @classmethod
    def sharing(cls, handles: Sequence[Any]) -> "RayShards":
        """A backend on another backend's actor handles (passed to a Ray task or actor), without a lease of its own:
        its owner's lease keeps the actors alive while the borrower runs."""
        shards = cls.__new__(cls)
        shards.root, shards.client, shards._lease = None, None, None
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
            stop_shards(self.root, len(self.handles))
        elif self._lease is not None:
            self._lease()
        self.handles = []


def stop_shards(root: str | Path, num_shards: int) -> None:
    """Stop the shard actors of the collection at ``root`` and its keeper, whoever holds leases."""
    root = Path(root).resolve()
    _kill_and_wait([keeper_name(root)] + [actor_name(root, number) for number in range(num_shards)])


__all__ = ["RayShards", "stop_shards", "actor_name", "keeper_name", "NAMESPACE"]
