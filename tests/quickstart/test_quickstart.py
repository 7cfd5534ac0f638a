"""The quickstart on a reduced held-out collection, through the CLI, with the network blocked."""

from __future__ import annotations

import json

from metaembed.cli import main


def test_quickstart_reports_every_budget_beside_baseline_a(tmp_path, capsys):
    cache = tmp_path / "qs"
    assert main(["quickstart", "--cache", str(cache), "--max-pages", "12"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((cache / "quickstart.json").read_text())
    assert [row["budget"] for row in summary["budgets"]] == ["1,1", "2,4", "4,8", "8,16"]
    assert summary["pages"] == 12 and summary["queries"] >= 12
    a_values = {row["a_ndcg@10"] for row in summary["budgets"]}
    assert len(a_values) == 1  # one baseline number, printed beside every budget
    for row in summary["budgets"]:
        assert 0 <= row["ndcg@10"] <= 1 and row["latency_ms"] > 0
        assert f"{row['budget']:>7} {row['ndcg@10']:>8.3f} {row['a_ndcg@10']:>6.3f}" in out
    memory = [row["index_bytes"] for row in summary["budgets"]]
    assert memory == sorted(memory) and memory[0] < memory[-1]
    results = json.loads((cache / "results.json").read_text())  # written by metaembed.evaluation
    assert "(a) MiniLM mean-pooled, 1 vector" in results["groups"] and (cache / "results.png").stat().st_size > 0
    assert "metaembed index build -i" in out  # ends by showing how to index your own folder
    assert main(["search", str(cache / "index"), "flask blueprint error handler", "-k", "3"]) == 0
