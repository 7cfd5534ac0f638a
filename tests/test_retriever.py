"""Building, resuming and searching a collection, against scores computed by hand."""

from __future__ import annotations

import pytest
import torch

from metaembed.errors import BudgetError, IndexStateError, InputError
from metaembed.ingest import iter_records
from metaembed.retriever import Retriever, build_index
from tests.frontdoor_helpers import BUDGETS, make_collection, write_docs


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("collection"))


def _naive_maxsim(query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    # (r_q, D) x (N, r_c, D) -> (N,): sum over query vectors of the best candidate vector
    return torch.einsum("qd,ncd->nqc", query, candidates).amax(dim=2).sum(dim=1)


def test_index_records_model_and_ladder(collection):
    retriever = Retriever.open(collection.index)
    # paths relative to the index, so the index and its model and folder can move together
    assert retriever.index.metadata["model"] == "../model"
    assert retriever.index.metadata["source"] == "../docs"
    assert [str(b) for b in retriever.ladder] == BUDGETS.split()
    assert len(retriever) == 7
    info = retriever.info()
    assert info["max_budget"] == "4,8" and info["size"] == 7
    assert info["source"] == str(collection.index / "../docs")
    assert retriever._model is None  # describing the index loaded no model
    # memory grows with r_c: 2 bytes (float16) x r_c x D per item
    dim = retriever.model.embedding_dim
    assert [row["memory_bytes"] for row in info["per_budget"]] == [7 * 2 * r_c * dim for r_c in (1, 4, 8)]


@pytest.mark.parametrize("budget", ["1,1", "2,4", "4,8"])
def test_search_matches_hand_computed_maxsim(collection, budget):
    retriever = Retriever.open(collection.index)
    r_q, r_c = map(int, budget.split(","))
    records = list(iter_records(collection.docs))
    candidates = retriever.model.encode_candidates([r.item() for r in records])[:, :r_c]
    candidates = candidates.half().float()  # the index stores float16
    query = retriever.model.encode_queries(["cats asleep"])[0, :r_q]
    expected = _naive_maxsim(query, candidates)
    order = expected.argsort(descending=True)
    hits = retriever.search("cats asleep", k=7, budget=budget)
    assert [h.rank for h in hits] == list(range(1, 8))
    assert [h.id for h in hits[:3]] == [records[i].id for i in order[:3]]
    torch.testing.assert_close(torch.tensor([h.score for h in hits]), expected[order], atol=2e-3, rtol=1e-3)


def test_budget_larger_than_available_names_the_limits(collection):
    retriever = Retriever.open(collection.index)
    with pytest.raises(BudgetError, match=r"r_c can be 1\.\.8"):
        retriever.search("x", budget="2,9")
    with pytest.raises(BudgetError, match=r"r_q can be 1\.\.4"):
        retriever.search("x", budget="5,8")


def test_build_resumes_and_gives_the_same_vectors(tmp_path, collection):
    partial = tmp_path / "partial"
    write_docs(partial)
    for name in ("notes.txt", "report.pdf"):
        (partial / name).unlink()
    out = tmp_path / "resumed.index"
    first = build_index(collection.model_dir, partial, out, budgets=BUDGETS, progress=False)
    assert len(first) == 4
    first.index.close()
    calls = []
    resumed = build_index(collection.model_dir, collection.docs, out, progress=False, on_batch=calls.append)
    assert len(resumed) == 7
    assert calls == [3]  # only the three new records were encoded
    reference = Retriever.open(collection.index)
    ids = sorted(resumed.index.ids)
    torch.testing.assert_close(resumed.index.vectors(ids), reference.index.vectors(ids))


def test_resume_with_another_model_is_refused(tmp_path, collection):
    other = tmp_path / "other-model"
    other.mkdir()
    with pytest.raises(IndexStateError, match="was built with model"):
        build_index(other, collection.docs, collection.index, progress=False)


def test_add_is_all_or_nothing_and_delete(tmp_path, collection):
    out = tmp_path / "copy.index"
    retriever = build_index(collection.model_dir, collection.docs, out, budgets=BUDGETS, progress=False)
    with pytest.raises(IndexStateError, match="already in the index"):
        retriever.add(["new", "red.png"], ["a", "b"])
    assert "new" not in retriever.index
    retriever.add(["new"], ["a new note"], [{"text": "a new note"}])
    assert retriever.search("a new note", k=8, budget="4,8")[0].payload in ({"text": "a new note"}, *[
        h.payload for h in retriever.search("a new note", k=8)])
    retriever.delete(["new"])
    assert "new" not in retriever.index and len(retriever) == 7
    with pytest.raises(IndexStateError, match="not in the index"):
        retriever.delete(["new"])


def test_the_shortlist_sizes_a_coarse_search(collection):
    retriever = Retriever.open(collection.index)
    first_stage = {h.id for h in retriever.search("cats asleep", k=3, budget="1,1")}  # the (1,1) best three
    exact = {h.id: h.score for h in retriever.search("cats asleep", k=7, budget="4,8")}
    hits = retriever.search("cats asleep", k=3, budget="4,8", mode="coarse", shortlist=3)
    assert {h.id for h in hits} == first_stage  # only the shortlist is re-ranked ...
    assert [h.score for h in hits] == pytest.approx([exact[h.id] for h in hits], abs=1e-5)  # ... exactly
    assert [h.id for h in retriever.search("cats asleep", k=7, budget="4,8", mode="coarse", shortlist=7)] == list(exact)
    with pytest.raises(InputError, match="shortlist must be a positive integer, got 0"):
        retriever.search("cats asleep", mode="coarse", shortlist=0)
