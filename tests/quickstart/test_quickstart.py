"""The quickstart end to end, on a tiny recipe (few steps, small collection)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from metaembed.cli import main
from metaembed.errors import InputError
from metaembed.quickstart import run_quickstart
from metaembed.quickstart.run import report_lines
from metaembed.quickstart.data import load_glyphs, paginate, render_page, split
from metaembed.quickstart.recipe import RecipeConfig
from metaembed.retriever import Retriever

TINY = RecipeConfig(
    fusion_layers=1, fusion_width=32, num_query_tokens=2, num_candidate_tokens=4, projection_dim=16,
    ladder="1,1 2,2 2,4", steps=3, time_budget_s=None, batch_size=8, collection_size=60, held_out=0.2, log_every=1,
    latency_queries=3, image_size=32, patch_size=8, page_grid=2,
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
    # 60 characters on 2x2 pages: 15 pages; 12 held-out names are the queries
    assert results["collection_size"] == 15 and results["characters"] == 60 and results["held_out_queries"] == 12
    for row in results["budgets"]:
        assert 0 <= row["recall@1"] <= 1 and 0 <= row["ndcg@5"] <= 1 and row["latency_ms"] > 0
        assert row["chance_recall@1"] == pytest.approx(1 / 15)
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
    pages = paginate(glyphs, 4, seed=0)
    candidates = retriever.model.encode_candidates([render_page(p.glyphs, 2, 16) for p in pages]).half().float()
    queries = retriever.model.encode_queries([g.text for g in held])
    target = torch.tensor([next(n for n, p in enumerate(pages) if g in p.glyphs) for g in held])
    smallest = previous = None
    for row in results["budgets"]:
        r_q, r_c = map(int, row["budget"].split(","))
        scores = torch.einsum("aqd,bcd->abqc", queries[:, :r_q], candidates[:, :r_c]).amax(-1).sum(-1)
        top1 = (scores.argmax(dim=1) == target).float()
        # rank of the relevant page (1 = best); nDCG@5 of one relevant item is 1/log2(rank+1) in the top 5
        rank = (scores > scores.gather(1, target[:, None])).sum(dim=1) + 1
        ndcg5 = torch.where(rank <= 5, 1 / torch.log2(rank.float() + 1), torch.zeros(len(held)))
        smallest = (top1, ndcg5) if smallest is None else smallest
        previous = smallest if previous is None else previous
        assert row["recall@1"] == pytest.approx(top1.mean().item(), abs=1e-6)
        assert row["ndcg@5"] == pytest.approx(ndcg5.mean().item(), abs=1e-6)
        for name, values, first in (("recall@1", top1, smallest[0]), ("ndcg@5", ndcg5, smallest[1])):
            assert row[f"{name}_gain"] == pytest.approx((values - first).mean().item(), abs=1e-6)
            assert row[f"{name}_gain_stderr"] == pytest.approx((values - first).std().item() / len(held) ** 0.5, abs=1e-6)
        for name, values, before in (("recall@1", top1, previous[0]), ("ndcg@5", ndcg5, previous[1])):
            assert row[f"{name}_step_gain"] == pytest.approx((values - before).mean().item(), abs=1e-6)
            assert row[f"{name}_step_gain_stderr"] == pytest.approx((values - before).std().item() / len(held) ** 0.5, abs=1e-6)
        previous = (top1, ndcg5)


def _rows(recalls, gain_stderr):
    rows = []
    for n, (budget, recall) in enumerate(zip(["1,1", "2,4", "4,8"], recalls)):
        step = recall - recalls[max(n - 1, 0)]
        rows.append({"budget": budget, "recall@1": recall, "ndcg@5": recall, "chance_recall@1": 0.001,
                     "latency_ms": 1.0, "index_bytes": 1024})
        for metric in ("recall@1", "ndcg@5"):
            rows[-1].update({f"{metric}_gain": recall - recalls[0], f"{metric}_gain_stderr": gain_stderr,
                             f"{metric}_step_gain": step, f"{metric}_step_gain_stderr": gain_stderr})
    return rows


@pytest.mark.parametrize("recalls, stderr, verdict", [
    ([0.10, 0.20, 0.30], 0.01, "test-time scaling: Recall@1 never falls as the budget grows (0.100 -> 0.200 -> 0.300)"),
    ([0.10, 0.11, 0.12], 0.02, "never falls as the budget grows (0.100 -> 0.110 -> 0.120), but by less than two"),
    ([0.10, 0.30, 0.20], 0.01, "test-time scaling, not monotone: Recall@1 by budget 0.100 -> 0.300 -> 0.200 (falls beyond its noise at 4,8)"),
    ([0.10, 0.30, 0.29], 0.01, "Recall@1 by budget 0.100 -> 0.300 -> 0.290; no step of the ladder loses beyond its noise"),
    ([0.30, 0.20, 0.10], 0.01, "no test-time scaling here: the smallest budget is best"),
    ([0.10, 0.30, 0.09], 0.01, "test-time scaling only up to 2,4"),
])
def test_verdict_weighs_the_gain_against_its_noise(tmp_path, recalls, stderr, verdict):
    results = {"budgets": _rows(recalls, stderr), "held_out_queries": 500, "collection_size": 1000, "page_grid": 2,
               "train_seconds": 1.0, "index_seconds": 1.0, "total_seconds": 2.0}
    text = "\n".join(report_lines(results, tmp_path / "index"))
    assert verdict in text
    assert f"4,8 vs 1,1: Recall@1 {recalls[-1] - recalls[0]:+.3f} (standard error {stderr:.3f}" in text
    steps = [f"{a} -> {b} {y - x:+.3f} ({stderr:.3f})" for a, b, x, y in zip(["1,1", "2,4"], ["2,4", "4,8"], recalls, recalls[1:])]
    assert "Recall@1 step by step (standard error): " + ", ".join(steps) in text


def test_second_run_reuses_the_model_and_the_index(first_run):
    cache, results, _ = first_run
    stamp = (cache / "model" / "metaembed.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    again = run_quickstart(cache, config=TINY, echo=lines.append)
    assert any("reusing the trained model" in line for line in lines)
    assert not any(line.lstrip().startswith("step ") for line in lines)  # no training log
    assert (cache / "model" / "metaembed.safetensors").stat().st_mtime_ns == stamp
    assert [r["recall@1"] for r in again["budgets"]] == [r["recall@1"] for r in results["budgets"]]


def test_metaembed_search_works_on_the_quickstart_index(first_run, capsys):
    cache, _, _ = first_run
    code = main(["search", str(cache / "index"), "latin capital letter a", "--budget", "2,4", "-k", "3", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    hits = json.loads(out)["results"]
    assert len(hits) == 3 and all(h["id"].startswith("page-") and len(h["payload"]["names"]) == 4 for h in hits)


def test_a_page_grid_below_one_is_refused(tmp_path):
    with pytest.raises(InputError, match="page_grid must be at least 1"):
        run_quickstart(tmp_path, page_grid=0, echo=lambda line: None)
