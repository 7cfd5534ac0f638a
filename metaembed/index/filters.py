"""Payload filters: restrict a search to the candidates whose payload matches, before top-k.

A filter is a mapping from payload field to what the field must hold::

    {"lang": "en"}                          # equality
    {"year": {"in": [2023, 2024]}}          # one of several values
    {"lang": "en", "kind": {"in": ["pdf", "png"]}}   # every condition holds (AND)

Values are JSON scalars: strings, numbers (``1`` and ``1.0`` are equal), booleans and
``null`` (the field is present and null), each compared by JSON type, so ``true`` never
matches ``1`` and ``"1"`` never matches ``1``. Fields are top-level payload keys; a candidate
without the field, or without a payload, never matches.

The filter is evaluated by SQLite over the catalog's JSON payloads (``json_each``), and the
search then sees a snapshot whose non-matching rows are dead, exactly like deleted ones: every
search mode ranks only matching candidates, so ``k`` hits come back whenever ``k`` candidates
match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

import numpy as np
import torch

from metaembed.errors import InputError
from metaembed.index.search import SegmentView

Scalar = Union[str, int, float, bool, None]
#: A filter as users write it: ``{field: value}`` or ``{field: {"in": [values]}}``.
FilterLike = Mapping[str, Any]

_INT64 = (-(2**63), 2**63 - 1)


def _check_scalar(value: Any, field: str) -> Scalar:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InputError(f"filter value for {field!r} is out of the 64-bit integer range: {value}")
        return value
    if isinstance(value, float):
        if not np.isfinite(value):
            raise InputError(f"filter value for {field!r} must be finite, got {value}")
        return value
    raise InputError(
        f"filter value for {field!r} must be a string, number, boolean or null "
        f"(or {{\"in\": [...]}}), got {type(value).__name__}"
    )


@dataclass(frozen=True)
class PayloadFilter:
    """Parsed conditions: for each field, the values it may hold (the field must match one)."""

    conditions: tuple[tuple[str, tuple[Scalar, ...]], ...]

    @classmethod
    def parse(cls, spec: "PayloadFilter | FilterLike") -> "PayloadFilter":
        """Validate ``spec``; :class:`~metaembed.errors.InputError` naming the offending field."""
        if isinstance(spec, PayloadFilter):
            return spec
        if not isinstance(spec, Mapping):
            raise InputError(f"a filter must be a mapping of payload field to value, got {type(spec).__name__}")
        conditions = []
        for field, wanted in spec.items():
            if not isinstance(field, str) or not field:
                raise InputError(f"filter fields must be non-empty strings, got {field!r}")
            if isinstance(wanted, Mapping):
                if set(wanted) != {"in"}:
                    raise InputError(f"filter for {field!r}: the only operator is 'in', got {sorted(map(str, wanted))}")
                values = wanted["in"]
                if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                    raise InputError(f"filter for {field!r}: 'in' takes a list of values, got {type(values).__name__}")
                values = tuple(_check_scalar(v, field) for v in values)
            else:
                values = (_check_scalar(wanted, field),)
            conditions.append((field, values))
        return cls(tuple(conditions))

    def sql(self) -> tuple[str, list[Any]]:
        """A condition over the catalog's ``items.payload`` column and its parameters.

        Each field becomes ``EXISTS (SELECT 1 FROM json_each(payload) WHERE key = ? AND ...)``;
        value lists travel as one JSON parameter, so a long ``in`` list never meets SQLite's
        bound-parameter limit.
        """
        if not self.conditions:
            return "1", []
        clauses, params = [], []
        for field, values in self.conditions:
            # bool before int: True is an int in Python, but a different JSON type
            texts = [v for v in values if isinstance(v, str)]
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            alternatives, field_params = [], [field]
            if texts:
                alternatives.append("(f.type = 'text' AND f.atom IN (SELECT value FROM json_each(?)))")
                field_params.append(json.dumps(texts))
            if numbers:
                alternatives.append("(f.type IN ('integer', 'real') AND f.atom IN (SELECT value FROM json_each(?)))")
                field_params.append(json.dumps(numbers))
            alternatives += [f"f.type = '{name}'" for name, value in (("true", True), ("false", False))
                             if any(v is value for v in values)]
            if any(v is None for v in values):
                alternatives.append("f.type = 'null'")
            if not alternatives:  # an empty 'in' list matches nothing
                return "0", []
            clauses.append(f"EXISTS (SELECT 1 FROM json_each(items.payload) AS f WHERE f.key = ? "
                           f"AND ({' OR '.join(alternatives)}))")
            params += field_params
        return " AND ".join(clauses), params


def restrict(views: tuple[SegmentView, ...], places: Iterable[tuple[str, int]]) -> tuple[SegmentView, ...]:
    """``views`` with only the rows at ``places`` ``(segment name, row)`` still alive (and the dead still dead)."""
    rows_of: dict[str, list[int]] = {}
    for name, row in places:
        rows_of.setdefault(name, []).append(row)
    restricted = []
    for view in views:
        keep = torch.zeros(view.rows, dtype=torch.bool)
        rows = rows_of.get(view.segment.name)
        if rows:
            keep[torch.tensor(rows, dtype=torch.long)] = True
        restricted.append(SegmentView(view.segment, view.ids, view.alive & keep))
    return tuple(restricted)


__all__ = ["PayloadFilter", "FilterLike", "restrict"]
