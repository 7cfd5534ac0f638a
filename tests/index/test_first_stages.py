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
