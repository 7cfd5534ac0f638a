"""A search's budget is read at the edge and checked once, by the retriever, where both limits are known."""

from __future__ import annotations

import pytest

from metaembed.budget import Budget
from metaembed.errors import BudgetError
from metaembed.retriever import Retriever
from tests.frontdoor_helpers import make_collection


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    return Retriever.open(make_collection(tmp_path_factory.mktemp("collection")).index)


def test_one_check_per_search_and_the_same_hits(retriever, monkeypatch) -> None:
    reference = [(h.id, h.score) for h in retriever.index.search(
        retriever.model.encode_queries(["cats asleep"]), k=5, budget="2,4")[0]]
    checks = []
    original = Budget.check_within

    def counted(self, max_r_q, max_r_c, where=""):
        checks.append((max_r_q, max_r_c, where))
        return original(self, max_r_q, max_r_c, where)

    monkeypatch.setattr(Budget, "check_within", counted)
    hits = retriever.search("cats asleep", k=5, budget="2,4")
    # the retriever's check (model's r_q and index's r_c at once); the model and the index trust it
    assert checks == [(retriever.max_r_q, retriever.max_r_c, "this index and model")]
    assert [(h.id, h.score) for h in hits] == reference
    checks.clear()
    assert retriever.search("cats asleep", k=2)[0].rank == 1
    assert checks == []  # the default budget comes from the ladder, already within both limits
    with pytest.raises(BudgetError, match=r"r_c can be 1\.\.8 .*ladder"):
        retriever.search("x", budget="2,9")
