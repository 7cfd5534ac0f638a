"""Shared helpers for index tests: random unit vectors and a brute-force top-k reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaembed.index.codecs import get_codec


def unit_vectors(seed: int, *shape: int) -> torch.Tensor:
    values = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return values / values.norm(dim=-1, keepdim=True)


def stored_values(vectors: torch.Tensor, dtype: str) -> torch.Tensor:
    """What an index of ``dtype`` holds for ``vectors``: the round trip through the storage precision."""
    codec = get_codec(dtype)
    codes, scales = codec.encode(vectors)
    return codec.decode(codes, scales)


def brute_force(queries: torch.Tensor, candidates: torch.Tensor, ids: list[str], r_q: int, r_c: int, k: int):
    """Top-k ``(id, score)`` per query by float64 einsum MaxSim: independent of the scoring kernel."""
    q = queries[:, :r_q].double()
    c = candidates[:, :r_c].double()
    scores = torch.einsum("qid,cjd->qcij", q, c).amax(dim=3).sum(dim=2)
    out = []
    for row in scores:
        order = np.argsort(-row.numpy(), kind="stable")[:k]
        out.append([(ids[i], float(row[i])) for i in order])
    return out


def built_in_two_adds(path, dtype: str, ids: list[str], candidates: torch.Tensor, first: int):
    """An index of ``candidates`` ``(N, R, D)`` in ``dtype``, added as ``[:first]`` (a trained codec's sample) then the rest."""
    from metaembed.index import MultiVectorIndex

    index = MultiVectorIndex.create(path, dim=candidates.shape[-1], num_vectors=candidates.shape[1], dtype=dtype)
    index.add(ids[:first], candidates[:first])
    index.add(ids[first:], candidates[first:])
    return index


def search_matches_brute_force(index, queries: torch.Tensor, decoded: torch.Tensor, ids: list[str]) -> None:
    """Exact search at (1,1), (2,4), (4,8) returns brute force's top 10 over ``decoded`` (ids and scores)."""
    from metaembed.budget import Budget

    for budget in (Budget(1, 1), Budget(2, 4), Budget(4, 8)):
        found = index.search_batch(queries[:, : budget.r_q], 10, budget)
        expected = brute_force(queries, decoded, ids, budget.r_q, budget.r_c, 10)
        for hits, reference in zip(found, expected):
            assert [h.id for h in hits] == [i for i, _ in reference]
            np.testing.assert_allclose([h.score for h in hits], [s for _, s in reference], rtol=1e-5, atol=1e-5)


def survives_merge_save_and_reopen(index, ids: list[str], candidates: torch.Tensor, queries: torch.Tensor, deleted: int,
                                   copy) -> None:
    """Delete and re-add ``ids[:deleted]`` (a mostly-deleted segment is rewritten: codes copied, not re-encoded),
    save to ``copy``, close; the reopened copy is clean, trained, and returns the same top 5 at (4,8)."""
    from metaembed.budget import Budget
    from metaembed.index import MultiVectorIndex

    dtype = index.dtype
    before = [[(h.id, h.score) for h in row] for row in index.search_batch(queries, 5, Budget(4, 8))]
    index.delete(ids[:deleted])
    index.add(ids[:deleted], candidates[:deleted])  # later adds use the same codebooks
    index.save(copy)
    assert len(list(copy.glob("codec-*.npz"))) == 1
    index.close()
    with MultiVectorIndex.open(copy) as reopened:
        assert reopened.dtype == dtype and reopened.training_items == 0
        after = [[(h.id, h.score) for h in row] for row in reopened.search_batch(queries, 5, Budget(4, 8))]
        assert MultiVectorIndex.check(copy) == []
    assert [[i for i, _ in row] for row in after] == [[i for i, _ in row] for row in before]
    np.testing.assert_allclose([s for row in after for _, s in row], [s for row in before for _, s in row], rtol=1e-6)


@pytest.fixture
def corpus() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """60 candidates of 8 vectors, 5 queries of 4 vectors, D = 16."""
    ids = [f"doc-{i}" for i in range(60)]
    return ids, unit_vectors(0, 60, 8, 16), unit_vectors(1, 5, 4, 16)
