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


@pytest.fixture
def corpus() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """60 candidates of 8 vectors, 5 queries of 4 vectors, D = 16."""
    ids = [f"doc-{i}" for i in range(60)]
    return ids, unit_vectors(0, 60, 8, 16), unit_vectors(1, 5, 4, 16)
