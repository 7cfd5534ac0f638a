"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from metaembed.errors import InputError
from metaembed.evaluation.metrics import build_run, precision_at_1, retrieval_metrics


def test_precision_at_1_counts_ties_against_the_positive():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2],  # positive wins
            [0.5, 0.5, 0.1],  # tie with a distractor: a miss
            [0.2, 0.3, 0.1],  # distractor wins
            [0.0, 0.0, 0.0],  # an untrained model's constant scores: a miss, not a hit
        ]
    )
    assert precision_at_1(scores).tolist() == [True, False, False, False]


def test_precision_at_1_ignores_copies_of_the_positive():
    scores = torch.tensor([[0.7, 0.2, 0.7], [0.7, 0.8, 0.7]])
    same = torch.tensor([True, False, True])  # column 2 is the positive listed again
    assert precision_at_1(scores, same).tolist() == [True, False]
    assert precision_at_1(scores).tolist() == [False, False]
    with pytest.raises(InputError, match=r"\(queries, candidates\)"):
        precision_at_1(torch.zeros(3))


def test_graded_ndcg_recall_mrr_by_hand():
    qrels = {
        "q1": {"d1": 2, "d2": 1, "d3": 0},
        "q2": {"d9": 1},  # its relevant document is never retrieved
    }
    run = {
        "q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6},
        "q2": {"d1": 0.5, "d2": 0.4},
    }
    # trec_eval's nDCG: gain = grade, discount log2(rank + 1).
    dcg = 2 / math.log2(3) + 1 / math.log2(5)  # d1 at rank 2, d2 at rank 4
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    q1_ndcg5 = dcg / ideal
    values = retrieval_metrics(qrels, run, k_values=(1, 2, 5))
    assert values["ndcg@5"] == pytest.approx((q1_ndcg5 + 0.0) / 2)
    assert values["ndcg@1"] == pytest.approx(0.0)  # d3 (grade 0) is first
    assert values["ndcg@2"] == pytest.approx((2 / math.log2(3)) / ideal / 2)
    assert values["recall@2"] == pytest.approx((1 / 2 + 0) / 2)  # one of q1's two relevant docs
    assert values["recall@5"] == pytest.approx((1 + 0) / 2)
    assert values["mrr"] == pytest.approx((1 / 2 + 0) / 2)


def test_a_judged_query_missing_from_the_run_scores_zero():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": {"d1": 1.0}}
    values = retrieval_metrics(qrels, run, k_values=(5,))
    assert values["ndcg@5"] == pytest.approx(0.5)
    assert values["mrr"] == pytest.approx(0.5)


def test_trec_eval_breaks_ties_by_document_id_descending():
    # Three tied documents: trec_eval ranks "d9" > "d3" > "d10" > "d1" (string order, descending).
    qrels = {"q": {"d1": 1}}
    values = retrieval_metrics(qrels, {"q": {"d1": 1.0, "d3": 1.0, "d9": 1.0, "d10": 1.0}}, k_values=(5,))
    assert values["mrr"] == pytest.approx(1 / 4)
    assert values["ndcg@5"] == pytest.approx(1 / math.log2(5))


def test_retrieval_metrics_rejects_bad_input():
    with pytest.raises(InputError, match="judge no query"):
        retrieval_metrics({"q": {}}, {"q": {"d": 1.0}})
    with pytest.raises(InputError, match="positive integers"):
        retrieval_metrics({"q": {"d": 1}}, {"q": {"d": 1.0}}, k_values=(0,))


def test_duplicate_document_rows_score_their_maximum():
    scores = torch.tensor([[0.1, 0.7, 0.3, 0.2], [0.9, 0.1, 0.3, 0.8]])
    run = build_run(scores, ["q1", "q2"], ["a", "b", "a", "c"])
    assert run == {"q1": {"b": pytest.approx(0.7), "a": pytest.approx(0.3), "c": pytest.approx(0.2)},
                   "q2": {"a": pytest.approx(0.9), "c": pytest.approx(0.8), "b": pytest.approx(0.1)}}
    # depth counts distinct documents, not rows: "a" twice still leaves room for "c".
    assert list(build_run(scores, ["q1", "q2"], ["a", "b", "a", "c"], depth=2)["q2"]) == ["a", "c"]


def test_build_run_top_depth_and_identical_ids():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.4]])
    run = build_run(scores, ["q1", "d3"], ["d1", "d2", "d3"], depth=2)
    assert run == {"q1": {"d2": pytest.approx(0.9), "d3": pytest.approx(0.5)},
                   "d3": {"d3": pytest.approx(0.4), "d1": pytest.approx(0.3)}}
    run = build_run(scores, ["q1", "d3"], ["d1", "d2", "d3"], depth=2, ignore_identical_ids=True)
    assert set(run["d3"]) == {"d1", "d2"}
    with pytest.raises(InputError, match="3 documents"):
        build_run(scores, ["q1"], ["d1", "d2", "d3"])


def test_per_query_metrics_by_hand_and_their_mean_is_retrieval_metrics():
    from metaembed.evaluation.metrics import per_query_metrics

    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d9": 1}, "q3": {"d5": 1}, "q4": {}}
    run = {"q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6}, "q2": {"d1": 0.5}, "q3": {"d5": 0.1, "d1": 0.0}}
    values = per_query_metrics(qrels, run, k_values=(1, 5))
    assert set(values) == {"q1", "q2", "q3"}  # q4 judges nothing: not scored
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert values["q1"]["ndcg@5"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert values["q2"] == {"ndcg@1": 0.0, "ndcg@5": 0.0, "recall@1": 0.0, "recall@5": 0.0, "mrr": 0.0}
    assert values["q3"]["recall@1"] == 1.0 and values["q3"]["mrr"] == 1.0
    means = retrieval_metrics(qrels, run, k_values=(1, 5))
    for name, mean in means.items():
        assert mean == pytest.approx(sum(v[name] for v in values.values()) / 3)
    missing = per_query_metrics({"q1": {"d1": 1}, "q2": {"d2": 1}}, {"q1": {"d1": 1.0}}, k_values=(5,))
    assert missing["q2"]["ndcg@5"] == 0.0 and missing["q1"]["ndcg@5"] == 1.0
