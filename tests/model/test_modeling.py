"""MetaEmbedModel on a tiny Qwen2-VL: shapes, norms, nesting, padding, sensitivity, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metaembed.budget import Budget


def _mixed_items(images):
    return [
        "a cat on a sofa",
        {"text": "what is in the picture?", "image": images[0]},
        images[1],
        {"text": "two pictures, side by side", "images": [images[2], images[0]]},
        "a much longer query about quarterly revenue growth in the invoice table of the report",
    ]


def test_shapes_and_unit_norms(tiny_qwen2_vl, images):
    model = tiny_qwen2_vl
    queries = model.encode_queries(_mixed_items(images), batch_size=2)
    candidates = model.encode_candidates(_mixed_items(images), batch_size=3)
    assert queries.shape == (5, model.num_query_tokens, model.embedding_dim) == (5, 4, 64)
    assert candidates.shape == (5, model.num_candidate_tokens, model.embedding_dim) == (5, 8, 64)
    assert queries.dtype == candidates.dtype == torch.float32
    assert queries.device.type == "cpu"
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(5, 4))
    torch.testing.assert_close(candidates.norm(dim=-1), torch.ones(5, 8))


def test_budget_is_a_prefix(tiny_qwen2_vl, images):
    model = tiny_qwen2_vl
    items = _mixed_items(images)[:3]
    full_q = model.encode_queries(items)
    full_c = model.encode_candidates(items)
    torch.testing.assert_close(model.encode_queries(items, budget=2), full_q[:, :2])
    torch.testing.assert_close(model.encode_candidates(items, budget=Budget(1, 5)), full_c[:, :5])
    torch.testing.assert_close(model.encode_queries(items, budget=Budget(3, 5)), full_q[:, :3])


def test_batch_equals_single_and_padding_side_does_not_matter(tiny_qwen2_vl, images):
    model = tiny_qwen2_vl
    items = _mixed_items(images)
    for side in ("query", "candidate"):
        with torch.no_grad():
            left = model(model.prepare(items, side, padding_side="left"), side)
            right = model(model.prepare(items, side, padding_side="right"), side)
            singles = torch.cat([model(model.prepare([item], side), side) for item in items])
        torch.testing.assert_close(left, singles, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(right, singles, atol=2e-5, rtol=1e-4)


def test_matches_a_hand_written_official_forward(tiny_qwen2_vl):
    """The official code: append all R_q+R_c rows to every input, read [-80:-64] / [-64:]."""
    model = tiny_qwen2_vl
    backbone = model.backbone
    n_q, n_c = model.config.num_query_tokens, model.config.num_candidate_tokens
    # under causal attention a query carries only its own rows; a candidate all of them
    assert (model.num_appended("query"), model.num_appended("candidate")) == (n_q, n_q + n_c)
    for side in ("query", "candidate"):
        batch = model.prepare(["meta tokens after the text"], side)
        content = batch["input_ids"][:, : -model.num_appended(side)]
        ids = torch.cat([content, torch.ones(1, n_q + n_c, dtype=torch.long)], dim=1)
        with torch.no_grad():
            embeds = backbone.get_input_embeddings()(ids).clone()
            embeds[:, -(n_q + n_c) :] = model.meta_tokens.weight
            positions = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)  # text only: t = h = w
            hidden = backbone(inputs_embeds=embeds, position_ids=positions).last_hidden_state
            expected = hidden[:, -(n_q + n_c) : -n_c] if side == "query" else hidden[:, -n_c:]
            expected = expected / expected.norm(dim=-1, keepdim=True)
            torch.testing.assert_close(model(batch, side), expected, atol=1e-5, rtol=1e-4)


def test_prompt_follows_the_official_template(tiny_qwen2_vl, images):
    model = tiny_qwen2_vl
    tokens = model.tokenizer.convert_ids_to_tokens
    query = model.prepare(["hello"], "query")["input_ids"][0].tolist()
    text = model.tokenizer.decode(query[:-4])  # a query carries its 4 Meta Token slots
    assert text == "<|im_start|>user\nQuery: hello<|im_end|><|endoftext|>" + "<|endoftext|>" * 10 + "\n"
    candidate = model.prepare([images[0]], "candidate")["input_ids"][0].tolist()
    decoded = model.tokenizer.decode(candidate[: -(4 + 8)])
    assert decoded.startswith("<|im_start|>user\n<|vision_start|><|image_pad|>")
    assert decoded.endswith("<|vision_end|>Describe the image.<|im_end|><|endoftext|>")
    image_tokens = sum(token == "<|image_pad|>" for token in tokens(candidate))
    assert 1 <= image_tokens <= model.config.max_visual_tokens


def test_instruction_goes_before_the_text(tiny_qwen2_vl):
    model = tiny_qwen2_vl
    ids = model.prepare(["a cat"], "query", instruction="Find an image.")["input_ids"][0].tolist()
    assert "Query: Find an image.\na cat<|im_end|>" in model.tokenizer.decode(ids)


def test_different_inputs_give_different_embeddings(tiny_qwen2_vl, images):
    model = tiny_qwen2_vl
    embeddings = model.encode_candidates(_mixed_items(images))
    flat = F.normalize(embeddings.flatten(1), dim=-1)
    similarity = flat @ flat.T
    off_diagonal = similarity[~torch.eye(len(flat), dtype=torch.bool)]
    assert off_diagonal.max() < 0.9999
    # changing a single token changes every Meta Token output
    a, b = model.encode_queries(["the cat sat on the mat", "the cat sat on the hat"])
    assert (a - b).norm(dim=-1).min() > 1e-5
    # the side matters too: query and candidate Meta Tokens are different rows
    q = model.encode_queries(["same text"])
    c = model.encode_candidates(["same text"], budget=4)
    assert (q - c).norm() > 1e-3


def test_gradient_reaches_the_meta_token_table(tiny_qwen2_vl, images):
    model = tiny_qwen2_vl
    model.zero_grad()
    queries = model(model.prepare(["a query"], "query"), "query")
    candidates = model(model.prepare([images[0]], "candidate"), "candidate")
    score = torch.einsum("qd,cd->qc", queries[0], candidates[0]).amax(dim=1).sum()
    score.backward()
    grad = model.meta_tokens.weight.grad
    assert grad is not None
    n_q = model.config.num_query_tokens
    assert grad[:n_q].abs().sum() > 0 and grad[n_q:].abs().sum() > 0
    model.zero_grad()


def test_save_and_load_round_trip(tiny_qwen2_vl, images, tmp_path):
    from metaembed.model import MetaEmbedModel

    model = tiny_qwen2_vl
    items = _mixed_items(images)
    model.save_pretrained(tmp_path / "saved")
    loaded = MetaEmbedModel.from_pretrained(tmp_path / "saved")
    assert torch.equal(loaded.encode_queries(items), model.encode_queries(items))
    assert torch.equal(loaded.encode_candidates(items), model.encode_candidates(items))
    assert loaded.config.num_query_tokens == 4 and loaded.config.family == "qwen2_vl"


def test_encode_keeps_the_input_order_across_batches(tiny_qwen2_vl, images, capsys):
    model = tiny_qwen2_vl
    items = _mixed_items(images)
    batched = model.encode_candidates(items, batch_size=2, show_progress=True)
    assert "encoding candidates" in capsys.readouterr().err
    singles = torch.cat([model.encode_candidates([item]) for item in items])
    torch.testing.assert_close(batched, singles, atol=2e-5, rtol=1e-4)
    assert model.encode_queries("one string is one item").shape == (1, 4, 64)


def test_long_text_is_cut_but_images_never_are(images):
    from metaembed.errors import InputError
    from metaembed.model.testing import tiny_model

    model = tiny_model("qwen2_vl", max_length=6)
    long_text = "word " * 200
    batch = model.prepare([long_text], "candidate")
    assert batch["input_ids"].shape[1] == 6 + model.num_appended("candidate")
    with pytest.raises(InputError, match="would cut an image"):
        model.prepare([{"text": "x", "image": images[2]}], "candidate")  # the image tokens start at 4 and run past 6


def test_threads_can_encode_with_one_model_at_the_same_time(tiny_qwen2_vl, images):
    from concurrent.futures import ThreadPoolExecutor

    model = tiny_qwen2_vl
    jobs = [["a cat", "a dog on a long walk"], [images[0], "text"], ["short", {"text": "q", "image": images[1]}]] * 2
    expected = [model.encode_candidates(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(model.encode_candidates, jobs))
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_encoding_runs_without_dropout_and_gives_each_module_its_mode_back():
    from metaembed.model.testing import tiny_model

    model = tiny_model("bert")
    assert model.backbone.config.hidden_dropout_prob > 0  # dropout would show if encoding ran in training mode
    model.eval()
    expected = model.encode_queries(["a cat on a sofa", "two dogs"])
    model.train()
    model.backbone.embeddings.eval()  # a mixed state, as a partly frozen model has
    modes = {name: module.training for name, module in model.named_modules()}
    torch.testing.assert_close(model.encode_queries(["a cat on a sofa", "two dogs"]), expected)  # no dropout
    assert {name: module.training for name, module in model.named_modules()} == modes
