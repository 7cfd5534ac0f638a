"""One-way Meta Token attention on a BERT encoder: the input keeps its pretrained states."""

from __future__ import annotations

import pytest
import torch

from metaembed.errors import InputError
from metaembed.model import MetaEmbedModel
from metaembed.model.backbones import positions_from_mask
from metaembed.model.backbones.encoder import FrozenStateCache, encoder_layer, shared_layers, unpadded_layers
from metaembed.model.meta_tokens import last_valid_mask
from metaembed.model.testing import tiny_model

TEXTS = ["hello world this is a test", "short", "another somewhat longer text with more words in it"]


@pytest.fixture()
def one_way():
    return tiny_model("bert", num_query_tokens=2, num_candidate_tokens=3, meta_attention="one_way")


def _masked_reference(model: MetaEmbedModel, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain Hugging Face BertModel on the whole sequence under the one-way 4-D attention mask."""
    batch = model.prepare(TEXTS, side)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows = model.meta_tokens.appended_rows(side, causal=False, one_way=True)
    slots = last_valid_mask(mask, rows.stop - rows.start)
    valid = mask.bool()
    allowed = valid[:, None, :] & (slots[:, :, None] | ~slots[:, None, :])  # real rows never see Meta Tokens
    allowed |= torch.eye(ids.shape[1], dtype=torch.bool)[None]  # padding rows attend to themselves
    with torch.no_grad(), model.meta_tokens.injected(model.adapter.input_embeddings(), slots, rows):
        reference = model.backbone(input_ids=ids, attention_mask=allowed[:, None], position_ids=positions_from_mask(mask),
                                   token_type_ids=torch.zeros_like(ids)).last_hidden_state
        mine = model.adapter.run({**batch, "meta_slots": slots})
    return reference, mine, slots & valid


@pytest.mark.parametrize("side", ["query", "candidate"])
def test_one_way_equals_the_masked_full_forward(one_way, side):
    reference, mine, slots = _masked_reference(one_way, side)
    valid = one_way.prepare(TEXTS, side)["attention_mask"].bool()
    torch.testing.assert_close(mine[slots], reference[slots], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine[valid & ~slots], reference[valid & ~slots], atol=1e-5, rtol=1e-5)


def test_the_unpadded_input_path_gives_the_padded_paths_states_and_gradients(one_way):
    layers, width = one_way.backbone.encoder.layer, one_way.backbone.config.hidden_size
    torch.manual_seed(0)
    embeddings = torch.randn(3, 7, width)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 2, 5])[:, None]
    runs = []
    for unpadded in (False, True):
        one_way.backbone.zero_grad()
        given = embeddings.clone().requires_grad_(True)
        if unpadded:
            states = unpadded_layers(layers, given, mask)
        else:
            parts, hidden = [], given
            for layer in layers:
                hidden, key, value = encoder_layer(layer, hidden, mask, adapted=False)
                parts += [key, value]
            states = torch.stack(parts + [hidden])
        weights = torch.linspace(-1, 1, states[:, mask].numel()).view(states[:, mask].shape)
        (states[:, mask] * weights).sum().backward()  # gradients from the real tokens only
        runs.append((states[:, mask].detach(), given.grad, layers[0].intermediate.dense.weight.grad.clone()))
    (padded, padded_input_grad, padded_weight_grad), (mine, input_grad, weight_grad) = runs
    torch.testing.assert_close(mine, padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(input_grad, padded_input_grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weight_grad, padded_weight_grad, atol=1e-5, rtol=1e-5)
    assert not unpadded_layers(layers, embeddings, mask)[:, ~mask].any()  # zeros at the padding


def _run_both_ways(model: MetaEmbedModel, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``adapter.run`` of the same batch at inference (one pass per layer for both paths) and
    with gradients on (the input path first, then the Meta Token path), and the places to compare."""
    batch = model.prepare(TEXTS, side)
    rows = model.meta_tokens.appended_rows(side, causal=False, one_way=True)
    slots = last_valid_mask(batch["attention_mask"], rows.stop - rows.start)
    with model.meta_tokens.injected(model.adapter.input_embeddings(), slots, rows):
        with torch.no_grad():
            shared = model.adapter.run({**batch, "meta_slots": slots})
        apart = model.adapter.run({**batch, "meta_slots": slots}).detach()
    return shared, apart, batch["attention_mask"].bool()


@pytest.mark.parametrize("side", ["query", "candidate"])
def test_inference_shares_each_weight_read_and_keeps_the_lora_numbers(one_way, side, monkeypatch):
    from metaembed.model.backbones import encoder

    calls = []
    monkeypatch.setattr(encoder, "shared_layers", lambda *args: calls.append(1) or shared_layers(*args))
    one_way.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # peft starts lora_B at zero: give the adapters something to add
        for name, parameter in one_way.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    one_way.eval()
    shared, apart, valid = _run_both_ways(one_way, side)
    assert calls == [1]  # the inference run took the shared pass, the other one the two paths
    torch.testing.assert_close(shared[valid], apart[valid], atol=1e-5, rtol=1e-5)
    plain = tiny_model("bert", num_query_tokens=2, num_candidate_tokens=3, meta_attention="one_way")
    assert not torch.allclose(plain.encode_queries(TEXTS), one_way.encode_queries(TEXTS), atol=1e-3)


def test_inference_runs_a_lora_kind_it_cannot_split_through_the_module_itself(one_way, monkeypatch):
    from metaembed.model.backbones import encoder

    one_way.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, parameter in one_way.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    one_way.eval()
    expected, _, valid = _run_both_ways(one_way, "candidate")
    monkeypatch.setattr(encoder, "_lora_delta", lambda module, x: None)  # as for DoRA or merged adapters
    fallback, apart, _ = _run_both_ways(one_way, "candidate")
    torch.testing.assert_close(fallback[valid], expected[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fallback[valid], apart[valid], atol=1e-5, rtol=1e-5)


def test_input_states_stay_the_pretrained_encoders_even_with_lora(one_way):
    plain = one_way.adapter.tokenizer(["[CLS]hello world this is a test[SEP]"], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        before = one_way.backbone(**plain).last_hidden_state[0]
    one_way.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # non-zero LoRA updates: they must act on the Meta Token path only
        for name, parameter in one_way.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    batch = one_way.prepare(TEXTS[:1], "candidate")
    slots = last_valid_mask(batch["attention_mask"], one_way.num_appended("candidate"))
    with torch.no_grad(), one_way.meta_tokens.injected(one_way.adapter.input_embeddings(), slots,
                                                       one_way.meta_tokens.appended_rows("candidate", False, True)):
        hidden = one_way.adapter.run({**batch, "meta_slots": slots})
    content = batch["attention_mask"].bool() & ~slots
    torch.testing.assert_close(hidden[content], before, atol=1e-5, rtol=1e-5)
    # ... while the Meta Token vectors did change with LoRA
    fresh = tiny_model("bert", num_query_tokens=2, num_candidate_tokens=3, meta_attention="one_way")
    assert not torch.allclose(one_way.encode_candidates(TEXTS[:1]), fresh.encode_candidates(TEXTS[:1]), atol=1e-3)


def test_each_side_carries_only_its_own_meta_tokens(one_way):
    assert (one_way.num_appended("query"), one_way.num_appended("candidate")) == (2, 3)
    queries, candidates = one_way.encode_queries(TEXTS), one_way.encode_candidates(TEXTS)
    assert queries.shape == (3, 2, 64) and candidates.shape == (3, 3, 64)
    with torch.no_grad():  # the candidate rows cannot reach a query any more
        one_way.meta_tokens.weight[2:] += 1.0
    torch.testing.assert_close(one_way.encode_queries(TEXTS), queries)
    assert not torch.allclose(one_way.encode_candidates(TEXTS), candidates)


def test_the_state_cache_changes_nothing_and_is_reused(one_way):
    expected = one_way.encode_candidates(TEXTS)
    cache = one_way.adapter.cache_frozen_states()
    first = one_way.encode_candidates(TEXTS)
    assert len(cache) == 3
    again = one_way.encode_candidates(list(reversed(TEXTS)))
    assert len(cache) == 3  # no new entries: every text was served from the cache
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(again, expected.flip(0), atol=1e-6, rtol=1e-6)
    half = FrozenStateCache(torch.float16)
    one_way.adapter.state_cache = half
    one_way.encode_candidates(TEXTS)
    torch.testing.assert_close(one_way.encode_candidates(TEXTS), expected, atol=2e-2, rtol=0)


def test_training_gradients_reach_meta_tokens_and_lora_through_the_cache(one_way):
    one_way.add_lora(r=4, alpha=8, dropout=0.0)
    one_way.adapter.cache_frozen_states()
    one_way.train()
    one_way(one_way.prepare(TEXTS, "candidate"), "candidate").sum().backward()  # fills the cache
    one_way.zero_grad()
    one_way(one_way.prepare(TEXTS, "candidate"), "candidate").pow(2).sum().backward()  # served from it
    assert one_way.meta_tokens.weight.grad[2:].abs().sum() > 0
    lora = [p.grad for n, p in one_way.backbone.named_parameters() if "lora_B" in n]
    assert lora and all(g is not None for g in lora) and any(g.abs().sum() > 0 for g in lora)


def test_mean_embedding_init_centres_the_rows():
    model = tiny_model("bert", num_query_tokens=2, num_candidate_tokens=3, meta_token_init="mean_embedding")
    centre = model.adapter.input_embeddings().weight.mean(dim=0)
    rows = model.meta_tokens.weight
    assert (rows - centre).abs().max() < 0.15  # N(0, 0.02) noise around the centre
    assert (rows[0] - rows[1]).abs().max() > 0  # the noise keeps them apart


def test_causal_backbones_are_one_way_already():
    model = tiny_model("qwen2", meta_attention="one_way")  # accepted, and nothing changes
    assert not model.one_way
    assert model.num_appended("candidate") == model.config.num_meta_tokens


def test_unknown_meta_attention_is_refused():
    with pytest.raises(InputError, match="meta_attention"):
        tiny_model("bert", meta_attention="sideways")
