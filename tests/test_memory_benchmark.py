"""The index-memory benchmark: page-cache residency per budget and mode, on a small saved model and index."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from benchmarks.memory import drop_from_page_cache, index_files, main, measure, resident_bytes
from metaembed.budget import Budget
from metaembed.index import MultiVectorIndex
from tests.frontdoor_helpers import make_collection, write_jsonl

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore / posix_fadvise are Linux's")


def _droppable(folder) -> bool:
    """Whether this filesystem lets the page cache drop a file's pages (a tmpfs keeps them)."""
    probe = folder / "probe"
    probe.write_bytes(os.urandom(1 << 20))
    os.sync()
    drop_from_page_cache([probe])
    return resident_bytes(probe) < (1 << 19)


def test_resident_bytes_counts_the_pages_read_and_a_drop_empties_them(tmp_path) -> None:
    path = tmp_path / "file"
    path.write_bytes(os.urandom(4 << 20))
    with open(path, "rb") as handle:
        handle.read()
    assert resident_bytes(path) == 4 << 20  # just written and read: every page is cached
    (tmp_path / "empty").write_bytes(b"")
    assert resident_bytes(tmp_path / "empty") == 0
    if not _droppable(tmp_path):
        pytest.skip("this filesystem keeps its pages in memory (tmpfs): nothing to drop")
    os.sync()
    drop_from_page_cache([path])
    assert resident_bytes(path) < (1 << 20)


def test_every_budget_and_mode_is_measured_against_the_indexs_own_account(tmp_path) -> None:
    if not _droppable(tmp_path):
        pytest.skip("this filesystem keeps its pages in memory (tmpfs): residency cannot be measured")
    generator = torch.Generator().manual_seed(3)
    vectors = torch.nn.functional.normalize(torch.randn(20000, 8, 64, generator=generator), dim=-1)
    folder = tmp_path / "ix"
    with MultiVectorIndex.create(folder, dim=64, num_vectors=8) as index:
        index.add([f"p{i}" for i in range(20000)], vectors)
    os.sync()
    queries = torch.nn.functional.normalize(torch.randn(24, 4, 64, generator=generator), dim=-1)
    budgets = [Budget(1, 1), Budget(4, 8)]
    rows = measure(folder, queries, budgets, shortlist=20000)
    assert [(row["budget"], row["mode"]) for row in rows] == [
        ("1,1", "exact"), ("1,1", "ann"), ("4,8", "exact"), ("4,8", "coarse"), ("4,8", "ann")]
    vector_bytes = sum(path.stat().st_size for path in index_files(folder)["vectors"])
    for row in rows:
        assert row["resident_before"]["vectors"] < vector_bytes / 16  # the drop worked
        assert row["predicted"] == vector_bytes * int(row["budget"].split(",")[1]) // 8
    full = [row for row in rows if row["budget"] == "4,8"]
    # every candidate's 8 vectors are read at (4,8): the whole file, whatever the mode (the shortlist is everything)
    assert all(row["resident"]["vectors"] >= 0.95 * vector_bytes and row["overlap"] == 1.0 for row in full)
    assert rows[0]["resident"]["vectors"] < 0.75 * vector_bytes  # (1,1) reads the first slab, not the file
    assert rows[1]["graph_bytes"] is None or rows[1]["graph_bytes"] > 0


def test_the_report_is_written_from_a_models_index(tmp_path) -> None:
    if not _droppable(tmp_path):
        pytest.skip("this filesystem keeps its pages in memory (tmpfs): residency cannot be measured")
    collection = make_collection(tmp_path)
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": t} for t in ("cats asleep", "a red bus", "tax form")])
    report = main(["--index", str(collection.index), "--queries", str(queries), "--out", str(tmp_path / "out"),
                   "--name", "memory"])
    assert report["size"] == 7 and report["num_queries"] == 3
    assert {row["budget"] for row in report["rows"]} == {"1,1", "2,4", "4,8"}
    assert json.loads((tmp_path / "out" / "memory.json").read_text())["rows"] == report["rows"]
    text = (tmp_path / "out" / "memory.md").read_text()
    assert "| 4,8 | coarse |" in text and "Largest vector bytes still resident right after a drop" in text
