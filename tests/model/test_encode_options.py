"""The sentence-transformers keywords of encode_queries / encode_candidates, and similarity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from metaembed.errors import InputError
from metaembed.model.items import Item

TEXTS = ["a red square on white", "two blue circles", "the green triangle", "an empty page"]


def test_keywords_match_the_plain_call(tiny_qwen2_vl):
    model = tiny_qwen2_vl
    plain = model.encode_queries(TEXTS)
    as_numpy = model.encode_queries(TEXTS, convert_to_numpy=True, batch_size=3, show_progress_bar=False)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_allclose(as_numpy, plain.numpy(), atol=1e-5)
    # convert_to_tensor wins over convert_to_numpy, as in sentence-transformers
    both = model.encode_candidates(TEXTS, convert_to_numpy=True, convert_to_tensor=True, device="cpu")
    assert isinstance(both, torch.Tensor) and both.shape == (4, 8, model.embedding_dim)
    normalised = model.encode_candidates(TEXTS, normalize_embeddings=True, budget="2,3")
    torch.testing.assert_close(normalised, both[:, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.norm(dim=-1), torch.ones(4, 3))


def test_prompt_is_the_instruction_and_prompt_name_looks_it_up(tiny_qwen2_vl):
    model = tiny_qwen2_vl
    instruction = "Find the picture this sentence describes"
    by_hand = model.encode_queries([Item(text=t, instruction=instruction) for t in TEXTS])
    torch.testing.assert_close(model.encode_queries(TEXTS, prompt=instruction), by_hand)
    assert not torch.allclose(model.encode_queries(TEXTS), by_hand)
    original = model.config
    model.config = dataclasses.replace(original, prompts={"describe": instruction})
    try:
        torch.testing.assert_close(model.encode_queries(TEXTS, prompt_name="describe"), by_hand)
        with pytest.raises(InputError, match="unknown prompt_name 'nope'.*describe"):
            model.encode_queries(TEXTS, prompt_name="nope")
    finally:
        model.config = original
    with pytest.raises(InputError, match="at most one of instruction, prompt"):
        model.encode_queries(TEXTS, prompt="x", instruction="y")


def test_progress_bar_says_queries_and_candidates(tiny_qwen2_vl, capsys):
    tiny_qwen2_vl.encode_queries(TEXTS, batch_size=2, show_progress_bar=True)
    tiny_qwen2_vl.encode_candidates(TEXTS, batch_size=2, show_progress_bar=True)
    shown = capsys.readouterr().err
    assert "encoding queries" in shown and "encoding candidates" in shown and "querys" not in shown
    with pytest.deprecated_call():
        tiny_qwen2_vl.encode_queries(TEXTS[:1], show_progress=False)


def test_similarity_is_budgeted_maxsim(tiny_qwen2_vl):
    model = tiny_qwen2_vl
    queries, candidates = model.encode_queries(TEXTS), model.encode_candidates(TEXTS)
    # naive reference: for each query vector the best candidate vector, summed
    dots = torch.einsum("qid,cjd->qcij", queries[:, :2], candidates[:, :5])
    reference = dots.max(dim=-1).values.sum(dim=-1)
    torch.testing.assert_close(model.similarity(queries, candidates, budget="2,5"), reference)
    torch.testing.assert_close(model.similarity(queries[0], candidates, budget=(2, 5)), reference[:1])
    full = torch.einsum("qid,cjd->qcij", queries, candidates).max(dim=-1).values.sum(dim=-1)
    torch.testing.assert_close(model.similarity(queries, candidates), full)
