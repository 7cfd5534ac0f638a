"""Payload filters before top-k, and refresh(): a second connection's commits seen without reopening."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaembed.errors import IndexStateError, InputError
from metaembed.index import MultiVectorIndex, search_modes

from .conftest import brute_force, unit_vectors

# Payload values of several JSON types, including look-alikes (1 / 1.0 / True / "1") that must stay apart.
_LANGS = ["en", "fr", "de"]
_ODD = [1, 1.0, True, "1", None]


def _payload(i: int) -> dict | None:
    if i % 11 == 10:
        return None  # no payload at all: matches no filter
    payload = {"lang": _LANGS[i % 3], "year": 2020 + i % 5, "n": _ODD[i % 5]}
    if i % 7 == 0:
        del payload["lang"]
    return payload


def _reference_match(payload: dict | None, spec: dict) -> bool:
    """The documented semantics, naively: each field present with a value of the same JSON type."""
    if payload is None:
        return False

    def same(value, wanted) -> bool:
        if isinstance(wanted, bool) or isinstance(value, bool):
            return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
        if wanted is None or value is None:
            return value is None and wanted is None
        if isinstance(wanted, str) or isinstance(value, str):
            return isinstance(value, str) and isinstance(wanted, str) and value == wanted
        return float(value) == float(wanted)

    for field, wanted in spec.items():
        options = wanted["in"] if isinstance(wanted, dict) else [wanted]
        if field not in payload or not any(same(payload[field], option) for option in options):
            return False
    return True


@pytest.fixture
def filtered_corpus():
    ids = [f"doc-{i}" for i in range(300)]
    return ids, unit_vectors(3, 300, 4, 16), [_payload(i) for i in range(300)], unit_vectors(4, 3, 2, 16)


SPECS = [
    {"lang": "fr"},
    {"lang": {"in": ["en", "de"]}, "year": 2021},
    {"n": 1},  # 1 and 1.0, never True or "1"
    {"n": True},
    {"n": "1"},
    {"n": None},  # present and null
    {"year": {"in": [2024, 2022.0]}},
    {"lang": "xx"},
    {"n": {"in": []}},
]


@pytest.mark.parametrize("mode", search_modes())
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_filter_ranks_exactly_the_matching_items(filtered_corpus, spec, mode) -> None:
    ids, vectors, payloads, queries = filtered_corpus
    keep = [i for i, payload in enumerate(payloads) if _reference_match(payload, spec)]
    k = 10
    with MultiVectorIndex.create(None, dim=16, num_vectors=4, dtype="float32") as index:
        # three segments and some deleted rows, so the mask meets tombstones and segment offsets
        for start in range(0, 300, 100):
            index.add(ids[start : start + 100], vectors[start : start + 100], payloads[start : start + 100])
        index.delete(["doc-3", "doc-4"])
        keep = [i for i in keep if ids[i] not in ("doc-3", "doc-4")]
        got = index.search(queries, k=k, budget="2,4", mode=mode, shortlist=50, filter=spec)
    expected = brute_force(queries, vectors[keep], [ids[i] for i in keep], 2, 4, k)
    for row, want in zip(got, expected):
        assert len(row) == min(k, len(keep))  # k hits whenever k items match: the filter comes before top-k
        if mode == "exact":
            assert [r.id for r in row] == [i for i, _ in want]
            np.testing.assert_allclose([r.score for r in row], [s for _, s in want], atol=1e-5)
        assert all(_reference_match(r.payload, spec) for r in row)


def test_a_selective_filter_still_fills_k_where_over_fetching_would_not(filtered_corpus) -> None:
    ids, vectors, payloads, queries = filtered_corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=4) as index:
        index.add(ids, vectors, [{"rare": i % 50 == 0} for i in range(300)])
        for mode in search_modes():
            rows = index.search(queries, k=6, budget="2,4", mode=mode, shortlist=6, filter={"rare": True})
            assert [len(row) for row in rows] == [6, 6, 6]
            assert all(int(r.id.split("-")[1]) % 50 == 0 for row in rows for r in row)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"lang": ["en"]}, "must be a string, number, boolean or null"),
        ({"year": {"gt": 2020}}, "the only operator is 'in'"),
        ({"year": {"in": "2020"}}, "'in' takes a list"),
        ({"year": float("nan")}, "must be finite"),
        ({"year": 2**70}, "64-bit integer range"),
        ({"": 1}, "non-empty strings"),
        (["lang"], "must be a mapping"),
    ],
)
def test_bad_filters_are_refused_by_name(filtered_corpus, spec, message) -> None:
    ids, vectors, payloads, queries = filtered_corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=4) as index:
        index.add(ids[:5], vectors[:5], payloads[:5])
        with pytest.raises(InputError, match=message):
            index.search(queries, k=3, filter=spec)


def test_refresh_sees_another_connections_adds_deletes_and_metadata(tmp_path) -> None:
    vectors = unit_vectors(5, 6, 2, 8)
    writer = MultiVectorIndex.create(tmp_path / "idx", dim=8, num_vectors=2, metadata={"v": 1})
    writer.add(["a", "b"], vectors[:2], [{"x": 1}, {"x": 2}])
    reader = MultiVectorIndex.open(tmp_path / "idx")
    assert reader.refresh() is False  # nothing new: no reload
    writer.add(["c", "d"], vectors[2:4], [{"x": 3}, {"x": 4}])
    writer.delete(["a"])
    writer.metadata = {"v": 2}
    assert len(reader) == 2  # a snapshot until asked
    assert reader.refresh() is True
    assert sorted(reader.ids) == ["b", "c", "d"] and reader.metadata == {"v": 2}
    top = reader.search(vectors[2], k=3, budget="2,2")[0]
    assert top[0].id == "c" and top[0].payload == {"x": 3}
    assert reader.search(vectors[3], k=1, filter={"x": 4})[0][0].id == "d"
    # a write refreshes first: an id the other connection added is a clear duplicate, not an SQLite error
    with pytest.raises(IndexStateError, match="already in the index"):
        reader.add(["c"], vectors[4:5])
    reader.upsert(["c"], vectors[5:6], [{"x": 30}])
    assert writer.refresh() is True and writer.payloads(["c"]) == {"c": {"x": 30}}
    torch.testing.assert_close(writer.vectors(["c"]), reader.vectors(["c"]))
    writer.close()
    reader.close()
