"""MultiVectorIndex: search results against a brute-force reference, writes, persistence, errors."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest
import torch

from metaembed.budget import Budget
from metaembed.errors import BudgetError, IndexStateError, InputError
from metaembed.index import MultiVectorIndex, SearchResult
from metaembed.index.codecs import embedding_bytes
from metaembed.scoring import maxsim_flops

from .conftest import brute_force, stored_values


def hits(results: list[SearchResult]) -> list[tuple[str, float]]:
    return [(r.id, r.score) for r in results]


def assert_same_ranking(got: list[list[SearchResult]], expected, atol: float = 1e-5) -> None:
    assert len(got) == len(expected)
    for row, want in zip(got, expected):
        np.testing.assert_allclose([r.score for r in row], [s for _, s in want], atol=atol)
        # the same ids with the same scores; items that tie exactly (equal vectors) may come in either order
        wanted = dict(want)
        assert len(row) == len(want) and all(r.id in wanted and abs(r.score - wanted[r.id]) <= atol for r in row)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
@pytest.mark.parametrize("budget", [Budget(1, 1), Budget(2, 4), Budget(4, 8), Budget(3, 5)], ids=str)
def test_exact_search_equals_brute_force_on_stored_values(corpus, dtype: str, budget: Budget) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype=dtype) as index:
        index.add(ids, vectors)
        got = index.search(queries, k=7, budget=budget)
    # The reference scores the values the storage precision keeps, in float64:
    # fp16 / bf16 / int8 storage is scored in fp32 with no loss beyond storage rounding.
    expected = brute_force(queries, stored_values(vectors, dtype), ids, budget.r_q, budget.r_c, 7)
    assert_same_ranking(got, expected)


def test_int8_group_scales_survive_search_merge_and_reopen(tmp_path) -> None:
    # D = 128: two scale groups per vector, through add, a merging save and a reopen.
    vectors = torch.randn(40, 4, 128, generator=torch.Generator().manual_seed(3))
    vectors[:, :, 64:] *= 0.01  # a quiet second half that one scale per vector would mostly round to 0
    queries = torch.randn(3, 2, 128, generator=torch.Generator().manual_seed(4))
    ids = [f"g{i}" for i in range(40)]
    stored = stored_values(vectors, "int8")
    assert (stored - vectors)[:, :, 64:].abs().max() <= vectors[:, :, 64:].abs().max() / 254 + 1e-7
    path = tmp_path / "grouped"
    index = MultiVectorIndex.create(path, dim=128, num_vectors=4, dtype="int8")
    for start in range(0, 40, 10):
        index.add(ids[start : start + 10], vectors[start : start + 10])
    expected = brute_force(queries, stored, ids, 2, 4, 6)
    assert_same_ranking(index.search(queries, k=6, budget="2,4"), expected, atol=1e-4)
    index.save()
    index.close()
    with MultiVectorIndex.open(path) as reopened:
        assert_same_ranking(reopened.search(queries, k=6, budget="2,4"), expected, atol=1e-4)
        torch.testing.assert_close(reopened.vectors(ids[:2]), stored[:2])
        assert reopened.memory_bytes() == 40 * 4 * (128 + 2 * 4)


def test_exact_search_over_many_segments_in_blocks_that_span_them(corpus, monkeypatch) -> None:
    from metaembed.index import search

    # blocks of 16 rows over segments of 7: blocks start and end inside segments
    monkeypatch.setattr(search, "_BLOCK_ROWS", 16)
    monkeypatch.setattr(search, "_SCORE_BYTES", 1)
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="int8") as index:
        for start in range(0, 60, 7):
            index.add(ids[start : start + 7], vectors[start : start + 7])
        index.delete(["doc-3", "doc-15"])
        live = [i for i in ids if i not in ("doc-3", "doc-15")]
        stored = stored_values(vectors, "int8")[[ids.index(i) for i in live]]
        assert_same_ranking(index.search(queries, k=9, budget="3,5"), brute_force(queries, stored, live, 3, 5, 9))


def test_single_query_budget_strings_and_default_budget(corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32") as index:
        index.add(ids, vectors)
        single = index.search(queries[0], k=3, budget="2,4")
        assert hits(single[0]) == hits(index.search(queries[:1], k=3, budget=Budget(2, 4))[0])
        full = index.search(queries, k=3)  # None: all 4 query vectors, all 8 stored
        assert_same_ranking(full, brute_force(queries, vectors, ids, 4, 8, 3))


def test_candidates_with_more_vectors_keep_the_prefix(corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=4, dtype="float32") as index:
        index.add(ids, vectors)  # 8 vectors given, 4 kept
        torch.testing.assert_close(index.vectors(ids[:3]), vectors[:3, :4])
        assert_same_ranking(index.search(queries, k=5, budget="4,4"), brute_force(queries, vectors, ids, 4, 4, 5))


def test_payloads_upsert_delete_and_ids(corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32") as index:
        index.add(ids[:30], vectors[:30], payloads=[{"n": i} for i in range(30)])
        index.add(ids[30:], vectors[30:])
        assert len(index) == 60 and index.ids == ids
        top = index.search(vectors[5:6, :4], k=1, budget="4,8")[0][0]
        assert top.id == "doc-5" and top.payload == {"n": 5}

        # Upsert doc-5 with doc-40's vectors and a new payload: queries for doc-40 now find both.
        index.upsert(["doc-5", "new"], vectors[[40, 41]], payloads=[{"n": "moved"}, None])
        assert len(index) == 61 and "new" in index
        torch.testing.assert_close(index.vectors(["doc-5"]), vectors[40:41])
        found = {r.id: r for r in index.search(vectors[40:41, :4], k=2, budget="4,8")[0]}
        assert set(found) == {"doc-5", "doc-40"} and found["doc-5"].payload == {"n": "moved"}

        mixed = ["doc-7", "new", "doc-44", "doc-5", "missing", "doc-8"]  # payloads, none, unknown ids, in any order
        assert index.payloads(mixed) == {"doc-7": {"n": 7}, "new": None, "doc-44": None, "doc-5": {"n": "moved"},
                                         "doc-8": {"n": 8}}

        index.delete(["doc-40", "doc-0"])
        assert "doc-40" not in index and len(index) == 59
        assert index.search(vectors[40:41, :4], k=1, budget="4,8")[0][0].id == "doc-5"
        remaining = [i for i in index.ids]
        current = index.vectors(remaining)
        assert_same_ranking(index.search(queries, k=10, budget="4,8"), brute_force(queries, current, remaining, 4, 8, 10))


def test_k_larger_than_index_and_empty_index(corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8) as index:
        assert index.search(queries, k=3) == [[] for _ in range(5)]
        index.add(ids[:4], vectors[:4])
        index.delete(ids[:1])
        results = index.search(queries, k=10, budget="1,1")
        assert all(len(row) == 3 for row in results)
        assert all("doc-0" not in [r.id for r in row] for row in results)


@pytest.mark.parametrize("mode", ["coarse", "ann"])
def test_coarse_to_fine_with_a_full_shortlist_is_exact(corpus, mode: str) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32") as index:
        index.add(ids, vectors)
        got = index.search(queries, k=5, budget="4,8", mode=mode, shortlist=60)
    assert_same_ranking(got, brute_force(queries, vectors, ids, 4, 8, 5))


def test_coarse_reranks_exactly_the_first_stage_shortlist(corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32") as index:
        index.add(ids[:25], vectors[:25])
        index.add(ids[25:], vectors[25:])  # two segments: the shortlist spans both
        index.delete(["doc-3"])
        got = index.search(queries, k=4, budget="4,8", mode="coarse", shortlist=12, first_stage_budget="2,1")
    live = [i for i in range(60) if i != 3]
    first = brute_force(queries, vectors[live], [ids[i] for i in live], 2, 1, 12)
    for row, stage_one, query in zip(got, first, queries):
        chosen = [ids.index(i) for i, _ in stage_one]
        expected = brute_force(query[None], vectors[chosen], [ids[i] for i in chosen], 4, 8, 4)
        assert_same_ranking([row], expected)


def test_ann_first_stage_tracks_adds_and_deletes(corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32") as index:
        index.add(ids[:30], vectors[:30])
        index.search(queries, k=3, mode="ann", shortlist=30)  # builds the graph
        index.add(ids[30:], vectors[30:])
        index.delete(ids[:10])
        got = index.search(queries, k=5, budget="4,8", mode="ann", shortlist=50)
    assert_same_ranking(got, brute_force(queries, vectors[10:], ids[10:], 4, 8, 5))


def test_persistence_round_trip_and_metadata(tmp_path, corpus) -> None:
    ids, vectors, queries = corpus
    path = tmp_path / "idx"
    index = MultiVectorIndex.create(path, dim=16, num_vectors=8, dtype="int8", metadata={"model": "m"})
    index.add(ids, vectors, payloads=[{"i": i} for i in range(60)])
    index.delete(ids[:5])
    index.metadata["budgets"] = ["1,1", "4,8"]
    before = index.search(queries, k=5, budget="4,8")
    index.save()
    index.close()
    with MultiVectorIndex.open(path) as reopened:
        assert (reopened.dim, reopened.num_vectors, reopened.dtype) == (16, 8, "int8")
        assert reopened.metadata == {"model": "m", "budgets": ["1,1", "4,8"]}
        assert reopened.ids == ids[5:]
        after = reopened.search(queries, k=5, budget="4,8")
        assert [hits(r) for r in after] == [hits(r) for r in before]
        assert after[0][0].payload == {"i": int(after[0][0].id.split("-")[1])}


def test_scratch_index_saved_to_a_path_continues_there(tmp_path, corpus) -> None:
    ids, vectors, _ = corpus
    index = MultiVectorIndex.create(None, dim=16, num_vectors=8)
    assert index.path is None
    index.add(ids[:10], vectors[:10])
    with pytest.raises(IndexStateError, match="without a path"):
        index.save()
    index.save(tmp_path / "saved")
    assert index.path == tmp_path / "saved"
    index.add(ids[10:20], vectors[10:20])  # goes to the saved folder
    index.close()
    with MultiVectorIndex.open(tmp_path / "saved") as reopened:
        assert reopened.ids == ids[:20]
        torch.testing.assert_close(reopened.vectors(ids[:20]), stored_values(vectors[:20], "float16"))
    with pytest.raises(IndexStateError, match="not empty"):
        MultiVectorIndex.create(None, dim=16, num_vectors=8).save(tmp_path / "saved")


def test_compaction_reclaims_deleted_rows(tmp_path, corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(tmp_path / "idx", dim=16, num_vectors=8, dtype="float32") as index:
        index.add(ids, vectors)
        index.delete(ids[::2])
        size = lambda: sum(p.stat().st_size for p in (tmp_path / "idx").glob("seg-*"))  # noqa: E731
        assert size() == embedding_bytes(8, 16, "float32", 60)
        index.save()
        assert size() == embedding_bytes(8, 16, "float32", 30)
        assert index.ids == ids[1::2]
        torch.testing.assert_close(index.vectors(ids[1::2]), vectors[1::2])
        assert_same_ranking(index.search(queries, k=5, budget="4,8"), brute_force(queries, vectors[1::2], ids[1::2], 4, 8, 5))


def test_many_small_adds_are_merged_into_few_segments(corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32") as index:
        for i in range(60):
            index.add([ids[i]], vectors[i : i + 1])
        assert len(index._store.views) < 16  # tiered merging keeps the segment count logarithmic
        assert index.ids == ids
        assert_same_ranking(index.search(queries, k=6, budget="4,8"), brute_force(queries, vectors, ids, 4, 8, 6))


def test_memory_and_flops_report_the_efficiency_table(corpus) -> None:
    ids, vectors, _ = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="int8") as index:
        index.add(ids, vectors)
        assert index.memory_bytes() == 60 * 8 * (16 + 4)
        assert index.memory_bytes("1,2") == 60 * 2 * (16 + 4)
        assert index.flops("4,8", num_queries=3) == maxsim_flops("4,8", 16, 60, 3) == 2 * 4 * 8 * 16 * 60 * 3
        with pytest.raises(BudgetError, match="only 8"):
            index.memory_bytes("1,9")


def test_searches_run_while_a_writer_adds(corpus) -> None:
    ids, vectors, queries = corpus
    index = MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32")
    index.add(ids[:10], vectors[:10])
    errors: list[BaseException] = []
    done = threading.Event()

    def search_loop() -> None:
        try:
            while not done.is_set():
                for row in index.search(queries, k=5, budget="2,4"):
                    assert len(row) == 5 and all(r.id in ids for r in row)
        except BaseException as error:  # reported to the main thread
            errors.append(error)

    readers = [threading.Thread(target=search_loop) for _ in range(2)]
    for reader in readers:
        reader.start()
    for i in range(10, 60, 2):
        index.add(ids[i : i + 2], vectors[i : i + 2])
        index.delete([ids[i]])
    done.set()
    for reader in readers:
        reader.join()
    assert not errors, errors
    live = [i for i in range(60) if i < 10 or i % 2 == 1]
    assert_same_ranking(index.search(queries, k=5, budget="2,4"), brute_force(queries, vectors[live], [ids[i] for i in live], 2, 4, 5))
    index.close()


class TestErrors:
    @pytest.fixture
    def index(self, corpus):
        ids, vectors, _ = corpus
        with MultiVectorIndex.create(None, dim=16, num_vectors=8) as index:
            index.add(ids[:10], vectors[:10])
            yield index

    def test_wrong_dimension(self, index, corpus) -> None:
        with pytest.raises(InputError, match="D=12 but the index stores D=16"):
            index.add(["x"], torch.zeros(1, 8, 12))
        with pytest.raises(InputError, match="D=12 but the index stores D=16"):
            index.search(torch.zeros(2, 4, 12))
        with pytest.raises(InputError, match="4 vectors per item but the index stores 8"):
            index.add(["x"], torch.zeros(1, 4, 16))
        with pytest.raises(InputError, match="2 ids but 1 embeddings"):
            index.add(["x", "y"], torch.zeros(1, 8, 16))

    def test_budget_larger_than_stored(self, index, corpus) -> None:
        with pytest.raises(BudgetError, match="only 8"):
            index.search(corpus[2], budget="4,16")
        with pytest.raises(BudgetError, match="only 4"):
            index.search(corpus[2], budget="5,8")
        with pytest.raises(BudgetError):
            index.search(corpus[2], budget="4,8", mode="coarse", first_stage_budget="1,9")

    def test_duplicate_ids(self, index, corpus) -> None:
        vectors = corpus[1]
        with pytest.raises(IndexStateError, match=r"already in the index: \['doc-3'\]"):
            index.add(["doc-3", "fresh"], vectors[:2])
        with pytest.raises(IndexStateError, match=r"duplicate ids in one batch: \['x'\]"):
            index.add(["x", "x"], vectors[:2])
        assert "fresh" not in index and len(index) == 10  # nothing was stored

    def test_nan_and_inf_vectors(self, index, corpus) -> None:
        bad = corpus[1][:3].clone()
        bad[2, 5, 0] = float("nan")
        with pytest.raises(InputError, match="NaN or inf .*item 2"):
            index.add(["p", "q", "r"], bad)
        bad[2, 5, 0] = float("inf")
        with pytest.raises(InputError, match="NaN or inf"):
            index.upsert(["p", "q", "r"], bad)
        with pytest.raises(InputError, match="NaN or inf"):
            index.search(torch.full((1, 2, 16), float("nan")))
        assert len(index) == 10 and not [p for p in index._store.folder.iterdir() if p.suffix == ".tmp"]

    def test_unknown_ids_on_delete(self, index) -> None:
        with pytest.raises(IndexStateError, match=r"not in the index: \['nope'\]"):
            index.delete(["doc-1", "nope"])
        assert "doc-1" in index  # nothing was deleted

    def test_bad_arguments(self, index, corpus) -> None:
        queries = corpus[2]
        with pytest.raises(InputError, match="ids must be a sequence"):
            index.add("doc-x", corpus[1][:1])
        with pytest.raises(InputError, match="payload 0 is not JSON"):
            index.add(["z"], corpus[1][:1], payloads=[{"bad": object()}])
        with pytest.raises(InputError, match="unknown search mode 'fast'"):
            index.search(queries, mode="fast")
        with pytest.raises(InputError, match="k must be a positive integer"):
            index.search(queries, k=0)
        with pytest.raises(InputError, match="r_c == 1"):
            index.search(queries, mode="ann", first_stage_budget="1,2")
        with pytest.raises(InputError, match="unknown index dtype 'int4'"):
            MultiVectorIndex.create(None, dim=4, num_vectors=2, dtype="int4")
        with pytest.raises(InputError, match="dim must be a positive integer"):
            MultiVectorIndex.create(None, dim=0, num_vectors=2)


def test_opening_a_path_that_is_not_an_index(tmp_path) -> None:
    with pytest.raises(IndexStateError, match="no such directory"):
        MultiVectorIndex.open(tmp_path / "missing")
    with pytest.raises(IndexStateError, match="has no catalog.sqlite"):
        MultiVectorIndex.open(tmp_path)
    (tmp_path / "catalog.sqlite").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(IndexStateError, match="unreadable"):
        MultiVectorIndex.open(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    db = sqlite3.connect(other / "catalog.sqlite")
    db.execute("CREATE TABLE config (key TEXT, value TEXT)")
    db.commit()
    db.close()
    with pytest.raises(IndexStateError, match="not a metaembed index"):
        MultiVectorIndex.open(other)
    with pytest.raises(IndexStateError, match="exists and is not empty"):
        MultiVectorIndex.create(tmp_path, dim=4, num_vectors=2)


def test_export_streams_live_vectors_in_storage_order(corpus) -> None:
    ids, vectors, _ = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="bfloat16") as index:
        index.add(ids[:25], vectors[:25])
        index.add(ids[25:], vectors[25:])
        index.delete(ids[20:30])
        batches = list(index.export(r_c=3, batch=7))
    got_ids = [i for batch_ids, _ in batches for i in batch_ids]
    assert got_ids == ids[:20] + ids[30:]
    assert all(values.shape[1:] == (3, 16) and len(batch_ids) == len(values) for batch_ids, values in batches)
    keep = list(range(20)) + list(range(30, 60))
    torch.testing.assert_close(torch.cat([v for _, v in batches]), stored_values(vectors[keep, :3], "bfloat16"))
