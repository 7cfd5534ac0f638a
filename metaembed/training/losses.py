"""Contrastive losses over MaxSim scores: InfoNCE and the Matryoshka (MMR) modifier.

Shapes used throughout:

* ``query``     ``(B, R_q, D)`` — the local queries' Meta Token vectors, L2-normalised.
* ``positives`` ``(C, R_c, D)`` — the positive candidates of the *global* batch (``C = B`` on one
  process, ``B · world_size`` after :func:`metaembed.training.distributed.gather_positives`);
  query ``u`` of this process has its positive at row ``target_offset + u``.
* ``negatives`` ``(B, N, R_c, D)`` — each query's own hard negatives (never shared, never gathered),
  or ``None``.

A budget ``(r_q, r_c)`` keeps the first ``r_q`` query vectors and the first ``r_c`` candidate
vectors; the MaxSim score is ``s(q, c) = Σ_{i≤r_q} max_{j≤r_c} <q_i, c_j>``, with no division by
``r_q`` (the official code's ``normalize_scores: false``).

:class:`InfoNCELoss` is the plain contrastive loss at the full budget. :class:`MMRLoss` is a
*modifier* in the style of sentence-transformers' ``MatryoshkaLoss``: it wraps an
:class:`InfoNCELoss`, computes the token-level similarity tensor ``(B, C, R_q, R_c)`` once and hands
each nested group ``(r_q, r_c, weight)`` a slice of it. This is the paper's Matryoshka Multi-Vector
Retrieval objective; with only the largest group it is the "NoMMR" baseline, and with one vector per
side the single-vector baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaembed.budget import DEFAULT_LADDER, Budget, BudgetLike
from metaembed.errors import BudgetError, InputError

Combination = Literal["mean", "sum"]


@dataclass(frozen=True)
class MMRGroup:
    """One nested group of the MMR objective: the budget ``(r_q, r_c)`` and its loss weight."""

    budget: Budget
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.budget, Budget):
            raise BudgetError(f"an MMR group needs a Budget, got {self.budget!r}")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise BudgetError(f"MMR group {self.budget} has weight {self.weight!r}; expected a finite value >= 0")

    @classmethod
    def parse(cls, value: "MMRGroupLike") -> "MMRGroup":
        """Read a group from ``MMRGroup``, ``(r_q, r_c)``, ``(r_q, r_c, weight)``, ``"4,8"`` or ``Budget``."""
        if isinstance(value, MMRGroup):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return cls(Budget.parse(tuple(value[:2])), float(value[2]))
        return cls(Budget.parse(value))


MMRGroupLike = MMRGroup | BudgetLike | tuple[int, int, float]

#: The paper's five nested groups, weight 1 each: (1,1) (2,4) (4,8) (8,16) (16,64).
DEFAULT_GROUPS: tuple[MMRGroup, ...] = tuple(MMRGroup(budget) for budget in DEFAULT_LADDER)


def parse_groups(values: Iterable[MMRGroupLike] | None) -> tuple[MMRGroup, ...]:
    """Read and check a list of MMR groups (``None`` gives :data:`DEFAULT_GROUPS`).

    Groups must be *nested*: sorted by budget, each ``r_q`` and ``r_c`` at least the previous one's,
    with no duplicate budget. Raises :class:`~metaembed.errors.BudgetError` otherwise.
    """
    if values is None:
        return DEFAULT_GROUPS
    groups = tuple(MMRGroup.parse(v) for v in values)
    if not groups:
        raise BudgetError("the list of MMR groups is empty: give at least one (r_q, r_c, weight)")
    for previous, current in zip(groups, groups[1:]):
        p, c = previous.budget, current.budget
        if c.r_q < p.r_q or c.r_c < p.r_c or c == p:
            raise BudgetError(
                f"MMR groups must be nested and increasing, but {c} follows {p}; "
                "write them smallest first, e.g. [[1,1],[2,4],[4,8]]"
            )
    return groups


@dataclass
class ContrastiveOutput:
    """What a contrastive loss returns.

    ``loss`` is the scalar to back-propagate (float32). ``budget_losses`` and
    ``budget_accuracies`` hold, for every budget that was scored, its (unweighted) cross-entropy
    and its in-batch accuracy: the fraction of local queries whose positive scores strictly above
    every other candidate (in-batch positives of other queries and hard negatives). Both are
    detached scalars meant for logging.
    """

    loss: Tensor
    budget_losses: dict[Budget, Tensor] = field(default_factory=dict)
    budget_accuracies: dict[Budget, Tensor] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat, JSON-friendly metrics: ``{"loss": …, "loss/1,1": …, "accuracy/1,1": …, …}``."""
        out = {"loss": float(self.loss.detach())}
        for budget, value in self.budget_losses.items():
            out[f"loss/{budget}"] = float(value)
        for budget, value in self.budget_accuracies.items():
            out[f"accuracy/{budget}"] = float(value)
        return out


def token_similarities(query: Tensor, candidates: Tensor) -> Tensor:
    """All token-pair dot products: ``(B, R_q, D) × (C, R_c, D) → (B, C, R_q, R_c)``.

    Computed in float32 whatever the input dtype: the loss sums up to ``r_q`` cosines and divides by
    a temperature of 0.03, so bf16 rounding (a grid of 1/128 near 1) would be amplified ~30×.
    Also accepts negatives shaped ``(B, N, R_c, D)``, paired query by query → ``(B, N, R_q, R_c)``.
    """
    query = query.float()
    candidates = candidates.float()
    if candidates.dim() == 4:
        return torch.einsum("bqd,bncd->bnqc", query, candidates)
    return torch.einsum("bqd,kcd->bkqc", query, candidates)


def maxsim_from_similarities(similarities: Tensor, r_q: int, r_c: int) -> Tensor:
    """MaxSim scores at budget ``(r_q, r_c)`` from a token-similarity tensor ``(B, C, R_q, R_c)``.

    Prefix slicing is what makes the budgets nested: every group reads the same tensor.
    Returns ``(B, C)`` float32.
    """
    return similarities[:, :, :r_q, :r_c].amax(dim=3).sum(dim=2)


def _check_embeddings(query: Tensor, positives: Tensor, negatives: Tensor | None, target_offset: int) -> None:
    if query.dim() != 3 or positives.dim() != 3:
        raise InputError(
            f"expected query (B, R_q, D) and positives (C, R_c, D), got shapes {tuple(query.shape)} "
            f"and {tuple(positives.shape)}"
        )
    if query.shape[-1] != positives.shape[-1]:
        raise InputError(f"query dim {query.shape[-1]} differs from candidate dim {positives.shape[-1]}")
    if not 0 <= target_offset or target_offset + query.shape[0] > positives.shape[0]:
        raise InputError(
            f"target_offset {target_offset} with {query.shape[0]} queries points past the "
            f"{positives.shape[0]} positives"
        )
    if negatives is not None:
        expected = (query.shape[0], positives.shape[1], positives.shape[2])
        if negatives.dim() != 4 or (negatives.shape[0], negatives.shape[2], negatives.shape[3]) != expected:
            raise InputError(
                f"expected negatives (B, N, R_c, D) = ({expected[0]}, N, {expected[1]}, {expected[2]}), "
                f"got {tuple(negatives.shape)}"
            )


class InfoNCELoss(nn.Module):
    """InfoNCE over MaxSim scores with in-batch (optionally gathered) positives and hard negatives.

    For local query ``u`` the logits are ``[s(q_u, p_v) for every positive v of the global batch |
    s(q_u, n_{u,k}) for its own hard negatives k] / τ`` and the target is ``target_offset + u``
    (``target_offset = rank · B`` when positives were gathered across processes). The loss is the
    mean cross-entropy over local queries.

    Args:
        temperature: τ, 0.03 in the paper.
        learnable_temperature: learn ``log τ`` as a parameter (initialised at ``temperature``)
            instead of keeping τ fixed.
        normalize_scores: divide each MaxSim score by ``r_q`` before τ (the official code's
            ``normalize_scores``, off there by default), so every budget's logits span the same
            range instead of growing with ``r_q``. Rankings at a budget are unchanged.
    """

    def __init__(
        self, temperature: float = 0.03, learnable_temperature: bool = False, normalize_scores: bool = False
    ) -> None:
        super().__init__()
        self.normalize_scores = bool(normalize_scores)
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise InputError(f"temperature must be a positive number, got {temperature!r}")
        log_temperature = torch.tensor(math.log(temperature), dtype=torch.float32)
        self.learnable_temperature = bool(learnable_temperature)
        if self.learnable_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature, persistent=False)

    @property
    def temperature(self) -> Tensor:
        """τ as a float32 scalar tensor (differentiable when learnable)."""
        return self.log_temperature.exp()

    def from_similarities(
        self,
        positive_similarities: Tensor,
        negative_similarities: Tensor | None,
        budget: Budget,
        target_offset: int = 0,
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy and in-batch accuracy at ``budget`` from precomputed token similarities.

        ``positive_similarities`` is ``(B, C, R_q, R_c)`` (local queries × global positives),
        ``negative_similarities`` ``(B, N, R_q, R_c)`` or ``None``. Returns two float32 scalars:
        the loss (differentiable) and the accuracy (detached).
        """
        scores = maxsim_from_similarities(positive_similarities, budget.r_q, budget.r_c)
        if negative_similarities is not None and negative_similarities.shape[1] > 0:
            negative_scores = maxsim_from_similarities(negative_similarities, budget.r_q, budget.r_c)
            scores = torch.cat([scores, negative_scores], dim=1)
        logits = (scores / budget.r_q if self.normalize_scores else scores) / self.temperature
        targets = torch.arange(scores.shape[0], device=scores.device) + target_offset
        loss = F.cross_entropy(logits, targets)
        with torch.no_grad():
            # Strictly above every other candidate: a tie is not a hit (an untrained model that
            # scores everything equally must not look perfect).
            target_scores = scores.gather(1, targets[:, None])
            others = scores.scatter(1, targets[:, None], float("-inf"))
            accuracy = (target_scores[:, 0] > others.amax(dim=1)).float().mean()
        return loss, accuracy

    def forward(
        self,
        query: Tensor,
        positives: Tensor,
        negatives: Tensor | None = None,
        target_offset: int = 0,
    ) -> ContrastiveOutput:
        """The loss at the full budget ``(R_q, R_c)``; shapes as in the module docstring."""
        _check_embeddings(query, positives, negatives, target_offset)
        budget = Budget(query.shape[1], positives.shape[1])
        negative_sims = None if negatives is None else token_similarities(query, negatives)
        loss, accuracy = self.from_similarities(
            token_similarities(query, positives), negative_sims, budget, target_offset
        )
        return ContrastiveOutput(loss, {budget: loss.detach()}, {budget: accuracy})


class MMRLoss(nn.Module):
    """Matryoshka Multi-Vector Retrieval: a modifier that applies an inner loss to nested budgets.

    The token-similarity tensors (queries × positives, queries × own negatives) are computed once at
    the largest group's budget; each group ``(r_q, r_c, w)`` slices its prefix and calls the inner
    loss. Groups are combined as

    * ``"mean"`` (default, the official code): ``Σ_g w_g · L_g / G``;
    * ``"sum"`` (the paper's equation): ``Σ_g w_g · L_g``.

    The two differ by the constant ``G`` (a rescaled learning rate under SGD, not under Adam,
    whose updates are scale-free up to ``eps``).

    Args:
        loss: the inner :class:`InfoNCELoss` (holds the temperature).
        groups: nested ``(r_q, r_c[, weight])`` groups, smallest first; default the paper's five.
        combination: ``"mean"`` or ``"sum"``.
    """

    def __init__(
        self,
        loss: InfoNCELoss,
        groups: Sequence[MMRGroupLike] | None = None,
        combination: Combination = "mean",
    ) -> None:
        super().__init__()
        if not isinstance(loss, InfoNCELoss):
            raise TypeError(f"MMRLoss wraps an InfoNCELoss, got {type(loss).__name__}")
        if combination not in ("mean", "sum"):
            raise InputError(f"combination must be 'mean' or 'sum', got {combination!r}")
        self.loss = loss
        self.groups = parse_groups(groups)
        self.combination: Combination = combination

    @property
    def largest(self) -> Budget:
        """The largest (last) budget: the size the similarity tensor is computed at."""
        return self.groups[-1].budget

    def forward(
        self,
        query: Tensor,
        positives: Tensor,
        negatives: Tensor | None = None,
        target_offset: int = 0,
    ) -> ContrastiveOutput:
        """Weighted combination of the inner loss over all groups; shapes as in the module docstring.

        Raises :class:`~metaembed.errors.BudgetError` when a group asks for more vectors than the
        embeddings have.
        """
        _check_embeddings(query, positives, negatives, target_offset)
        self.largest.check_within(query.shape[1], positives.shape[1], where="the embeddings given to MMRLoss")
        r_q, r_c = self.largest.as_tuple()
        query = query[:, :r_q]
        positive_sims = token_similarities(query, positives[:, :r_c])
        negative_sims = None if negatives is None else token_similarities(query, negatives[:, :, :r_c])
        total = positive_sims.new_zeros(())
        losses: dict[Budget, Tensor] = {}
        accuracies: dict[Budget, Tensor] = {}
        for group in self.groups:
            loss, accuracy = self.loss.from_similarities(positive_sims, negative_sims, group.budget, target_offset)
            total = total + group.weight * loss
            losses[group.budget] = loss.detach()
            accuracies[group.budget] = accuracy
        if self.combination == "mean":
            total = total / len(self.groups)
        return ContrastiveOutput(total, losses, accuracies)


__all__ = [
    "MMRGroup",
    "MMRGroupLike",
    "DEFAULT_GROUPS",
    "parse_groups",
    "ContrastiveOutput",
    "token_similarities",
    "maxsim_from_similarities",
    "InfoNCELoss",
    "MMRLoss",
]
