"""Losses against hand-computed values and a naive per-pair reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metaembed.budget import Budget
from metaembed.errors import BudgetError, InputError
from metaembed.training.losses import DEFAULT_GROUPS, InfoNCELoss, MMRLoss, parse_groups


def _unit(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def _naive_maxsim(q: torch.Tensor, c: torch.Tensor, r_q: int, r_c: int) -> float:
    """Σ_i max_j <q_i, c_j> with Python loops: the paper's formula, one pair at a time."""
    total = 0.0
    for i in range(r_q):
        total += max(float(q[i] @ c[j]) for j in range(r_c))
    return total


def _naive_infonce(query, positives, negatives, r_q, r_c, tau, offset=0):
    """Per-query -log softmax written out with math.exp, and the strict in-batch accuracy."""
    losses, hits = [], 0
    for u in range(query.shape[0]):
        scores = [_naive_maxsim(query[u], positives[v], r_q, r_c) for v in range(positives.shape[0])]
        if negatives is not None:
            scores += [_naive_maxsim(query[u], negatives[u, k], r_q, r_c) for k in range(negatives.shape[1])]
        target = offset + u
        log_denominator = math.log(sum(math.exp(s / tau) for s in scores))
        losses.append(log_denominator - scores[target] / tau)
        hits += all(scores[target] > s for k, s in enumerate(scores) if k != target)
    return sum(losses) / len(losses), hits / query.shape[0]


def test_infonce_hand_computed_two_by_two():
    # One vector per side, D = 2: scores are plain dot products.
    query = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    positives = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])
    loss = InfoNCELoss(temperature=0.5)
    out = loss(query, positives)
    # query 0: scores (1, 0.6), target 0; query 1: scores (0, 0.8), target 1.
    l0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    l1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    assert out.loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert out.budget_accuracies[Budget(1, 1)].item() == 1.0


def test_infonce_matches_naive_reference_with_negatives_and_offset():
    query = _unit(3, 4, 8, seed=0)
    positives = _unit(6, 5, 8, seed=1)  # a "gathered" batch of two processes × 3
    negatives = _unit(3, 2, 5, 8, seed=2)
    out = InfoNCELoss(temperature=0.03)(query, positives, negatives, target_offset=3)
    expected_loss, expected_accuracy = _naive_infonce(query, positives, negatives, 4, 5, 0.03, offset=3)
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert out.budget_accuracies[Budget(4, 5)].item() == pytest.approx(expected_accuracy)


def test_mmr_groups_match_naive_reference_and_combinations():
    query = _unit(4, 16, 6, seed=3)
    positives = _unit(4, 64, 6, seed=4)
    negatives = _unit(4, 1, 64, 6, seed=5)
    inner = InfoNCELoss(temperature=0.03)
    mean = MMRLoss(inner)(query, positives, negatives)
    summed = MMRLoss(inner, combination="sum")(query, positives, negatives)
    assert [g.budget for g in DEFAULT_GROUPS] == list(mean.budget_losses)
    expected = {}
    for group in DEFAULT_GROUPS:
        r_q, r_c = group.budget.as_tuple()
        expected[group.budget], accuracy = _naive_infonce(query, positives, negatives, r_q, r_c, 0.03)
        assert mean.budget_losses[group.budget].item() == pytest.approx(expected[group.budget], rel=1e-5)
        assert mean.budget_accuracies[group.budget].item() == pytest.approx(accuracy)
    assert summed.loss.item() == pytest.approx(sum(expected.values()), rel=1e-5)
    assert mean.loss.item() == pytest.approx(sum(expected.values()) / 5, rel=1e-5)
    assert set(mean.metrics()) >= {"loss", "loss/1,1", "accuracy/16,64"}


def test_mmr_weights_and_single_group_equals_infonce():
    query, positives = _unit(3, 4, 5, seed=6), _unit(3, 8, 5, seed=7)
    inner = InfoNCELoss()
    weighted = MMRLoss(inner, [(1, 1, 2.0), (4, 8, 0.5)], combination="sum")(query, positives)
    parts = weighted.budget_losses
    assert weighted.loss.item() == pytest.approx(2.0 * parts[Budget(1, 1)].item() + 0.5 * parts[Budget(4, 8)].item())
    nommr = MMRLoss(inner, [(4, 8)])(query, positives)
    assert nommr.loss.item() == pytest.approx(inner(query, positives).loss.item(), rel=1e-6)


def test_gradients_flow_to_every_side_and_learnable_temperature():
    query = _unit(3, 4, 5, seed=8).requires_grad_()
    positives = _unit(3, 8, 5, seed=9).requires_grad_()
    negatives = _unit(3, 1, 8, 5, seed=10).requires_grad_()
    inner = InfoNCELoss(temperature=0.05, learnable_temperature=True)
    MMRLoss(inner, [(1, 1), (4, 8)])(query, positives, negatives).loss.backward()
    for tensor in (query, positives, negatives, inner.log_temperature):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    assert inner.temperature.item() == pytest.approx(0.05)
    assert list(InfoNCELoss().parameters()) == []  # fixed τ is not trained


def test_ties_are_not_hits():
    query = torch.ones(2, 1, 2) / math.sqrt(2)
    positives = torch.ones(2, 1, 2) / math.sqrt(2)
    out = InfoNCELoss()(query, positives)
    assert out.budget_accuracies[Budget(1, 1)].item() == 0.0
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_bad_inputs_raise_clear_errors():
    query, positives = _unit(2, 4, 3, seed=11), _unit(2, 8, 3, seed=12)
    with pytest.raises(BudgetError, match="16,64"):
        MMRLoss(InfoNCELoss())(query, positives)
    with pytest.raises(BudgetError, match="nested"):
        parse_groups([(4, 8), (2, 16)])
    with pytest.raises(InputError, match="temperature"):
        InfoNCELoss(temperature=0.0)
    with pytest.raises(InputError, match="combination"):
        MMRLoss(InfoNCELoss(), combination="max")
    with pytest.raises(InputError, match="negatives"):
        InfoNCELoss()(query, positives, _unit(2, 1, 3, 3, seed=13))
    with pytest.raises(InputError, match="target_offset"):
        InfoNCELoss()(query, positives, target_offset=1)


def test_normalized_scores_divide_each_budget_by_its_r_q():
    query, positives = _unit(3, 4, 8, seed=21), _unit(3, 6, 8, seed=22)
    for r_q, r_c in [(1, 1), (2, 4), (4, 6)]:
        q, p = query[:, :r_q], positives[:, :r_c]
        plain = InfoNCELoss(temperature=0.05)(q, p)
        normalized = InfoNCELoss(temperature=0.05, normalize_scores=True)(q, p)
        # dividing by r_q is a temperature of tau * r_q on the plain scores; accuracy is unchanged
        expected, _ = _naive_infonce(query, positives, None, r_q, r_c, 0.05 * r_q)
        assert normalized.loss.item() == pytest.approx(expected, rel=1e-5)
        budget = Budget(r_q, r_c)
        assert normalized.budget_accuracies[budget] == plain.budget_accuracies[budget]
