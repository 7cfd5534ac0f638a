"""The real-embedding coarse-to-fine benchmark on a small saved model and index."""

from __future__ import annotations

import json

import pytest

from benchmarks.coarse_to_fine import main, read_queries
from metaembed.errors import InputError
from tests.frontdoor_helpers import make_collection, write_jsonl


def test_full_shortlists_are_exact_and_every_budget_is_reported(tmp_path):
    collection = make_collection(tmp_path)
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": t} for t in ("cats asleep", "a red bus", "tax form", "x")])
    report = main(["--index", str(collection.index), "--queries", str(queries), "--field", "text",
                   "--shortlists", "7", "--out", str(tmp_path / "out")])
    assert report["num_queries"] == 4 and report["size"] == 7
    rows = report["rows"]
    # ladder 1,1 2,4 4,8: (1,1) is the first stage itself; each other budget has exact + coarse + ann
    assert [(r["budget"], r["method"]) for r in rows] == [
        (b, m) for b in ("2,4", "4,8") for m in ("exact", "coarse", "ann")]
    # a shortlist holding the whole index re-ranks everything: the same top-10 as exact search
    assert all(r["overlap"] == 1.0 and r["latency_ms"] > 0 for r in rows)
    saved = json.loads((tmp_path / "out" / "coarse_to_fine.json").read_text())
    assert saved["rows"] == rows
    assert "| 4,8 | ann | 7 | 100% | 1.000 |" in (tmp_path / "out" / "coarse_to_fine.md").read_text()


def test_queries_are_spread_over_the_file_and_checked(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"name": f"q{i}"} for i in range(10)])
    assert read_queries(path, "name", 5) == ["q0", "q2", "q4", "q6", "q8"]
    listed = write_jsonl(tmp_path / "pages.jsonl", [{"names": ["a", "b"]}, {"names": ["c"]}])
    assert read_queries(listed, "names", None) == ["a", "b", "c"]
    with pytest.raises(InputError, match="line 1: no text field 'text'"):
        read_queries(path, "text", None)
    with pytest.raises(SystemExit, match="no index at"):
        main(["--index", str(tmp_path / "missing")])
