"""Budgets: how many Meta Token vectors a query and a candidate use at search time.

MetaEmbed embeds a query as ``R_q`` vectors (16 in the paper) and a candidate as
``R_c`` vectors (64). Matryoshka Multi-Vector Retrieval trains every *prefix*
of those vectors to be useful on its own, so at search time a budget
``(r_q, r_c)`` keeps the first ``r_q`` query vectors and the first ``r_c``
candidate vectors and scores them with MaxSim. Budgets are written ``"r_q,r_c"``
everywhere (CLI, HTTP, config files).

>>> Budget.parse("4,8")
Budget(r_q=4, r_c=8)
>>> str(Budget(16, 64))
'16,64'
>>> [str(b) for b in DEFAULT_LADDER]
['1,1', '2,4', '4,8', '8,16', '16,64']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from metaembed.errors import BudgetError

# ASCII digits only: ``\d`` would also accept Arabic-Indic or full-width digits ("٤,٨"), which
# nobody means as a budget.
_BUDGET_PATTERN = re.compile(r"^\s*\(?\s*([0-9]+)\s*[,x:\s]\s*([0-9]+)\s*\)?\s*$")


@dataclass(frozen=True, order=True)
class Budget:
    """A retrieval budget: ``r_q`` query vectors and ``r_c`` candidate vectors.

    Both numbers are prefix lengths of the nested Meta Token embeddings and must
    be positive integers.
    """

    r_q: int
    r_c: int

    def __post_init__(self) -> None:
        for name in ("r_q", "r_c"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise BudgetError(f"budget {name} must be an integer, got {value!r}")
            if value < 1:
                raise BudgetError(f"budget {name} must be at least 1, got {value}")

    @classmethod
    def parse(cls, value: "BudgetLike") -> "Budget":
        """Read a budget from ``"4,8"``, ``(4, 8)``, ``[4, 8]`` or a ``Budget``.

        Raises :class:`~metaembed.errors.BudgetError` naming the value when it
        cannot be read.
        """
        if isinstance(value, Budget):
            return value
        if isinstance(value, str):
            match = _BUDGET_PATTERN.match(value)
            if match is None:
                raise BudgetError(
                    f"cannot read budget {value!r}: write it as 'r_q,r_c', for example '4,8'"
                )
            return cls(int(match.group(1)), int(match.group(2)))
        if isinstance(value, dict) and set(value) == {"r_q", "r_c"}:
            return cls(int(value["r_q"]), int(value["r_c"]))
        if isinstance(value, (tuple, list)) and len(value) == 2:
            r_q, r_c = value
            if isinstance(r_q, float) and r_q.is_integer():
                r_q = int(r_q)
            if isinstance(r_c, float) and r_c.is_integer():
                r_c = int(r_c)
            return cls(r_q, r_c)
        raise BudgetError(
            f"cannot read budget {value!r}: expected 'r_q,r_c', a pair of integers or a Budget"
        )

    def check_within(self, max_r_q: int | None, max_r_c: int | None, where: str = "") -> "Budget":
        """Raise :class:`BudgetError` if this budget exceeds what is available.

        ``max_r_q`` / ``max_r_c`` are the numbers of query / candidate vectors
        that exist (``None`` skips that side). ``where`` names the holder
        ("the model", "index 'docs'") in the message.
        """
        place = f" {where}" if where else ""
        if max_r_q is not None and self.r_q > max_r_q:
            raise BudgetError(
                f"budget {self} asks for {self.r_q} query vectors but{place} has only {max_r_q}; "
                f"r_q can be 1..{max_r_q}"
            )
        if max_r_c is not None and self.r_c > max_r_c:
            raise BudgetError(
                f"budget {self} asks for {self.r_c} candidate vectors but{place} has only {max_r_c}; "
                f"r_c can be 1..{max_r_c}"
            )
        return self

    def __str__(self) -> str:
        return f"{self.r_q},{self.r_c}"

    def as_tuple(self) -> tuple[int, int]:
        """The budget as a plain ``(r_q, r_c)`` tuple."""
        return (self.r_q, self.r_c)


BudgetLike = Union[Budget, str, Sequence[int], dict]

#: The paper's ladder of nested budgets, used for MMR training and for sweeps.
DEFAULT_LADDER: tuple[Budget, ...] = (
    Budget(1, 1),
    Budget(2, 4),
    Budget(4, 8),
    Budget(8, 16),
    Budget(16, 64),
)


def parse_ladder(values: str | Iterable[BudgetLike] | None) -> tuple[Budget, ...]:
    """Read a ladder of budgets: ``"1,1 2,4 4,8"``, ``"1,1;2,4"`` or a list.

    ``None`` gives :data:`DEFAULT_LADDER`. The result is sorted and free of
    duplicates.

    >>> [str(b) for b in parse_ladder("4,8 1,1;2,4")]
    ['1,1', '2,4', '4,8']
    """
    if values is None:
        return DEFAULT_LADDER
    if isinstance(values, str):
        parts = [p for p in re.split(r"[;\s]+", values.strip()) if p]
        if not parts:
            raise BudgetError("the budget ladder is empty: give at least one 'r_q,r_c'")
        budgets = [Budget.parse(p) for p in parts]
    else:
        budgets = [Budget.parse(v) for v in values]
        if not budgets:
            raise BudgetError("the budget ladder is empty: give at least one 'r_q,r_c'")
    return tuple(sorted(set(budgets)))


def ladder_within(
    values: str | Iterable[BudgetLike] | None, max_r_q: int | None, max_r_c: int | None, where: str = "the model"
) -> tuple[Budget, ...]:
    """The ladder to use with ``max_r_q`` query and ``max_r_c`` candidate vectors available.

    An explicit ladder is checked: a budget larger than what ``where`` holds raises
    :class:`~metaembed.errors.BudgetError`. ``None`` gives :data:`DEFAULT_LADDER` cut to
    what is available, topped with the full budget ``(max_r_q, max_r_c)``.

    >>> [str(b) for b in ladder_within(None, 4, 8)]
    ['1,1', '2,4', '4,8']
    >>> [str(b) for b in ladder_within(None, 8, 32)]
    ['1,1', '2,4', '4,8', '8,16', '8,32']
    """
    if values is not None:
        budgets = parse_ladder(values)
        for budget in budgets:
            budget.check_within(max_r_q, max_r_c, where)
        return budgets
    fitting = [
        b for b in DEFAULT_LADDER
        if (max_r_q is None or b.r_q <= max_r_q) and (max_r_c is None or b.r_c <= max_r_c)
    ]
    if max_r_q is not None and max_r_c is not None:
        fitting.append(Budget(max_r_q, max_r_c))
    return parse_ladder(fitting)


#: Candidates the first stage of a coarse-to-fine search (``mode`` ``coarse`` / ``ann``) hands to the
#: exact re-rank when the search does not say: the other test-time knob beside the budget.
DEFAULT_SHORTLIST = 1000


__all__ = ["Budget", "BudgetLike", "DEFAULT_LADDER", "DEFAULT_SHORTLIST", "ladder_within", "parse_ladder"]
