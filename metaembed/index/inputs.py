"""Validation of what callers hand to an index: ids, payloads, metadata, vectors.

Everything is checked at the public boundary, before anything is written, and
fails with an error from :mod:`metaembed.errors` that names the offending value.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import torch

from metaembed.errors import IndexStateError, InputError


def id_list(ids: Sequence[str]) -> list[str]:
    """``ids`` as a list of non-empty strings (a single string is refused: it is a sequence of characters)."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise InputError(f"ids must be a sequence of strings, got {type(ids).__name__}")
    ids = list(ids)
    for item_id in ids:
        if not isinstance(item_id, str) or not item_id:
            raise InputError(f"ids must be non-empty strings, got {item_id!r}")
    return ids


def unique_ids(ids: Sequence[str]) -> list[str]:
    """:func:`id_list`, and :class:`IndexStateError` naming any id given twice."""
    ids = id_list(ids)
    seen: set[str] = set()
    repeated = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if repeated:
        raise IndexStateError(f"duplicate ids in one batch: {repeated[:5]}")
    return ids


def json_dict(value: Any, what: str) -> str | None:
    """``value`` (a dict or ``None``) as JSON text; :class:`InputError` if it is neither or not JSON-able."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a dict or None, got {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InputError(f"{what} is not JSON-serialisable: {error}") from None


def json_payloads(payloads: Sequence[dict | None] | None, count: int) -> list[str | None]:
    """One JSON text (or ``None``) per item; checks there are exactly ``count`` payloads."""
    if payloads is None:
        return [None] * count
    if isinstance(payloads, (str, bytes, dict)) or len(payloads) != count:
        raise InputError(f"payloads must be a sequence of {count} dicts (or None), one per id")
    return [json_dict(payload, f"payload {position}") for position, payload in enumerate(payloads)]


def check_finite(block: torch.Tensor, start: int) -> None:
    """:class:`InputError` naming the first item of ``block`` (``(n, R, D)``, items ``start..``) with NaN/inf."""
    bad = ~torch.isfinite(block).flatten(1).all(dim=1)
    if bad.any():
        first = int(torch.nonzero(bad)[0]) + start
        raise InputError(f"embeddings contain NaN or inf (first at item {first})")


def positive_int(value: Any, name: str) -> int:
    """``value`` if it is a positive ``int`` (not a bool); :class:`InputError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


__all__ = ["id_list", "unique_ids", "json_dict", "json_payloads", "check_finite", "positive_int"]
