"""The quickstart end to end, on a tiny recipe (few steps, small collection)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from metaembed.cli import main
from metaembed.quickstart import run_quickstart
from metaembed.quickstart.data import load_glyphs, render, split
from metaembed.quickstart.recipe import RecipeConfig
from metaembed.retriever import Retriever

TINY = RecipeConfig(
    fusion_layers=1, fusion_width=32, num_query_tokens=2, num_candidate_tokens=4, projection_dim=16,
    ladder="1,1 2,2 2,4", steps=3, time_budget_s=None, batch_size=8, collection_size=60, held_out=0.2, log_every=1, latency_queries=3,
)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("quickstart")
    lines: list[str] = []
    results = run_quickstart(cache, config=TINY, echo=lines.append)
    return cache, results, lines


def test_writes_model_index_table_and_plot(first_run):
    cache, results, lines = first_run
    assert (cache / "model" / "metaembed_config.json").is_file()
    assert [row["budget"] for row in results["budgets"]] == ["1,1", "2,2", "2,4"]
    assert results["collection_size"] == 60 and results["held_out_queries"] == 12
    for row in results["budgets"]:
        assert 0 <= row["recall@1"] <= 1 and 0 <= row["ndcg@5"] <= 1 and row["latency_ms"] > 0
        assert row["chance_recall@1"] == pytest.approx(1 / 60)
    assert json.loads((cache / "results.json").read_text())["budgets"] == results["budgets"]
    with Image.open(cache / "results.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300
    table = "\n".join(lines)
    assert "Recall@1" in table and "step    3/3" in table and "metaembed search" in table


def test_reported_recall_matches_a_naive_ranking(first_run):
    cache, results, _ = first_run
    retriever = Retriever.open(cache / "index")
    glyphs = load_glyphs()[:: len(load_glyphs()) // 60][:60]
    _, held = split(glyphs, held_out=0.2, seed=0)
    candidates = retriever.model.encode_candidates([render(g, 32) for g in glyphs]).half().float()
    queries = retriever.model.encode_queries([g.text for g in held])
    target = torch.tensor([glyphs.index(g) for g in held])
    for row in results["budgets"]:
        r_q, r_c = map(int, row["budget"].split(","))
        scores = torch.einsum("aqd,bcd->abqc", queries[:, :r_q], candidates[:, :r_c]).amax(-1).sum(-1)
        best = scores.argmax(dim=1)
        assert row["recall@1"] == pytest.approx((best == target).float().mean().item(), abs=1e-6)


def test_second_run_reuses_the_model_and_the_index(first_run):
    cache, results, _ = first_run
    stamp = (cache / "model" / "metaembed.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    again = run_quickstart(cache, config=TINY, echo=lines.append)
    assert any("reusing the trained model" in line for line in lines)
    assert not any("step " in line for line in lines)
    assert (cache / "model" / "metaembed.safetensors").stat().st_mtime_ns == stamp
    assert [r["recall@1"] for r in again["budgets"]] == [r["recall@1"] for r in results["budgets"]]


def test_metaembed_search_works_on_the_quickstart_index(first_run, capsys):
    cache, _, _ = first_run
    code = main(["search", str(cache / "index"), "latin capital letter a", "--budget", "2,4", "-k", "3", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    hits = json.loads(out)["results"]
    assert len(hits) == 3 and all(h["id"].startswith("U+") and "name" in h["payload"] for h in hits)
