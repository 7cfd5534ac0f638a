"""A MetaEmbed model through the real sentence-transformers 6 MultiVectorEncoder: same vectors, same scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import MultiVectorEncoder

from metaembed.errors import BudgetError
from metaembed.integrations.sentence_transformers import MetaEmbedModule, to_multi_vector_encoder
from metaembed.model import MetaEmbedModel
from metaembed.model.builtin import builtin_names

QUERIES = ["where is the red square", "two circles", "a long question about the green triangle on the page"]
DOCUMENTS = ["a red square on white", "two blue circles side by side", "the green triangle", "an empty page"]


def _check_parity(encoder: MultiVectorEncoder, model: MetaEmbedModel, budget: str) -> None:
    """encode_query / encode_document / similarity of ``encoder`` against the model's own API at ``budget``."""
    ours_q = model.encode_queries(QUERIES, budget=budget)
    ours_c = model.encode_candidates(DOCUMENTS, budget=budget)
    theirs_q = encoder.encode_query(QUERIES, budget=budget, batch_size=2)
    theirs_c = np.stack(encoder.encode_document(DOCUMENTS, budget=budget, convert_to_numpy=True))
    assert [tuple(q.shape) for q in theirs_q] == [tuple(ours_q.shape[1:])] * len(QUERIES)
    torch.testing.assert_close(torch.stack(theirs_q).cpu(), ours_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(theirs_c), ours_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        encoder.similarity(theirs_q, list(torch.from_numpy(theirs_c))).cpu(), model.similarity(ours_q, ours_c),
        atol=1e-4, rtol=1e-5,
    )


def test_in_memory_encoder_matches_our_api(tiny_qwen2_vl):
    encoder = to_multi_vector_encoder(tiny_qwen2_vl)
    assert encoder.similarity_fn_name == "maxsim" and encoder.get_embedding_dimension() == tiny_qwen2_vl.embedding_dim
    _check_parity(encoder, tiny_qwen2_vl, "2,5")
    # an int is r_q for queries and r_c for documents; no budget keeps every vector
    assert encoder.encode_query(QUERIES[:1], budget=3)[0].shape[0] == 3
    assert encoder.encode_document(DOCUMENTS[:1])[0].shape[0] == tiny_qwen2_vl.num_candidate_tokens
    with pytest.raises(BudgetError, match="budget 9 asks for 9 query vectors"):
        encoder.encode_query(QUERIES, budget=9)


def test_saved_metaembed_folder_loads_in_sentence_transformers(tiny_qwen2_vl, tmp_path):
    tiny_qwen2_vl.save_pretrained(tmp_path / "model")
    modules = json.loads((tmp_path / "model" / "modules.json").read_text())
    assert modules[0]["type"].endswith("MetaEmbedModule") and "budget" in modules[0]["kwargs"]
    encoder = MultiVectorEncoder(str(tmp_path / "model"), device="cpu", trust_remote_code=True)
    assert isinstance(encoder[0], MetaEmbedModule)
    _check_parity(encoder, tiny_qwen2_vl, "4,8")
    _check_parity(encoder, tiny_qwen2_vl, "1,3")


def test_encoder_save_keeps_the_default_budget_and_loads_both_ways(tiny_qwen2_vl, tmp_path):
    to_multi_vector_encoder(tiny_qwen2_vl, budget="2,3").save(str(tmp_path / "st"), create_model_card=False)
    reloaded = MultiVectorEncoder(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    assert reloaded[0].budget == "2,3" and reloaded.module_kwargs["0"] == ["task", "budget"]
    default_q = reloaded.encode_query(QUERIES)
    assert default_q[0].shape[0] == 2
    torch.testing.assert_close(torch.stack(default_q), tiny_qwen2_vl.encode_queries(QUERIES, budget=2), atol=1e-5, rtol=1e-5)
    ours = MetaEmbedModel.from_pretrained(tmp_path / "st")
    torch.testing.assert_close(ours.encode_candidates(DOCUMENTS), tiny_qwen2_vl.encode_candidates(DOCUMENTS))


@pytest.mark.skipif(
    "metaembed-minilm" not in builtin_names(),
    reason="the built-in model metaembed-minilm is not in this installation yet (metaembed/pretrained/)",
)
def test_builtin_model_matches_our_api(tmp_path):
    model = MetaEmbedModel.from_pretrained("metaembed-minilm")
    encoder = to_multi_vector_encoder(model)
    _check_parity(encoder, model, "2,4")
    model.save_pretrained(tmp_path / "minilm")
    _check_parity(MultiVectorEncoder(str(tmp_path / "minilm"), device="cpu", trust_remote_code=True), model, "4,8")


def test_images_go_through_the_vision_backbone(tiny_qwen2_vl, images):
    encoder = to_multi_vector_encoder(tiny_qwen2_vl)
    # sentence-transformers encodes one modality per call
    for inputs in ([images[0], images[2]], [{"text": "a caption", "image": images[1]}]):
        theirs = torch.stack(encoder.encode_document(inputs, budget=6)).cpu()
        torch.testing.assert_close(theirs, tiny_qwen2_vl.encode_candidates(inputs, budget=6), atol=1e-5, rtol=1e-5)
