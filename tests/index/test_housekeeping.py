"""Housekeeping without being asked: mostly-deleted segments are rewritten, failed writes leave no files."""

from __future__ import annotations

import pytest
import torch

from metaembed.errors import InputError
from metaembed.index import MultiVectorIndex

from .conftest import brute_force, unit_vectors


def segment_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.glob("seg-*"))


def test_deleting_most_of_a_segment_rewrites_it(tmp_path) -> None:
    path = tmp_path / "idx"
    vectors = unit_vectors(0, 40, 4, 8)
    ids = [f"d{i}" for i in range(40)]
    with MultiVectorIndex.create(path, dim=8, num_vectors=4, dtype="float32") as index:
        index.add(ids[:20], vectors[:20])
        index.add(ids[20:], vectors[20:])
        index.delete(ids[:10])  # half of the first segment: not yet worth a rewrite
        assert segment_bytes(path) == 40 * 4 * 8 * 4
        index.delete(ids[10:11])  # now more than half: rewritten at once, the second segment untouched
        assert segment_bytes(path) == 29 * 4 * 8 * 4
        queries = unit_vectors(1, 2, 2, 8)
        got = [[r.id for r in row] for row in index.search(queries, k=5)]
    assert got == [[i for i, _ in row] for row in brute_force(queries, vectors[11:], ids[11:], 2, 4, 5)]


def test_a_failed_write_leaves_no_files(tmp_path) -> None:
    path = tmp_path / "idx"
    with MultiVectorIndex.create(path, dim=8, num_vectors=4) as index:
        index.add(["a"], unit_vectors(0, 1, 4, 8))
        before = sorted(p.name for p in path.glob("seg-*"))
        bad = unit_vectors(1, 5000, 4, 8)  # NaN in the second block: the first was already written
        bad[4500, 0, 0] = float("nan")
        with pytest.raises(InputError, match="item 4500"):
            index.add([f"b{i}" for i in range(5000)], bad)
        assert sorted(p.name for p in path.glob("seg-*")) == before and len(index) == 1
        index.add(["c"], torch.ones(1, 4, 8))
        assert sorted(index.ids) == ["a", "c"]
