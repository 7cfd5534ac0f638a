"""The encoding benchmark's bare baseline runs the same tokens as encode_*, and its --quick run reports every cell."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from benchmarks.encoding import bare_forward, main, texts, tiny_bert_model


@pytest.mark.parametrize("meta_attention", ["bidirectional", "one_way"])
def test_bare_forward_runs_the_tokens_that_encode_runs(meta_attention: str) -> None:
    model = tiny_bert_model(meta_attention)
    batch = texts(model.tokenizer, 5, (3, 12), seed=0)
    own = slice(0, None) if meta_attention == "one_way" else slice(model.num_query_tokens, None)  # one-way: own rows only
    for side, encode, vectors in (("query", model.encode_queries, slice(0, model.num_query_tokens)),
                                  ("candidate", model.encode_candidates, own)):
        hidden = bare_forward(model, side)(batch)  # right padded: each row's slots end at its own length
        prompts = [model.template.render(text, 0, side, None) for text in batch]
        lengths = [len(model.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        count = model.num_appended(side)
        slots = torch.stack([hidden[row, n : n + count] for row, n in enumerate(lengths)])[:, vectors]
        expected = slots.float() if model.projection is None else model.projection(slots.float())
        torch.testing.assert_close(encode(batch, batch_size=2), F.normalize(expected, dim=-1), rtol=1e-4, atol=1e-5)


def test_quick_run_reports_both_sides_and_batch_sizes(tmp_path) -> None:
    report = main(["--quick", "--out", str(tmp_path), "--name", "encoding"])
    cells = {(row["side"], row["batch_size"]) for row in report["results"]}
    assert cells == {(side, size) for side in ("query", "candidate") for size in (1, 64)}
    assert all(row["encode_items_per_s"] > 0 and row["bare_items_per_s"] > 0 for row in report["results"])
    assert json.loads((tmp_path / "encoding.json").read_text())["results"][0]["side"] == "query"
    assert "within 10% of the bare forward at batch 64" in (tmp_path / "encoding.md").read_text()


def test_a_one_way_quick_run_names_its_files_and_attention(tmp_path) -> None:
    main(["--quick", "--out", str(tmp_path), "--meta-attention", "one_way"])
    (found,) = tmp_path.glob("encoding-*-one-way.md")
    assert "one_way Meta Token attention" in found.read_text() and "--meta-attention one_way" in found.read_text()
