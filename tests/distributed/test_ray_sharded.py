"""ShardedIndex on Ray actors (one per shard) on a local cluster: parity, routing, killed actors."""

from __future__ import annotations

import threading
import time

import pytest

from metaembed.distributed import ShardedIndex, shard_of
from metaembed.errors import ShardUnavailableError
from metaembed.index import MultiVectorIndex

from tests.distributed.test_sharded import assert_same, _unit

pytestmark = pytest.mark.ray

N = 400


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    """A 3-shard collection served by Ray actors, and one index holding the same items."""
    root = tmp_path_factory.mktemp("ray") / "collection"
    ids, vectors = [f"doc-{i}" for i in range(N)], _unit(N, 8, 16, seed=3)
    payloads = [{"n": i} for i in range(N)]
    with ShardedIndex.create(root, num_shards=3, dim=16, num_vectors=8) as local:
        local.add(ids, vectors, payloads)
    single = MultiVectorIndex.create(None, dim=16, num_vectors=8)
    single.add(ids, vectors, payloads)
    collection = ShardedIndex.open(root, backend="ray", num_cpus=0.1)
    yield collection, single, root
    collection.close(terminate=True)
    single.close()


@pytest.mark.parametrize("budget", ["1,1", "4,8", None])
def test_actors_answer_like_one_index(served, budget):
    collection, single, _ = served
    queries = _unit(5, 4, 16, seed=4)
    assert_same(collection.search(queries, k=8, budget=budget), single.search(queries, k=8, budget=budget))
    assert_same(collection.search(queries, k=4, budget=budget, mode="coarse", shortlist=12),
                single.search(queries, k=4, budget=budget, mode="coarse", shortlist=12))


def test_adds_and_deletes_reach_the_owning_actor(served):
    collection, _, root = served
    ids, vectors = [f"new-{i}" for i in range(40)], _unit(40, 8, 16, seed=5)
    before = collection.shard_sizes()
    collection.add(ids, vectors)
    collection.delete(ids[:10])
    grown = [after - was for after, was in zip(collection.shard_sizes(), before)]
    assert grown == [sum(1 for i in ids[10:] if shard_of(i, 3) == s) for s in range(3)]
    # Each actor committed to its own folder: a fresh reader of the folder sees the write.
    for number in range(3):
        with MultiVectorIndex.open(root / f"shard-{number:04d}") as shard:
            assert {i for i in shard.ids if i.startswith("new-")} == {i for i in ids[10:] if shard_of(i, 3) == number}
    hit = collection.search(vectors[20], k=1, budget="4,8")[0][0]
    assert hit.id == "new-20"
    collection.delete(ids[10:])


def _wait_until_dead(ray, handle, timeout: float = 60.0) -> None:
    """Until a call on the killed actor fails (``ray.kill`` only asks for the kill)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(handle.ping.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.05)
    raise AssertionError("the killed actor still answers")


def test_killed_actors_are_restarted_from_storage(served, ray_cluster):
    collection, single, root = served
    handles = collection.backend.handles
    queries = _unit(3, 4, 16, seed=6)
    expected = single.search(queries, k=5, budget="2,4")

    # Killed mid-search: the search in flight waits for the restart and is answered whole.
    answers: list = []
    searching = threading.Thread(target=lambda: answers.extend(collection.search(queries, k=5, budget="2,4") for _ in range(30)))
    searching.start()
    time.sleep(0.05)
    ray_cluster.kill(handles[1], no_restart=False)
    searching.join(timeout=60)
    assert len(answers) == 30 and not any(a.partial for a in answers)
    for answer in answers:
        assert_same(answer, expected)

    # Killed mid-add: every item ends up stored exactly once.
    ids, vectors = [f"bulk-{i}" for i in range(30000)], _unit(30000, 8, 16, seed=7)
    adding = threading.Thread(target=collection.add, args=(ids, vectors))
    adding.start()
    time.sleep(0.3)
    ray_cluster.kill(handles[2], no_restart=False)
    adding.join(timeout=90)
    assert not adding.is_alive()
    assert sum(collection.shard_sizes()) == N + len(ids)
    stored = collection.ids
    assert len(stored) == len(set(stored)) and set(ids) <= set(stored)

    # An actor that stays down: the search fails naming it, or returns a flagged partial result.
    ray_cluster.kill(handles[0], no_restart=True)
    _wait_until_dead(ray_cluster, handles[0])  # kill() returns first: a search meanwhile may still be answered whole
    with pytest.raises(ShardUnavailableError, match=r"shards \[0\]"):
        collection.search(queries, k=5, budget="2,4", timeout=1.0)
    partial = collection.search(queries, k=5, budget="2,4", timeout=1.0, allow_partial=True)
    assert partial.partial and partial.missing == (0,) and partial.answered == (1, 2)


def test_a_shard_that_cannot_be_opened_fails_at_once(ray_cluster, tmp_path):
    from metaembed.errors import IndexStateError

    ShardedIndex.create(tmp_path / "c", num_shards=1, dim=4, num_vectors=1).close()
    (tmp_path / "c" / "shard-0000" / "catalog.sqlite").unlink()  # the folder is there, the index is not
    started = time.monotonic()
    with pytest.raises(IndexStateError, match="shard 0 could not be opened: .*catalog.sqlite"):
        ShardedIndex.open(tmp_path / "c", backend="ray", num_cpus=0.1)
    assert time.monotonic() - started < 60  # not the 180 s a shard gets to start


def _running(ray, root) -> list[bool]:
    """Whether the keeper and the two shard actors of the collection at ``root`` run."""
    from metaembed.distributed.keeper import NAMESPACE, actor_name, keeper_name

    found = []
    for name in [keeper_name(root), actor_name(root, 0), actor_name(root, 1)]:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
            found.append(True)
        except ValueError:
            found.append(False)
    return found


def _two_shards(root):
    vectors = _unit(6, 2, 4, seed=8)
    with ShardedIndex.create(root, num_shards=2, dim=4, num_vectors=2) as local:
        local.add([f"d{i}" for i in range(6)], vectors)
    return vectors


def test_actors_live_while_any_client_holds_the_collection(ray_cluster, tmp_path):
    root = tmp_path / "c"
    vectors = _two_shards(root)

    def running() -> list[bool]:
        return _running(ray_cluster, root)

    first = ShardedIndex.open(root, backend="ray", num_cpus=0.1)
    serving = [first.backend.submit(s, "process").result(30) for s in range(2)]
    second = ShardedIndex.open(root, backend="ray", num_cpus=0.1)
    first.close()  # the client that started the actors leaves; the other still uses them
    assert second.search(vectors[:1], k=1)[0][0].id == "d0"
    assert [second.backend.submit(s, "process").result(30) for s in range(2)] == serving
    second.close()
    assert running() == [False, False, False]
    dropped = ShardedIndex.open(root, backend="ray", num_cpus=0.1)
    assert running() == [True, True, True]
    del dropped  # garbage collected without close(): its lease goes back too
    import gc

    gc.collect()
    assert running() == [False, False, False]


def test_a_client_killed_without_closing_loses_its_lease_and_a_live_one_keeps_it(ray_cluster, tmp_path):
    import subprocess
    import sys

    root = tmp_path / "c"
    vectors = _two_shards(root)
    address = ray_cluster.get_runtime_context().gcs_address
    client = (f"import time, ray\nray.init(address={address!r}, log_to_driver=False, configure_logging=False)\n"
              "from metaembed.distributed import ShardedIndex\n"
              f"collection = ShardedIndex.open({str(root)!r}, backend='ray', num_cpus=0.1, lease_seconds=3)\n"
              "print(collection.search(collection.vectors(['d0']), k=1)[0][0].id, flush=True)\ntime.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", client], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "d0"  # it opened the collection, started the actors and searched
        assert _running(ray_cluster, root) == [True, True, True]
    finally:
        process.kill()  # no close(), no finaliser: only the lease's expiry can stop the actors
        process.wait()
    deadline = time.monotonic() + 60
    while _running(ray_cluster, root) != [False, False, False] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(ray_cluster, root) == [False, False, False]

    # A live client renews: it outlives several lease times, then close() stops the actors at once.
    collection = ShardedIndex.open(root, backend="ray", num_cpus=0.1, lease_seconds=1.5)
    time.sleep(5)
    assert _running(ray_cluster, root) == [True, True, True]
    assert collection.search(vectors[:1], k=1)[0][0].id == "d0"
    collection.close()
    assert _running(ray_cluster, root) == [False, False, False]
