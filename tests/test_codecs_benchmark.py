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
    assert all(r["bytes_per_vector"] == 4 and r["ratio_to_float16"] == 0.125 == r["read_vs_float16"] and r["build_seconds"] > 0
               for r in pq2)
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


def test_at_scale_a_trained_codec_codes_the_corpus_with_codebooks_fit_on_the_set_apart_pages() -> None:
    """With ``data["fit"]`` pq2 learns from those pages only; its overlap is that of their codebooks
    decoding the corpus (brute force here), both overlap columns hold it, and no qrels means no nDCG."""
    from benchmarks.measure import overlap
    from metaembed.index.codecs import get_codec
    from tests.index.conftest import brute_force

    ids = [f"p{i}" for i in range(40)]
    pages, queries, fit = unit_vectors(3, 40, 16, 16), unit_vectors(4, 6, 8, 16), unit_vectors(5, 20, 16, 16)
    data = {"queries": queries, "query_ids": [f"q{i}" for i in range(6)], "qrels": {},
            "corpora": {"scale": (ids, pages)}, "fit": ([f"f{i}" for i in range(20)], fit)}
    rows = measure(data, ["pq2"], repeats=1)
    codec = get_codec("pq2").fit(fit.reshape(-1, 16))
    decoded = codec.decode(codec.encode(pages)[0])
    for row in (r for r in rows if r["codec"] == "pq2"):
        r_q, r_c = map(int, row["budget"].split(","))
        ranked = [[i for i, _ in hits] for hits in brute_force(queries, decoded, ids, r_q, r_c, 10)]
        exact = [[i for i, _ in hits] for hits in brute_force(queries, pages, ids, r_q, r_c, 10)]
        assert row["overlap@10"] == row["overlap@10_unseen"] == overlap(ranked, exact)
        assert row["ndcg@10"] is None and row["ndcg@10_unseen"] is None and row["ndcg@10_float32"] is None
    report = {"model": "random", "rows": rows, "verdict": verdict(rows), "machine": "m", "latency_note": "", "command": "c"}
    assert "| pq2 | 8,16 | 4 | 0.125 |" in markdown(report) and "| — | — | — |" in markdown(report)


def test_an_index_is_read_whole_with_its_fitting_sample_set_apart(tmp_path) -> None:
    import pytest

    from benchmarks.codecs import _load_index
    from metaembed.index import MultiVectorIndex
    from tests.frontdoor_helpers import make_collection, write_jsonl

    collection = make_collection(tmp_path)
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": t} for t in ("cats asleep", "a red bus", "tax form")])
    data = _load_index(collection.index, queries, "text", 2, fit_pages=3)
    (corpus, (ids, pages)), = data["corpora"].items()
    fit_ids, fit_pages = data["fit"]
    with MultiVectorIndex.open(collection.index) as index:
        assert sorted(ids + fit_ids) == sorted(index.ids) and len(fit_ids) == 3 and not set(ids) & set(fit_ids)
        assert torch.equal(pages, index.vectors(ids)) and torch.equal(fit_pages, index.vectors(fit_ids))
    assert corpus.startswith("4 passages of") and data["queries"].shape[0] == 2 and data["qrels"] == {}
    with pytest.raises(SystemExit, match="fewer than --fit-pages 7"):
        _load_index(collection.index, queries, "text", 2, fit_pages=7)
