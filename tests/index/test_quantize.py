"""Storage precisions: int8 keeps a scale per group of 64 values and rounds within half a step."""

from __future__ import annotations

import torch

from metaembed.index.quantize import decode, encode, storage_format
from metaembed.scoring import INT8_GROUP, int8_groups

from .conftest import unit_vectors


def test_int8_rounds_each_group_to_within_half_of_its_own_step() -> None:
    vectors = unit_vectors(0, 5, 3, 256)
    vectors[..., :INT8_GROUP] *= 40.0  # one loud group: a scale per vector would flatten the others
    fmt = storage_format("int8")
    codes, scales = encode(vectors, fmt)
    assert codes.shape == (5, 3, 256) and scales.shape == (5, 3, int8_groups(256)) == (5, 3, 4)
    grouped = vectors.unflatten(-1, (4, INT8_GROUP))
    step = grouped.abs().amax(dim=-1) / 127
    error = (decode(codes, scales, fmt) - vectors).abs().unflatten(-1, (4, INT8_GROUP)).amax(dim=-1)
    assert torch.all(error <= step / 2 + 1e-7)
    # The quiet groups keep their precision: far finer than the loud group's step would allow.
    assert torch.all(error[..., 1:] < (step[..., :1] / 2) / 10)


def test_int8_zero_groups_and_dimensions_without_groups() -> None:
    fmt = storage_format("int8")
    vectors = torch.zeros(2, 128)
    vectors[0, 70] = 0.5  # the first group of row 0 and all of row 1 are zero: scale 0, codes 0, no NaN
    codes, scales = encode(vectors, fmt)
    torch.testing.assert_close(decode(codes, scales, fmt), vectors, atol=0.5 / 254, rtol=0)
    assert scales[0, 0] == 0 and not torch.isnan(decode(codes, scales, fmt)).any()
    odd = unit_vectors(1, 4, 96)  # 64 does not divide 96: one scale per vector
    codes, scales = encode(odd, fmt)
    assert scales.shape == (4, 1)
    assert (decode(codes, scales, fmt) - odd).abs().max() <= odd.abs().max() / 254 + 1e-7
