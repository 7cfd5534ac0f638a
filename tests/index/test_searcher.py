"""The Searcher interface: shards searched separately and merged give the one-index answer."""

from __future__ import annotations

import numpy as np
import torch

from metaembed.index import MultiVectorIndex, Searcher, SearchResult, merge_results
from metaembed.index.topk import blocked_topk

from .conftest import brute_force


def test_two_shards_merged_equal_one_index(corpus) -> None:
    ids, vectors, queries = corpus
    whole = MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32")
    shards = [MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32") for _ in range(2)]
    whole.add(ids, vectors)
    shards[0].add(ids[::2], vectors[::2])
    shards[1].add(ids[1::2], vectors[1::2])
    assert all(isinstance(s, Searcher) for s in [whole, *shards])
    for mode in ("exact", "coarse"):
        one = whole.search(queries, k=6, budget="2,4", mode=mode, shortlist=60)
        merged = merge_results([s.search(queries, k=6, budget="2,4", mode=mode, shortlist=60) for s in shards], k=6)
        assert [[(h.id, h.rank) for h in row] for row in merged] == [[(h.id, h.rank) for h in row] for row in one]
        for row, want in zip(merged, brute_force(queries, vectors, ids, 2, 4, 6)):
            np.testing.assert_allclose([h.score for h in row], [s for _, s in want], atol=1e-5)
    for index in [whole, *shards]:
        index.close()


def test_results_carry_rank_and_a_payload_dict(corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8) as index:
        index.add(ids[:3], vectors[:3], payloads=[{"n": 0}, None, {"n": 2}])
        row = index.search(queries[:1], k=3)[0]
    assert [hit.rank for hit in row] == [1, 2, 3]
    by_id = {hit.id: hit for hit in row}
    assert by_id["doc-1"].payload == {} and by_id["doc-2"].payload == {"n": 2}
    assert row[0].as_dict() == {"rank": 1, "id": row[0].id, "score": row[0].score, "payload": row[0].payload}
    assert isinstance(row[0], SearchResult)


def test_blocked_topk_equals_one_topk_over_everything() -> None:
    scores = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))
    for block, k in ((64, 10), (7, 30), (1000, 1000), (300, 999)):
        pieces = ((scores[:, start : start + block], start) for start in range(0, 1000, block))
        top, refs = blocked_topk(pieces, 5, k)
        want_top, want_refs = scores.topk(k, dim=1)
        torch.testing.assert_close(top, want_top)
        assert torch.equal(refs, want_refs)
