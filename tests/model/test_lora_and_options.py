"""LoRA (trainable set, save/load), shared Meta Tokens, projection, dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metaembed.model import MetaEmbedModel
from metaembed.model.testing import tiny_model

ITEMS = ["a red square", "a green rectangle with some text"]


def _perturb_lora(model):
    # LoRA B starts at zero (a no-op); give it values so the adapter changes the output
    with torch.no_grad():
        for name, parameter in model.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)


def test_lora_trains_only_adapters_meta_tokens_and_projection():
    model = tiny_model("qwen2_vl", projection_dim=16, seed=1)
    model.add_lora(r=4, alpha=8, dropout=0.0)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "meta_tokens.embedding.weight" in trainable
    assert {"projection.weight", "projection.bias"} <= trainable
    backbone_trainable = {name for name in trainable if name.startswith("backbone.")}
    assert backbone_trainable and all("lora_" in name for name in backbone_trainable)
    # the language model's q/k/v/o/gate/up/down get adapters; the vision tower none
    assert all("language_model" in name for name in backbone_trainable)
    targets = {name.split(".")[-4] for name in backbone_trainable}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with pytest.raises(Exception, match="already has LoRA"):
        model.add_lora()


def test_lora_changes_embeddings_and_round_trips(tmp_path, images):
    model = tiny_model("qwen2_vl", seed=2)
    before = model.encode_candidates(ITEMS + [images[0]])
    model.add_lora(r=4, alpha=8, dropout=0.0)
    torch.testing.assert_close(model.encode_candidates(ITEMS + [images[0]]), before)  # B = 0: no-op
    _perturb_lora(model)
    after = model.encode_candidates(ITEMS + [images[0]])
    assert (after - before).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "lora_adapter" / "adapter_config.json").is_file()
    loaded = MetaEmbedModel.from_pretrained(tmp_path / "lora")
    assert loaded.peft_model is not None
    assert torch.equal(loaded.encode_candidates(ITEMS + [images[0]]), after)
    assert torch.equal(loaded.encode_queries(ITEMS), model.encode_queries(ITEMS))
    # the saved backbone holds the base weights under their own names, no LoRA tensors
    from safetensors import safe_open

    with safe_open(str(tmp_path / "lora" / "backbone" / "model.safetensors"), "pt") as saved:
        keys = set(saved.keys())
        assert not any("lora_" in key or "base_layer" in key for key in keys)
        q_proj = "language_model.layers.0.self_attn.q_proj.weight"
        base_layer = model.backbone.get_submodule("language_model.layers.0.self_attn.q_proj").base_layer
        assert torch.equal(saved.get_tensor(q_proj), base_layer.weight)


def test_gradient_flows_through_lora_into_meta_tokens():
    model = tiny_model("qwen2", seed=3)
    model.add_lora(r=2, alpha=2, dropout=0.0)
    model.train()
    out = model(model.prepare(ITEMS, "query"), "query")
    out.sum().backward()
    assert model.meta_tokens.weight.grad.abs().sum() > 0
    lora_a = [p.grad for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert lora_a and all(g is not None for g in lora_a)
    frozen = [p for n, p in model.backbone.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)


def test_shared_meta_tokens_use_one_set_for_both_sides():
    model = tiny_model("qwen2", num_query_tokens=4, num_candidate_tokens=4, shared_meta_tokens=True)
    assert model.meta_tokens.num_rows == 4
    query_length = model.prepare(["x"], "query")["input_ids"].shape[1]
    candidate_length = model.prepare(["x"], "candidate")["input_ids"].shape[1]
    prefix = len(model.tokenizer("Query: ", add_special_tokens=False)["input_ids"])
    assert query_length == candidate_length + prefix + 11  # both carry the 4 shared rows; + 10 augmentation + "\n"
    assert model.encode_queries(ITEMS).shape == model.encode_candidates(ITEMS).shape == (2, 4, 64)


def test_projection_and_custom_template_round_trip(tmp_path):
    from metaembed.model.templates import PromptTemplate

    template = PromptTemplate(
        prompt="[CLS]{images}{prefix}{text}[SEP]", image_placeholder="", query_prefix="search: ", query_suffix=""
    )
    model = tiny_model("bert", projection_dim=24, seed=4, template=template)
    assert model.tokenizer.decode(model.prepare(["a cat"], "query")["input_ids"][0, :-12]) == "[CLS] search : a cat [SEP]"
    assert model.embedding_dim == 24
    embeddings = model.encode_candidates(ITEMS)
    assert embeddings.shape == (2, 8, 24)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2, 8))
    model.save_pretrained(tmp_path / "bert")
    loaded = MetaEmbedModel.from_pretrained(tmp_path / "bert")
    # evaluation reports and caches name a loaded model by where it came from
    assert (model.name_or_path, loaded.name_or_path) == (None, str(tmp_path / "bert"))
    assert loaded.template == template
    assert torch.equal(loaded.encode_candidates(ITEMS), embeddings)
    assert torch.equal(loaded.encode_queries(ITEMS), model.encode_queries(ITEMS))


def test_dtype_on_load(tmp_path):
    model = tiny_model("qwen2", seed=5)
    model.save_pretrained(tmp_path / "m")
    half = MetaEmbedModel.from_pretrained(tmp_path / "m", dtype="bfloat16")
    assert next(half.backbone.parameters()).dtype == torch.bfloat16
    out = half.encode_queries(ITEMS)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model.encode_queries(ITEMS), atol=0.1, rtol=0.1)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("qwen2_vl", seed=6)
        torch.manual_seed(0)  # the same LoRA init in both runs
        model.add_lora(r=2, alpha=2, dropout=0.0)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        batch = model.prepare(ITEMS, "candidate")
        model(batch, "candidate")[:, :, 0].sum().backward()
        lora_grad = next(p.grad for n, p in model.backbone.named_parameters() if "lora_B" in n)
        grads.append((model.meta_tokens.weight.grad.clone(), lora_grad.clone()))
    for without, with_checkpointing in zip(*grads):
        assert without.abs().sum() > 0
        torch.testing.assert_close(with_checkpointing, without, atol=1e-6, rtol=1e-5)


def test_from_pretrained_takes_a_hub_id(tmp_path, monkeypatch):
    """A MetaEmbed model on the Hub is fetched by id (the download is faked: no network here)."""
    import huggingface_hub

    model = tiny_model("qwen2", seed=7)
    model.save_pretrained(tmp_path / "snapshot")
    asked = []

    def fake_download(repo_id, filename):
        asked.append((repo_id, filename))
        return str(tmp_path / "snapshot" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: str(tmp_path / "snapshot"))
    loaded = MetaEmbedModel.from_pretrained("someone/metaembed-tiny")
    assert asked == [("someone/metaembed-tiny", "metaembed_config.json")]
    assert torch.equal(loaded.encode_queries(ITEMS), model.encode_queries(ITEMS))


def test_a_plain_backbone_folder_gets_fresh_meta_tokens(tmp_path, caplog, images):
    """A Hugging Face model folder (weights + tokenizer + image processor) becomes a MetaEmbed model."""
    from transformers import Qwen2VLForConditionalGeneration

    from metaembed.model.testing import tiny_backbone_config

    config, processor_dir = tiny_backbone_config("qwen2_vl")
    Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (tmp_path / "hf" / name).write_bytes((Path(processor_dir) / name).read_bytes())
    with caplog.at_level("WARNING"):
        model = MetaEmbedModel.from_pretrained(tmp_path / "hf")
    assert "freshly initialised" in caplog.text
    assert model.config.family == "qwen2_vl"
    assert (model.num_query_tokens, model.num_candidate_tokens, model.embedding_dim) == (16, 64, 64)
    assert model.encode_candidates([images[0], "text"]).shape == (2, 64, 64)
