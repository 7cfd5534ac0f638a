"""Checkpoints of the official MetaEmbed code load into MetaEmbedModel with the same embeddings.

The test builds a tiny checkpoint the way the official training does (a
``Qwen2_5_VLForConditionalGeneration`` subclass holding ``prompt_embed_tokens``
and ``custom_text_proj``, wrapped by peft with the official LoRA config and
``modules_to_save``) and compares against an independent re-implementation of
the official forward: official prompt strings, left padding, ``1`` ids appended
on the right, the last rows of the embedding output overwritten, 3-D rope
positions on the extended ids, slices ``[-N:-N_doc]`` / ``[-N_doc:]``.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from metaembed.model import MetaEmbedModel
from metaembed.model.convert_official import is_official_checkpoint
from metaembed.model.testing import tiny_backbone_config

N_QUERY, N_DOC, DIM = 4, 8, 16


class OfficialLastQwen2_5(Qwen2_5_VLForConditionalGeneration):
    """A minimal stand-in for the official ``LastQwen2_5`` (same parameter names)."""

    def __init__(self, config):
        super().__init__(config)
        self.prompt_embed_tokens = nn.Embedding(N_QUERY + N_DOC, config.text_config.hidden_size)
        self.custom_text_proj = nn.Linear(config.text_config.hidden_size, DIM)
        self.post_init()

    def embed(self, input_ids, attention_mask, pixel_values=None, image_grid_thw=None, is_query=False):
        n_added = N_QUERY + N_DOC
        ones = torch.ones(input_ids.shape[0], n_added, dtype=input_ids.dtype)
        input_ids = torch.cat([input_ids, ones], dim=1)
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        embed_tokens = self.model.language_model.embed_tokens
        original = embed_tokens.forward

        def combined_embedding_forward(ids):
            embeds = original(ids).clone()
            embeds[:, -n_added:] = self.prompt_embed_tokens(torch.arange(n_added))
            return embeds

        mm_token_type_ids = (input_ids == self.config.image_token_id).int()
        position_ids, _ = self.model.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        embed_tokens.forward = combined_embedding_forward
        try:
            hidden = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                pixel_values=pixel_values,
                image_grid_thw=image_grid_thw,
                mm_token_type_ids=mm_token_type_ids,
            ).last_hidden_state
        finally:
            embed_tokens.forward = original
        hidden = hidden[:, -n_added:-N_DOC] if is_query else hidden[:, -N_DOC:]
        projected = self.custom_text_proj(hidden)
        return projected / projected.norm(dim=-1, keepdim=True)


def official_inputs(tokenizer, image_processor, items, is_query):
    """The official ``use_simple_prompt`` processor: prompts, image-pad expansion, left padding."""
    prefix = "Query: " if is_query else ""
    rows, pixel_values, grids = [], [], []
    for text, image in items:
        vision = "<|vision_start|><|image_pad|><|vision_end|>" if image is not None else ""
        body = text if text else "Describe the image."
        prompt = f"<|im_start|>user\n{vision}{prefix}{body}<|im_end|><|endoftext|>"
        if is_query:
            prompt += "<|endoftext|>" * 10 + "\n"
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if image is not None:
            size = {"shortest_edge": 56 * 56, "longest_edge": 16 * 28 * 28}  # at most 16 merged tokens
            out = image_processor(images=[image], size=size, return_tensors="pt")
            n = int(out["image_grid_thw"].prod()) // 4
            pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
            at = ids.index(pad)
            ids = ids[:at] + [pad] * n + ids[at + 1 :]
            pixel_values.append(out["pixel_values"])
            grids.append(out["image_grid_thw"])
        rows.append(ids)
    length = max(map(len, rows))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    images = dict(pixel_values=torch.cat(pixel_values), image_grid_thw=torch.cat(grids)) if grids else {}
    return dict(input_ids=input_ids, attention_mask=attention_mask, **images)


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    config, processor_dir = tiny_backbone_config("qwen2_5_vl")
    torch.manual_seed(0)
    model = OfficialLastQwen2_5(config)
    base = root / "colqwen2.5-base"
    model.save_pretrained(str(base))
    AutoTokenizer.from_pretrained(processor_dir).save_pretrained(str(base))
    Qwen2VLImageProcessorPil.from_pretrained(processor_dir).save_pretrained(str(base))
    model = OfficialLastQwen2_5.from_pretrained(str(base))  # as the official trainer does
    lora = LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.1, init_lora_weights="gaussian", bias="none",
        task_type="FEATURE_EXTRACTION",
        target_modules="(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$)",
        modules_to_save=["prompt_embed_tokens", "custom_text_proj"],
    )  # fmt: skip
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # "training": move the adapters and the trained copies away from their init
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    peft_model.save_pretrained(str(root / "adapter"))
    peft_model.eval()
    return root, peft_model, base


ITEMS = [
    ("a cat on a sofa", None),
    ("what colour is this?", "image"),
    ("", "image"),
    ("a longer text about quarterly revenue growth", None),
]


def _items(images):
    return [(text, images[i % 2] if image else None) for i, (text, image) in enumerate(ITEMS)]


def _our_items(items):
    return [(img if not text else {"text": text, "image": img}) if img is not None else text for text, img in items]


def test_adapter_checkpoint_gives_the_official_embeddings(official_checkpoint, images):
    root, peft_model, base = official_checkpoint
    assert is_official_checkpoint(root / "adapter") and not is_official_checkpoint(root)
    # the test images are processed with a 16-token cap on both sides
    ours = MetaEmbedModel.from_official(
        root / "adapter", num_query_tokens=N_QUERY, num_candidate_tokens=N_DOC, max_visual_tokens=16
    )
    assert ours.config.family == "qwen2_5_vl" and ours.embedding_dim == DIM
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(base))
    items = _items(images)
    official = peft_model.base_model.model
    for is_query in (True, False):
        with torch.no_grad():
            expected = official.embed(**official_inputs(tokenizer, image_processor, items, is_query), is_query=is_query)
        got = ours.encode_queries(_our_items(items)) if is_query else ours.encode_candidates(_our_items(items))
        assert got.shape == (len(items), N_QUERY if is_query else N_DOC, DIM)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    # the LoRA matters: without it the embeddings differ
    with torch.no_grad(), peft_model.disable_adapter():
        plain = official.embed(**official_inputs(tokenizer, image_processor, items, False), is_query=False)
    assert (plain - got).abs().max() > 1e-3


def test_lora_reaches_the_vision_tower_like_the_official_regex(official_checkpoint):
    root, _, _ = official_checkpoint
    ours = MetaEmbedModel.from_official(root / "adapter", num_query_tokens=N_QUERY, num_candidate_tokens=N_DOC)
    lora_modules = {name.rsplit(".lora_", 1)[0] for name, _ in ours.backbone.named_parameters() if ".lora_A." in name}
    assert any(name.startswith("visual.blocks.0.mlp.") for name in lora_modules)
    assert "language_model.layers.1.self_attn.q_proj" in lora_modules


def test_merged_full_checkpoint_and_round_trip(official_checkpoint, images, tmp_path):
    root, peft_model, _ = official_checkpoint
    merged_dir = tmp_path / "merged"
    import copy

    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(str(merged_dir))
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (merged_dir / name).write_bytes((root / "colqwen2.5-base" / name).read_bytes())
    options = dict(num_query_tokens=N_QUERY, num_candidate_tokens=N_DOC, max_visual_tokens=16)
    ours = MetaEmbedModel.from_official(merged_dir, **options)
    from_adapter = MetaEmbedModel.from_official(root / "adapter", **options)
    items = _our_items(_items(images))
    expected = from_adapter.encode_candidates(items)
    torch.testing.assert_close(ours.encode_candidates(items), expected, atol=2e-5, rtol=1e-4)
    # once converted, it saves and loads in MetaEmbed's own format exactly
    from_adapter.save_pretrained(tmp_path / "converted")
    reloaded = MetaEmbedModel.from_pretrained(tmp_path / "converted")
    assert torch.equal(reloaded.encode_queries(items), from_adapter.encode_queries(items))


def test_wrong_token_counts_are_refused(official_checkpoint):
    root, _, _ = official_checkpoint
    from metaembed.errors import InputError

    with pytest.raises(InputError, match="has 12 rows.*from_official"):
        MetaEmbedModel.from_pretrained(root / "adapter")  # detected as official; default counts 16 + 64


@pytest.mark.parametrize(
    "official_name, ours",
    [
        ("model.language_model.layers.0.self_attn.q_proj", "language_model.layers.0.self_attn.q_proj"),
        ("model.visual.blocks.3.mlp.gate_proj", "visual.blocks.3.mlp.gate_proj"),
        ("model.layers.2.mlp.down_proj", "language_model.layers.2.mlp.down_proj"),  # transformers < 4.52
        ("visual.blocks.0.attn.qkv", "visual.blocks.0.attn.qkv"),  # transformers < 4.52
        ("model.embed_tokens", "language_model.embed_tokens"),
    ],
)
def test_official_names_map_to_backbone_names(official_name, ours):
    from metaembed.model.convert_official import to_backbone_name

    assert to_backbone_name(official_name) == ours
