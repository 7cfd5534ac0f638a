"""The built-in model's report: paired differences and standard errors by hand."""

from __future__ import annotations

import math

import pytest

from experiments.builtin_report import paired


def test_paired_difference_and_standard_error_by_hand():
    a = {"q1": 1.0, "q2": 0.5, "q3": 0.0, "q4": 1.0}
    b = {"q1": 0.0, "q2": 0.5, "q3": 0.0, "q4": 0.5}
    diffs = [1.0, 0.0, 0.0, 0.5]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    result = paired(a, b)
    assert result["difference"] == pytest.approx(0.375)
    assert result["se"] == pytest.approx(sd / 2)
    assert result["queries"] == 4
    assert paired(a, a) == {"difference": 0.0, "se": 0.0, "queries": 4}
