"""The bert_vision backbone family (frozen BERT text states + image patches + fusion encoder)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import BertConfig

from metaembed.errors import InputError
from metaembed.model import MetaEmbedConfig, MetaEmbedModel
from metaembed.model.backbones.bert_vision import (
    BertVisionAdapter,
    BertVisionConfig,
    BertVisionModel,
    image_to_patches,
)
from metaembed.quickstart.recipe import minilm_folder


@pytest.fixture(scope="module")
def model() -> MetaEmbedModel:
    folder = str(minilm_folder())  # the real MiniLM WordPiece vocabulary, shipped in a wheel
    text = BertConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128)
    backbone_config = BertVisionConfig(text_config=text.to_dict(), fusion_layers=2, fusion_width=32,
                                       fusion_heads=4, image_size=16, patch_size=8)
    config = MetaEmbedConfig(backbone=backbone_config, processor=folder, family="bert_vision",
                             num_query_tokens=2, num_candidate_tokens=4, projection_dim=16)
    torch.manual_seed(0)
    return MetaEmbedModel.from_config(config).eval()


def _image(seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(20, 24, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def test_image_patches_are_row_major_pixel_blocks():
    image = _image(1)
    patches = image_to_patches(image, image_size=16, patch_size=8)
    pixels = torch.tensor(list(image.resize((16, 16), Image.Resampling.BILINEAR).getdata()), dtype=torch.float32)
    pixels = pixels.view(16, 16, 3) / 255  # (y, x, channel)
    top_right = pixels[0:8, 8:16].permute(2, 0, 1).reshape(-1)  # patch 1: first row, second column
    torch.testing.assert_close(patches[1], top_right)
    assert patches.shape == (4, 3 * 64)


def test_text_states_are_the_text_encoders_on_the_text_alone(model):
    batch = model.prepare(["a short query", "a much longer query with many more words"], "query")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    adapter = model.adapter
    text = mask.bool() & (ids != adapter.meta_slot_id) & (ids != adapter.image_token_id)
    inputs = adapter.input_embeddings()(ids, text)
    row = 0
    alone = ids[row][text[row]][None]
    reference = model.backbone.inputs.text_encoder(input_ids=alone).last_hidden_state
    reference = model.backbone.inputs.projection(reference)
    torch.testing.assert_close(inputs[row][text[row]], reference[0], atol=1e-5, rtol=1e-5)
    assert inputs[row][~text[row]].abs().max() == 0


def test_padding_and_batch_company_do_not_change_embeddings(model):
    items = ["seven", {"image": _image(2), "text": "a caption"}, _image(3)]
    together = model.encode_candidates(items)
    alone = torch.cat([model.encode_candidates([item]) for item in items])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    assert together.shape == (3, 4, 16)
    # the image changes the embedding: it is read, not ignored
    assert not torch.allclose(model.encode_candidates([_image(4)]), together[2:3], atol=1e-3)


def test_meta_tokens_and_patches_receive_gradients_text_encoder_can_stay_frozen(model):
    model.backbone.inputs.text_encoder.requires_grad_(False)
    model.train()
    try:
        out = model(model.prepare([_image(5), "word"], "candidate"), "candidate").sum()
        out.backward()
    finally:
        model.eval()
    assert model.meta_tokens.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.inputs.text_encoder.parameters())
    model.zero_grad(set_to_none=True)
    model.backbone.inputs.text_encoder.requires_grad_(True)


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = MetaEmbedModel.from_pretrained(tmp_path / "m")
    assert isinstance(loaded.adapter, BertVisionAdapter) and isinstance(loaded.backbone, BertVisionModel)
    items = ["query text", _image(6)]
    torch.testing.assert_close(loaded.encode_candidates(items), model.encode_candidates(items))
    torch.testing.assert_close(loaded.encode_queries(items), model.encode_queries(items))


def test_a_saved_folder_loads_in_a_fresh_process_that_never_imported_the_family(model, tmp_path):
    """The backbone config's model_type is registered by its family's module: loading imports it."""
    import subprocess
    import sys

    model.save_pretrained(tmp_path / "m")
    script = ("from metaembed.model import MetaEmbedModel\n"
              f"loaded = MetaEmbedModel.from_pretrained({str(tmp_path / 'm')!r})\n"
              "print(type(loaded.backbone).__name__)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "BertVisionModel"


def test_frozen_state_cache_gives_the_same_embeddings(model):
    texts = ["alpha beta", "gamma", "alpha beta", "delta epsilon zeta"]
    model.backbone.inputs.text_encoder.requires_grad_(False)
    plain = model.encode_queries(texts)
    model.backbone.inputs.cache_frozen_states(True)
    try:
        first = model.encode_queries(texts)
        cached = model.encode_queries(texts[::-1])  # every text now comes from the cache
        assert len(model.backbone.inputs._state_cache) == 3
    finally:
        model.backbone.inputs.cache_frozen_states(False)
        model.backbone.inputs.text_encoder.requires_grad_(True)
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached, plain.flip(0), atol=1e-5, rtol=1e-4)


def test_position_init_std_sets_the_fusion_positions_scale():
    text = BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, max_position_embeddings=64)
    sizes = dict(text_config=text.to_dict(), fusion_layers=1, fusion_width=64, max_positions=128)
    torch.manual_seed(0)
    scaled = BertVisionModel(BertVisionConfig(position_init_std=0.02, **sizes)).positions.weight
    torch.manual_seed(0)
    default = BertVisionModel(BertVisionConfig(**sizes)).positions.weight  # PyTorch's N(0, 1)
    assert abs(scaled.std().item() - 0.02) < 0.002
    assert abs(default.std().item() - 1.0) < 0.1
    assert BertVisionConfig(position_init_std=0.02, **sizes).to_dict()["position_init_std"] == 0.02
    with pytest.raises(InputError, match="position_init_std"):
        BertVisionConfig(position_init_std=-1.0, **sizes)


def test_one_way_attention_is_refused_where_run_does_not_implement_it(model):
    import dataclasses

    from metaembed.errors import InputError

    config = dataclasses.replace(model.config, meta_attention="one_way")
    with pytest.raises(InputError, match="one_way"):
        MetaEmbedModel(config, model.backbone, model.tokenizer)
