"""ShardedIndex in-process (no Ray): parity with one index, routing of writes, recovery from a dying shard."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from metaembed.distributed import ShardedIndex, is_collection, shard_of
from metaembed.distributed.shard import LocalShards
from metaembed.errors import IndexStateError, InputError, ShardUnavailableError
from metaembed.index import MultiVectorIndex

BUDGETS = ["1,1", "2,4", "4,8"]


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def items():
    ids = [f"doc-{i}" for i in range(300)]
    return ids, _unit(300, 8, 16, seed=1), [{"n": i} for i in range(300)]


@pytest.fixture(scope="module")
def queries():
    return _unit(7, 4, 16, seed=2)


@pytest.fixture(params=["float16", "int8"])
def pair(request, items, tmp_path):
    """The same items in one index and in a 3-shard collection."""
    ids, vectors, payloads = items
    single = MultiVectorIndex.create(tmp_path / "single", dim=16, num_vectors=8, dtype=request.param)
    single.add(ids, vectors, payloads)
    collection = ShardedIndex.create(tmp_path / "sharded", num_shards=3, dim=16, num_vectors=8, dtype=request.param)
    for start in range(0, 300, 70):  # several writes, so shards hold several segments
        collection.add(ids[start : start + 70], vectors[start : start + 70], payloads[start : start + 70])
    yield single, collection
    single.close()
    collection.close()


def assert_same(got, expected):
    """Same hits in the same order (exact ties in either order), scores equal to float32 rounding."""
    assert len(got) == len(expected)
    for row, reference in zip(got, expected):
        assert [h.score for h in row] == pytest.approx([h.score for h in reference], abs=1e-5)
        by_score = lambda hits: sorted((round(h.score, 4), h.id) for h in hits)  # noqa: E731
        assert by_score(row) == by_score(reference)
        assert [h.payload for h in sorted(row, key=lambda h: h.id)] == [h.payload for h in sorted(reference, key=lambda h: h.id)]


@pytest.mark.parametrize("budget", BUDGETS)
def test_exact_search_equals_one_index(pair, queries, budget):
    single, collection = pair
    results = collection.search(queries, k=10, budget=budget)
    assert not results.partial and results.answered == (0, 1, 2)
    assert_same(results, single.search(queries, k=10, budget=budget))


@pytest.mark.parametrize("budget", BUDGETS)
def test_coarse_search_uses_the_collections_shortlist(pair, queries, budget):
    # A shortlist of 15 out of 300: each shard's own best 15 would differ from the collection's best 15,
    # so equality with one index shows the shortlist is merged before the re-ranking.
    single, collection = pair
    got = collection.search(queries, k=5, budget=budget, mode="coarse", shortlist=15)
    assert_same(got, single.search(queries, k=5, budget=budget, mode="coarse", shortlist=15))
    exact = collection.search(queries, k=5, budget=budget)
    assert any([h.id for h in a] != [h.id for h in b] for a, b in zip(got, exact)) or budget == "1,1"


def test_writes_go_to_the_owning_shard(tmp_path, items):
    ids, vectors, payloads = items
    root = tmp_path / "c"
    collection = ShardedIndex.create(root, num_shards=4, dim=16, num_vectors=8, metadata={"model": "m"})
    collection.add(ids[:100], vectors[:100], payloads[:100])
    collection.delete(ids[:10])
    collection.upsert(ids[10:12], vectors[50:52], [{"new": 1}, {"new": 2}])
    collection.close()
    assert is_collection(root) and json.loads((root / "collection.json").read_text())["num_shards"] == 4
    seen = []
    for number in range(4):  # each shard folder is an ordinary index holding exactly its ids
        with MultiVectorIndex.open(root / f"shard-{number:04d}") as shard:
            assert shard.metadata == {"model": "m"}
            assert all(shard_of(i, 4) == number for i in shard.ids)
            seen += shard.ids
            if "doc-10" in shard:
                torch.testing.assert_close(shard.vectors(["doc-10"]), vectors[50:51].half().float())
    assert sorted(seen) == sorted(ids[10:100])
    reopened = ShardedIndex.open(root)
    assert len(reopened) == 90 and "doc-5" not in reopened and "doc-50" in reopened
    # doc-10 now holds doc-50's vectors: the two tie at the top (which of equal scores comes first is not promised)
    top = {hit.id: hit for hit in reopened.search(vectors[50], k=2, budget="4,8")[0]}
    assert top.keys() == {"doc-10", "doc-50"} and top["doc-10"].score == top["doc-50"].score
    assert top["doc-10"].payload == {"new": 1} and top["doc-50"].payload == {"n": 50}
    reopened.close()


def test_a_bad_write_stores_nothing_in_any_shard(tmp_path, items):
    ids, vectors, _ = items
    collection = ShardedIndex.create(tmp_path / "c", num_shards=3, dim=16, num_vectors=8)
    collection.add(ids[:5], vectors[:5])
    with pytest.raises(IndexStateError, match="doc-4"):
        collection.add(ids[4:40], vectors[4:40])  # doc-4 exists: its shard would refuse, the others must not commit
    bad = vectors[10:20].clone()
    bad[7, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        collection.add(ids[10:20], bad)
    with pytest.raises(InputError, match="dimension"):
        collection.add(["x"], torch.zeros(1, 8, 15))
    with pytest.raises(IndexStateError, match="nope"):
        collection.delete(["doc-0", "nope"])
    assert len(collection) == 5 and collection.shard_sizes() != [5, 0, 0]
    collection.close()


def test_placement_is_a_stable_hash_not_pythons():
    assert shard_of("report.pdf#page=3", 7) == int.from_bytes(hashlib.blake2b(b"report.pdf#page=3", digest_size=8).digest(), "big") % 7
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"item-{i}", 4)] += 1
    assert min(counts) > 900  # spread evenly: 1000 expected per shard


def test_open_refuses_what_is_not_a_collection(tmp_path):
    MultiVectorIndex.create(tmp_path / "plain", dim=4, num_vectors=1).close()
    with pytest.raises(IndexStateError, match="not a sharded collection"):
        ShardedIndex.open(tmp_path / "plain")
    ShardedIndex.create(tmp_path / "c", num_shards=2, dim=4, num_vectors=1).close()
    with pytest.raises(IndexStateError, match="not empty"):
        ShardedIndex.create(tmp_path / "c", num_shards=2, dim=4, num_vectors=1)
    (tmp_path / "c" / "shard-0001" / "catalog.sqlite").unlink()
    with pytest.raises(IndexStateError, match="shard-0001"):
        ShardedIndex.open(tmp_path / "c")


class DyingShards(LocalShards):
    """Local shards where a chosen shard 'dies' on a chosen call: before running it, or after (reply lost)."""

    def __init__(self, paths, shard, method, after, times=1, ready=True):
        super().__init__(paths)
        self.plan = dict(shard=shard, method=method, after=after, times=times)
        self.ready = ready
        self.calls = 0

    def submit(self, shard, method, *args):
        plan = self.plan
        if shard == plan["shard"] and method == plan["method"] and plan["times"] > 0:
            plan["times"] -= 1
            self.calls += 1
            if plan["after"]:
                super().submit(shard, method, *args).result(None)  # the commit lands, the answer is lost
            error = ShardUnavailableError(f"shard {shard} died", [shard])

            class Lost:
                def result(self, timeout):
                    raise error

            return Lost()
        return super().submit(shard, method, *args)

    def wait_ready(self, shard, timeout):
        return self.ready


@pytest.mark.parametrize("after", [False, True], ids=["died-before-commit", "died-after-commit"])
def test_a_shard_dying_mid_add_loses_and_duplicates_nothing(tmp_path, items, after):
    ids, vectors, payloads = items
    root = tmp_path / "c"
    ShardedIndex.create(root, num_shards=3, dim=16, num_vectors=8).close()
    from metaembed.distributed.collection import Manifest

    backend = DyingShards(Manifest.read(root).shard_paths(root), shard=1, method="add", after=after)
    collection = ShardedIndex.open(root, backend=backend)
    collection.add(ids[:60], vectors[:60], payloads[:60])
    assert backend.calls == 1
    collection.close()
    with MultiVectorIndex.open(root / "shard-0001") as shard:
        mine = [i for i in ids[:60] if shard_of(i, 3) == 1]
        assert sorted(shard.ids) == sorted(mine) and len(shard.ids) == len(set(shard.ids))
    with ShardedIndex.open(root) as reopened:
        assert sorted(reopened.ids) == sorted(ids[:60])


def test_a_shard_that_stays_down_fails_the_search_or_is_flagged(tmp_path, items, queries):
    ids, vectors, payloads = items
    root = tmp_path / "c"
    with ShardedIndex.create(root, num_shards=3, dim=16, num_vectors=8) as collection:
        collection.add(ids, vectors, payloads)
    from metaembed.distributed.collection import Manifest

    paths = Manifest.read(root).shard_paths(root)
    for mode in ("exact", "coarse"):
        method = "search" if mode == "exact" else "first_stage"
        down = ShardedIndex.open(root, backend=DyingShards(paths, shard=2, method=method, after=False, times=99, ready=False))
        with pytest.raises(ShardUnavailableError, match=r"shards \[2\]") as raised:
            down.search(queries, k=5, budget="2,4", mode=mode, shortlist=20, timeout=0.2)
        assert raised.value.shards == (2,)
        partial = down.search(queries, k=5, budget="2,4", mode=mode, shortlist=20, timeout=0.2, allow_partial=True)
        assert partial.partial and partial.missing == (2,) and partial.answered == (0, 1)
        assert all(shard_of(hit.id, 3) != 2 for row in partial for hit in row)
        down.close()
    # A shard that comes back within the timeout is asked again: the answer is whole.
    flaky = ShardedIndex.open(root, backend=DyingShards(paths, shard=0, method="search", after=False, times=1))
    with ShardedIndex.open(root) as healthy:
        assert_same(flaky.search(queries, k=5, budget="2,4"), healthy.search(queries, k=5, budget="2,4"))
    flaky.close()


def test_search_checks_its_arguments_once(tmp_path):
    with ShardedIndex.create(None, num_shards=2, dim=4, num_vectors=2) as collection:
        with pytest.raises(InputError, match="dimension"):
            collection.search(torch.zeros(1, 2, 5))
        with pytest.raises(InputError, match="mode"):
            collection.search(torch.zeros(1, 2, 4), mode="fast")
        with pytest.raises(Exception, match="candidate vectors"):
            collection.search(torch.zeros(1, 2, 4), budget="1,3")
        assert collection.search(torch.ones(2, 2, 4), k=3) == [[], []]


@pytest.mark.parametrize("mode", ["exact", "coarse"])
def test_payload_filter_and_payloads_equal_one_index(pair, queries, mode):
    single, collection = pair
    spec = {"n": {"in": list(range(0, 300, 7))}}
    got = collection.search(queries, k=9, budget="2,4", mode=mode, shortlist=20, filter=spec)
    assert_same(got, single.search(queries, k=9, budget="2,4", mode=mode, shortlist=20, filter=spec))
    assert all(h.payload["n"] % 7 == 0 for row in got for h in row) and all(len(row) == 9 for row in got)
    assert collection.payloads(["doc-5", "doc-250", "nope"]) == {"doc-5": {"n": 5}, "doc-250": {"n": 250}}
