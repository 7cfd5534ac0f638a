"""The lease keeper of a collection's shard actors, and the actors' names (light: no torch, for a Ray worker).

One keeper per collection runs as a detached Ray actor named after the collection. Every
:class:`~metaembed.distributed.actors.RayShards` that opens the collection takes a lease
(:meth:`Keeper.acquire`) before it looks the shard actors up or starts them, and gives it
back on close (:meth:`Keeper.release`); when the last lease comes back the keeper stops the
shard actors and waits until their names are free, then retires. The keeper serves one call
at a time, so a lease taken while the last one is being given back waits for the old actors
to be gone and then starts new ones: no client ever gets a handle to a dying actor.

A lease lasts :data:`LEASE_SECONDS` unless renewed; every client renews its own several times a
lease (:meth:`Keeper.renew`, from a background thread). So a client killed without closing (an
OOM kill, ``kill -9``, a lost node) loses its lease a lease's time later, and when no lease is
left the keeper stops the shard actors and itself as if the last one had been given back.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Sequence

#: Ray namespace of the shard and keeper actors; actor names derive from the collection's absolute path.
NAMESPACE = "metaembed"
#: Seconds a stop waits for the stopped actors' names to be free again.
STOP_WAIT = 30.0
#: Seconds a lease lasts without a renewal (clients renew every sixth of it).
LEASE_SECONDS = 60.0


def _digest(root: str | Path) -> str:
    return hashlib.blake2b(str(Path(root).resolve()).encode("utf-8"), digest_size=6).hexdigest()


def actor_name(root: str | Path, shard: int) -> str:
    """The Ray actor name of ``shard`` of the collection at ``root``: the same in every process of the cluster."""
    return f"metaembed-shard-{_digest(root)}-{shard:04d}"


def keeper_name(root: str | Path) -> str:
    """The Ray actor name of the collection's lease keeper."""
    return f"metaembed-collection-{_digest(root)}"


def stop_actors(names: Sequence[str]) -> None:
    """Stop the named actors of :data:`NAMESPACE` (no restart) and wait until their names are free."""
    import ray

    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:  # not running
            continue
    deadline = time.monotonic() + STOP_WAIT
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.05)


class Keeper:
    """The leases on one collection's shard actors (a detached Ray actor; calls served one at a time).

    ``clients`` maps each lease holder to the time (``time.monotonic``) its lease runs out. A
    background thread expires leases that were not renewed; the calls and that thread share
    one lock, and once the last lease has gone and the shard actors are stopped, the keeper
    answers no more calls (a client then asks its successor).
    """

    def __init__(self, shard_names: list[str], lease_seconds: float = LEASE_SECONDS) -> None:
        self.shard_names = shard_names
        self.lease_seconds = float(lease_seconds)
        self.clients: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._expire, name="metaembed-lease-expiry", daemon=True).start()

    def acquire(self, client: str) -> None:
        """Take a lease for ``client``: the shard actors may be looked up (or started) now."""
        self.renew(client)

    def renew(self, client: str) -> None:
        """Extend ``client``'s lease by :attr:`lease_seconds` (taking it again if this keeper restarted since)."""
        import ray

        with self._lock:
            if self._stopped:  # the actors are gone: this keeper is about to exit, and its successor starts them again
                ray.actor.exit_actor()
            self.clients[client] = time.monotonic() + self.lease_seconds

    def release(self, client: str) -> bool:
        """Give ``client``'s lease back; whether it was the last (then the shard actors are stopped).

        A client the keeper does not know (it leased from a keeper that has since been restarted)
        stops nothing: better a shard left running than one stopped under a client that uses it.
        """
        with self._lock:
            if self.clients.pop(client, None) is None or self.clients:
                return False
            stop_actors(self.shard_names)
            return True

    def retire(self) -> None:
        """Exit, unless a lease was taken since the last one was given back."""
        import ray

        if not self.clients:
            ray.actor.exit_actor()

    def _expire(self) -> None:
        """Drop leases that ran out; when that leaves none, stop the shard actors and this keeper."""
        import ray

        while True:
            time.sleep(max(0.05, min(5.0, self.lease_seconds / 6)))
            with self._lock:
                now = time.monotonic()
                expired = [client for client, deadline in self.clients.items() if deadline < now]
                for client in expired:
                    del self.clients[client]
                if not expired or self.clients:
                    continue
                stop_actors(self.shard_names)
                self._stopped = True
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            return


__all__ = ["Keeper", "actor_name", "keeper_name", "stop_actors", "NAMESPACE", "STOP_WAIT", "LEASE_SECONDS"]
