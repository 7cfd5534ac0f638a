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
    assert all(r["bytes_per_vector"] == 4 and r["ratio_to_float16"] == 0.125 and r["build_seconds"] > 0 for r in pq2)
    assert all(0 <= r["overlap@10"] <= 1 and 0 <= r["overlap@10_unseen"] <= 1 and r["latency_vs_float16"] > 0 for r in pq2)
    assert not any("overlap@10_unseen" in r for r in rows if r["codec"] != "pq2")  # untrained codecs see nothing
    lines = verdict(rows)
    worst = min(r["overlap@10_unseen"] for r in pq2)  # the target is judged on vectors the codebooks never saw
    assert lines[0].startswith("tiny: <= 1/8 of float16") and f"best pq2: worst-budget overlap {worst:.3f}" in lines[0]
    assert ("MET" if worst >= 0.95 else "NOT met") in lines[0]
    report = {"model": "random", "rows": rows, "verdict": lines, "machine": "m", "latency_note": "", "command": "c"}
    assert "| pq2 | 8,16 | 4 | 0.125 |" in markdown(report)


def test_unseen_folds_hold_the_other_half_coded_by_codebooks_fit_on_this_half() -> None:
    from benchmarks.codecs import _unseen_indexes
    from metaembed.index.codecs import get_codec

    ids = [f"p{i}" for i in range(40)]
    pages = unit_vectors(2, 40, 16, 16)
    folds = _unseen_indexes("pq2", ids, pages)
    try:
        for fold, index in enumerate(folds):
            mine, other = list(range(fold, 40, 2)), list(range(1 - fold, 40, 2))
            assert sorted(index.ids) == sorted(ids[i] for i in other)
            codec = get_codec("pq2").fit(pages[mine].reshape(-1, 16))
            expected = codec.decode(codec.encode(pages[other])[0])
            assert torch.equal(index.vectors([ids[i] for i in other]), expected)
    finally:
        for index in folds:
            index.close()


def test_merged_rows_give_way_to_this_runs_and_scratch_methods_are_tabled(tmp_path) -> None:
    import json

    from benchmarks.codecs import merged_rows

    old = [{"corpus": "a", "codec": c, "budget": b} for c in ("float32", "pq2") for b in ("1,1", "2,4")]
    (tmp_path / "old.json").write_text(json.dumps({"rows": old}))
    fresh = [{"corpus": "a", "codec": "float32", "budget": "1,1"}, {"corpus": "b", "codec": "pq2", "budget": "1,1"}]
    assert merged_rows([tmp_path / "old.json"], fresh) == [r for r in old if r["codec"] == "pq2"]
    tried = {"corpus": "validation", "note": "scratch", "methods": [
        {"method": "opq", "bytes_per_vector": 96, "overlap@10": {"1,1": 0.9, "2,4": 0.85}}]}
    report = {"model": "m", "rows": [], "verdict": [], "machine": "m", "latency_note": "", "command": "c",
              "budgets": ["1,1", "2,4"], "tried": tried}
    assert "| opq | 96 | 0.900 | 0.850 | 0.850 |" in markdown(report)
