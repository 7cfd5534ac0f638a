"""Re-ranking shortlists (metaembed/index/search.py) against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaembed.index import MultiVectorIndex
from metaembed.index.search import rerank


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32", "pq4"])
def test_disjoint_shortlists_are_reranked_query_by_query_in_place(dtype):
    generator = torch.Generator().manual_seed(3)
    vectors = torch.nn.functional.normalize(torch.randn(600, 8, 32, generator=generator), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(6, 4, 32, generator=generator), dim=-1)
    with MultiVectorIndex.create(None, dim=32, num_vectors=8, dtype=dtype) as index:
        for start in range(0, 600, 150):  # several segments, so a shortlist spans them
            index.add([f"c{i}" for i in range(start, start + 150)], vectors[start:start + 150])
        views = index._store.views
        stored = index._store.vectors([f"c{i}" for i in range(600)])  # what the index holds, decoded
        order = torch.randperm(600, generator=generator)
        shortlist = order[:6 * 40].view(6, 40).clone()  # disjoint: the per-query path
        shortlist[2, 35:] = -1  # a shorter list
        scores, refs = rerank(views, queries, shortlist, 3, 5, 7)
    similarity = torch.einsum("qid,cjd->qcij", queries[:, :3].double(), stored[:, :5].double())
    full = similarity.amax(dim=3).sum(dim=2)
    for q in range(6):
        mine = shortlist[q][shortlist[q] >= 0]
        expected = full[q, mine].topk(7)
        np.testing.assert_allclose(scores[q].numpy(), expected.values.numpy(), rtol=1e-4, atol=1e-4)
        assert refs[q].tolist() == mine[expected.indices].tolist()
