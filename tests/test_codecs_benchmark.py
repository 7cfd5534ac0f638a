"""The storage-codec benchmark's measurement on small random data: exact rows, every codec and budget, the verdict."""

from __future__ import annotations

import torch

from benchmarks.codecs import BUDGETS, markdown, measure, verdict
from tests.index.conftest import unit_vectors


def test_every_codec_and_budget_is_measured_against_float32() -> None:
    ids = [f"p{i}" for i in range(40)]
    pages, queries = unit_vectors(0, 40, 16, 16), unit_vectors(1, 6, 8, 16)
    queries[:, 0] = pages[:6, 0]  # query i targets page i
    data = {"queries": queries, "query_ids": [f"q{i}" for i in range(6)],
            "qrels": {f"q{i}": {f"p{i}": 1} for i in range(6)}, "corpora": {"tiny": (ids, pages)}}
    rows = measure(data, ["int8", "pq2"], repeats=1)
    assert [(r["codec"], r["budget"]) for r in rows] == [(c, b) for c in ("float32", "float16", "int8", "pq2") for b in BUDGETS]
    exact = [r for r in rows if r["codec"] == "float32"]
    assert all(r["overlap@10"] == 1.0 and r["ndcg@10"] == r["ndcg@10_float32"] for r in exact)
    pq2 = [r for r in rows if r["codec"] == "pq2"]
    assert all(r["bytes_per_vector"] == 4 and r["ratio_to_float16"] == 0.125 and r["train_seconds"] > 0 for r in pq2)
    assert all(0 <= r["overlap@10"] <= 1 and r["latency_vs_float16"] > 0 for r in pq2)
    lines = verdict(rows)
    worst = min(r["overlap@10"] for r in pq2)
    assert lines[0].startswith("tiny: <= 1/8 of float16") and f"best pq2: worst-budget overlap {worst:.3f}" in lines[0]
    assert ("MET" if worst >= 0.95 else "NOT met") in lines[0]
    report = {"model": "random", "rows": rows, "verdict": lines, "machine": "m", "latency_note": "", "command": "c"}
    assert "| pq2 | 8,16 | 4 | 0.125 |" in markdown(report)
