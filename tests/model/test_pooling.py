"""Baseline pooling modes against naive per-item references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metaembed.model.pooling import chunk_means
from metaembed.model.testing import tiny_model

ITEMS = ["a red square", "a much longer description of a green rectangle on a dark background with text"]


@pytest.fixture(scope="module")
def pooled_models():
    modes = ("last_token", "mean", "chunks")
    return {mode: tiny_model("qwen2", pooling=mode, num_query_tokens=3, num_candidate_tokens=5) for mode in modes}


def _hidden(model, item, side):
    batch = model.prepare([item], side)
    with torch.no_grad():
        return model.adapter.run(batch)[0]  # (L, H), no padding


@pytest.mark.parametrize("side", ["query", "candidate"])
def test_pooling_modes_match_naive_references(pooled_models, side):
    for mode, model in pooled_models.items():
        got = model.encode_queries(ITEMS) if side == "query" else model.encode_candidates(ITEMS)
        for row, item in enumerate(ITEMS):
            hidden = _hidden(model, item, side)
            if mode == "last_token":
                expected = hidden[-1:]
            elif mode == "mean":
                expected = hidden.mean(dim=0, keepdim=True)
            else:
                count = 3 if side == "query" else 5
                expected = torch.stack([chunk.mean(dim=0) for chunk in torch.tensor_split(hidden, count)])
            torch.testing.assert_close(got[row], F.normalize(expected, dim=-1), atol=2e-5, rtol=1e-4)


def test_single_vector_modes_have_one_vector_and_no_meta_tokens(pooled_models):
    for mode in ("last_token", "mean"):
        model = pooled_models[mode]
        assert model.meta_tokens is None
        assert model.num_query_tokens == model.num_candidate_tokens == 1
        assert model.encode_queries(ITEMS).shape == (2, 1, 64)
    chunks = pooled_models["chunks"]
    assert chunks.encode_candidates(ITEMS).shape == (2, 5, 64)
    # no Meta Token slots: the prepared ids end with the prompt itself
    mean = pooled_models["mean"]
    assert chunks.prepare(["x"], "candidate")["input_ids"].shape == mean.prepare(["x"], "candidate")["input_ids"].shape


def test_chunks_with_padding_and_fewer_tokens_than_chunks():
    hidden = torch.arange(2 * 6 * 1, dtype=torch.float32).view(2, 6, 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    pooled = chunk_means(hidden, mask, 2)
    # row 0: real tokens 3,4,5 -> [3,4] and [5]; row 1: real 6..10 -> [6,7,8] and [9,10]
    torch.testing.assert_close(pooled[:, :, 0], torch.tensor([[3.5, 5.0], [7.0, 9.5]]))
    fewer = chunk_means(hidden, mask, 4)[0, :, 0]  # 3 real tokens, 4 chunks: the last repeats the last token
    torch.testing.assert_close(fewer, torch.tensor([3.0, 4.0, 5.0, 5.0]))
