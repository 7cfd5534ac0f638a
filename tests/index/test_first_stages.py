"""First stages are chosen by object: a toy one registered from outside the package serves a search."""

from __future__ import annotations

import pytest
import torch

from metaembed.budget import Budget
from metaembed.errors import InputError
from metaembed.index import FirstStage, MultiVectorIndex, search_modes
from metaembed.index.first_stages import FIRST_STAGES
from metaembed.index.search import SegmentView, bases

from .conftest import brute_force


class LastRows(FirstStage):
    """A toy first stage: shortlists the most recently added rows, whatever the query."""

    name = "toy-last-rows"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.calls: list[tuple[Budget, int]] = []

    def check_budget(self, budget: Budget) -> None:
        if budget.r_q != 1:
            raise InputError(f"toy-last-rows takes r_q == 1, got {budget}")

    def shortlist(self, views: tuple[SegmentView, ...], queries: torch.Tensor, budget: Budget, width: int) -> torch.Tensor:
        self.calls.append((budget, width))
        total = int(bases(views)[-1])
        refs = torch.arange(max(0, total - width), total)
        return refs.expand(queries.shape[0], -1)


@pytest.fixture
def toy_stage():
    FIRST_STAGES.register(LastRows)
    yield LastRows
    FIRST_STAGES.unregister(LastRows.name)


def test_a_registered_toy_first_stage_is_a_search_mode(corpus, toy_stage) -> None:
    ids, vectors, queries = corpus
    assert search_modes() == ["exact", "ann", "coarse", "toy-last-rows"]
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32") as index:
        index.add(ids, vectors)
        got = index.search(queries, k=3, budget="4,8", mode="toy-last-rows", shortlist=10)
        # the index made one instance for this mode and keeps it
        stage = index._first_stage("toy-last-rows")
        assert isinstance(stage, LastRows) and stage.calls == [(Budget(1, 1), 10)]
        with pytest.raises(InputError, match="r_q == 1"):
            index.search(queries, mode="toy-last-rows", first_stage_budget="2,1")
    # the shortlist is rows 50..59: the result is their exact top 3
    expected = brute_force(queries, vectors[50:], ids[50:], 4, 8, 3)
    assert [[hit.id for hit in row] for row in got] == [[i for i, _ in row] for row in expected]


def test_a_first_stage_object_is_a_mode_too(corpus) -> None:
    ids, vectors, queries = corpus
    with MultiVectorIndex.create(None, dim=16, num_vectors=8, dtype="float32") as index:
        index.add(ids, vectors)
        stage = LastRows(16)
        got = index.search(queries, k=2, budget="4,8", mode=stage, shortlist=5, first_stage_budget="1,2")
    assert stage.calls == [(Budget(1, 2), 5)]
    assert all(hit.id in ids[55:] for row in got for hit in row)


def test_refresh_keeps_the_ann_graph_and_grows_it_with_another_writers_commits(tmp_path) -> None:
    """An outside add extends the graph in place (no rebuild); an outside delete is filtered; a compaction rebuilds."""
    from .conftest import unit_vectors

    budget, first = Budget.parse("2,4"), Budget.parse("2,1")
    pages = unit_vectors(5, 60, 4, 16)
    reader = MultiVectorIndex.create(tmp_path / "ix", dim=16, num_vectors=4)
    reader.add([f"p{i}" for i in range(40)], pages[:40])
    queries = pages[40:, :2].clone()  # each query is the first two vectors of a page not yet added
    reader.search_batch(queries, 5, budget, mode="ann", first_stage_budget=first)
    stage = reader._first_stages["ann"]
    assert stage._graph.ntotal == 40
    writer = MultiVectorIndex.open(tmp_path / "ix")
    writer.add([f"p{i}" for i in range(40, 60)], pages[40:])
    assert reader.refresh()
    hits = reader.search_batch(queries, 5, budget, mode="ann", first_stage_budget=first)
    assert reader._first_stages["ann"] is stage and stage._graph.ntotal == 60  # grown, not rebuilt
    assert [row[0].id for row in hits] == [f"p{i}" for i in range(40, 60)]
    writer.delete(["p40"])
    assert reader.refresh()
    hits = reader.search_batch(queries[:1], 5, budget, mode="ann", first_stage_budget=first)
    assert "p40" not in [hit.id for hit in hits[0]]
    writer.compact()
    assert reader.refresh()
    hits = reader.search_batch(queries[1:2], 5, budget, mode="ann", first_stage_budget=first)
    assert hits[0][0].id == "p41" and stage._graph.ntotal == 59  # merged segments: the graph was rebuilt
    writer.close()
    reader.close()


def test_ann_keeps_the_first_live_rows_of_the_graph_answer_in_snapshot_refs() -> None:
    """Graph ordinals of three segments (added b, a, c) map to refs of a snapshot ordered a, b, c;
    dead rows and faiss's -1 padding are skipped, and each query keeps its first ``width`` live rows."""
    import numpy as np

    from metaembed.index.first_stages.ann import _live_refs

    starts = np.array([0, 3, 5, 9])  # graph: b = 0..2, a = 3..4, c = 5..8
    order = ["b", "a", "c"]
    offsets = {"a": 0, "b": 2, "c": 5}  # snapshot: a = refs 0..1, b = 2..4, c = 5..8
    alive = {"a": np.array([True, False]), "b": np.array([True, True, False]), "c": np.ones(4, bool)}
    ordinals = np.array([
        [4, 2, 8, 0, 3, 1],   # a1 dead, b2 dead -> c3, b0, a0 (b1 is fourth: cut at width 3)
        [5, -1, -1, -1, -1, -1],  # one point found, then padding
        [4, 2, 4, 2, 2, 4],   # only dead rows
    ])
    got = _live_refs(ordinals, starts, order, offsets, alive, width=3)
    assert got.tolist() == [[8, 2, 0], [5, -1, -1], [-1, -1, -1]]


@pytest.fixture
def kept_graphs(monkeypatch, tmp_path):
    """Every ann graph is kept (however fast its build), in a fresh folder; counts the points added to graphs."""
    import faiss

    from metaembed.index.first_stages import ann

    monkeypatch.setattr(ann, "_KEEP_SECONDS", -1.0)
    monkeypatch.setenv("METAEMBED_ANN_GRAPHS", str(tmp_path / "graphs"))
    added: list[int] = []
    original = faiss.IndexHNSWSQ.add

    def counting_add(self, x, *args, **kwargs):
        added.append(len(x))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(faiss.IndexHNSWSQ, "add", counting_add)
    return tmp_path / "graphs", added


def _built(path, seed: int, pages: int, first: int, last: int):
    """An index at ``path`` of random pages ``p0..`` added as ``[:first]``, then ``[first:last]``; the pages and ids."""
    from .conftest import unit_vectors

    vectors, ids = unit_vectors(seed, pages, 4, 16), [f"p{i}" for i in range(pages)]
    index = MultiVectorIndex.create(path, dim=16, num_vectors=4)
    index.add(ids[:first], vectors[:first])
    index.add(ids[first:last], vectors[first:last])
    return index, vectors, ids


def _ann_ids(index, queries, mode: str = "ann"):
    """Top-5 ids at (2,4) from a shortlist of 40 at (2,1); ``mode="coarse"`` takes the exact shortlist
    (which a graph of a few dozen points also finds)."""
    hits = index.search(queries, k=5, budget="2,4", mode=mode, shortlist=40, first_stage_budget="2,1")
    return [[hit.id for hit in row] for row in hits]


def test_the_next_process_loads_the_kept_graph_and_grows_it_by_the_segments_added_since(tmp_path, kept_graphs) -> None:
    import faiss

    folder, added = kept_graphs
    index, pages, ids = _built(tmp_path / "ix", 7, 60, 30, 50)
    with index:
        first = _ann_ids(index, queries := pages[:6, :2].clone())
    assert added == [30, 20] and len(list(folder.glob("*.faiss"))) == 1
    with MultiVectorIndex.open(tmp_path / "ix") as index:  # a new process: nothing built, the same answers
        assert _ann_ids(index, queries) == first and added == [30, 20]
        index.add(ids[50:], pages[50:])
    with MultiVectorIndex.open(tmp_path / "ix") as index:  # the kept graph holds 50 rows: only the new 10 are added
        grown = _ann_ids(index, queries)
        assert added == [30, 20, 10] and index._first_stages["ann"]._graph.ntotal == 60
        assert isinstance(index._first_stages["ann"]._graph, faiss.IndexHNSWSQ)  # fp16 points, kept and loaded as such
        assert grown == _ann_ids(index, queries, mode="coarse")


def test_a_damaged_or_stale_kept_graph_is_built_again(tmp_path, kept_graphs) -> None:
    folder, added = kept_graphs
    index, pages, _ = _built(tmp_path / "ix", 8, 40, 20, 40)
    with index:
        expected = _ann_ids(index, queries := pages[:4, :2].clone())
    (kept,) = folder.glob("*.faiss")
    data = bytearray(kept.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the graph: its CRC no longer matches
    kept.write_bytes(bytes(data))
    with MultiVectorIndex.open(tmp_path / "ix") as index:
        assert _ann_ids(index, queries) == expected and added == [20, 20, 20, 20]  # built again, from both segments
        index.delete(["p39"])
        index.compact()  # segments rewritten without the deleted row: the kept graph names segments that are gone
        names = {view.segment.name for view in index._store.views}
    with MultiVectorIndex.open(tmp_path / "ix") as index:
        got = _ann_ids(index, queries)
        assert sorted(added[4:]) == sorted(view.rows for view in index._store.views)  # built from the new segments
        assert {view.segment.name for view in index._store.views} == names
        assert got == _ann_ids(index, queries, mode="coarse") and all("p39" not in row for row in got)


def test_a_graph_that_cannot_be_kept_is_only_a_warning(tmp_path, kept_graphs, monkeypatch) -> None:
    from .conftest import unit_vectors

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("METAEMBED_ANN_GRAPHS", str(blocker / "graphs"))
    pages = unit_vectors(9, 30, 4, 16)
    with MultiVectorIndex.create(tmp_path / "ix", dim=16, num_vectors=4) as index:
        index.add([f"p{i}" for i in range(30)], pages)
        with pytest.warns(UserWarning, match="could not keep the ann graph"):
            hits = _ann_ids(index, pages[:2, :2].clone())
    assert [row[0] for row in hits] == ["p0", "p1"]


def test_saving_a_graph_prunes_the_graphs_of_indexes_that_are_gone(tmp_path, kept_graphs) -> None:
    import json
    import os
    import shutil
    import time

    from metaembed.index.first_stages import ann

    def owner(path) -> str:
        with path.open("rb") as handle:
            return ann._peek_header(handle)["folder"]

    folder, _ = kept_graphs
    for name in ("kept", "gone", "moved"):
        index, pages, _ = _built(tmp_path / name, 10, 30, 20, 30)
        with index:
            _ann_ids(index, pages[:2, :2].clone())
    owners = {owner(path): path.name for path in folder.glob("*.faiss")}
    assert len(owners) == 3
    shutil.rmtree(tmp_path / "gone")
    (tmp_path / "moved").rename(tmp_path / "elsewhere")
    (folder / "x.faiss").write_bytes(b"not a graph")  # damaged: useless to any version
    future = folder / "future.faiss"  # another metaembed's newer format: not ours to judge
    header = json.dumps({"version": ann._VERSION + 1, "folder": str(tmp_path / "nowhere")}).encode()
    future.write_bytes(ann._MAGIC + len(header).to_bytes(8, "little") + header)
    crashed, fresh = folder / "a.faiss.1.tmp", folder / "b.faiss.2.tmp"
    crashed.write_bytes(b"partial")
    fresh.write_bytes(b"partial")  # a writer may still be at it
    os.utime(crashed, (time.time() - 2 * ann._STALE_TEMPORARY_SECONDS,) * 2)
    unrelated = folder / "notes.txt"
    unrelated.write_text("mine")

    index, pages, _ = _built(tmp_path / "new", 11, 30, 20, 30)
    with index:
        _ann_ids(index, pages[:2, :2].clone())  # its save prunes
    left = {path.name for path in folder.iterdir() if path.suffix != ".faiss"}
    assert left == {"b.faiss.2.tmp", "notes.txt"}  # the fresh temporary file and a stranger's file stay
    graphs = {owner(path) for path in folder.glob("*.faiss")}
    assert graphs == {str((tmp_path / name).resolve()) for name in ("kept", "new", "nowhere")}
    assert owners[str((tmp_path / "kept").resolve())] in {path.name for path in folder.glob("*.faiss")}
    with MultiVectorIndex.open(tmp_path / "kept") as index:  # still adopted: nothing built
        before = len(kept_graphs[1])
        _ann_ids(index, pages[:2, :2].clone())
        assert len(kept_graphs[1]) == before


def test_pruning_an_unreadable_cache_folder_removes_nothing(tmp_path) -> None:
    from metaembed.index.first_stages.ann import prune_graphs

    assert prune_graphs(tmp_path / "absent") == []
