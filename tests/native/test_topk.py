"""The compiled top-k (metaembed/native/topk.h) against torch.topk, and select_topk's use of it."""

from __future__ import annotations

import pytest
import torch

from metaembed import native
from metaembed.index.topk import select_topk

needs_kernel = pytest.mark.skipif(not native.available(), reason="the compiled kernels are not built here")


def compiled(scores: torch.Tensor, k: int) -> tuple[bool, torch.Tensor, torch.Tensor]:
    values = torch.empty(scores.shape[0], k)
    columns = torch.empty(scores.shape[0], k, dtype=torch.long)
    return native.topk_rows(scores, k, values, columns), values, columns


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 7), (5, 100, 10), (16, 20003, 10), (2, 5000, 128), (4, 9, 3)], ids=str)
def test_matches_torch_topk(shape) -> None:
    rows, cols, k = shape
    scores = torch.randn(rows, cols, generator=torch.Generator().manual_seed(cols))
    scores[:, ::5] = -torch.inf  # deleted rows score -inf and may still fill a short list
    done, values, columns = compiled(scores, k)
    expected = scores.topk(k, dim=1)
    assert done
    assert torch.equal(values, expected.values)
    assert torch.equal(scores.gather(1, columns), values)  # each column holds its value
    finite = torch.isfinite(values)
    assert torch.equal(columns[finite], expected.indices[finite])


@needs_kernel
def test_equal_scores_keep_the_lower_column_first() -> None:
    scores = torch.tensor([[0.5, 1.0, 0.5, 1.0, 0.2, 0.5, 1.0, 0.5, 0.5, 1.0, 0.1]])
    done, values, columns = compiled(scores, 6)
    assert done
    assert values.tolist() == [[1.0, 1.0, 1.0, 1.0, 0.5, 0.5]]
    assert columns.tolist() == [[1, 3, 6, 9, 0, 2]]


@needs_kernel
def test_nan_ranks_below_every_number() -> None:
    scores = torch.tensor([[float("nan"), 0.3, -2.0, float("nan"), 0.9, 0.1, 0.0, -1.0, 0.4, float("nan")]])
    done, values, columns = compiled(scores, 3)
    assert done and values[0].tolist() == pytest.approx([0.9, 0.4, 0.3]) and columns.tolist() == [[4, 8, 1]]


@needs_kernel
def test_rising_scores_are_handed_back_and_select_topk_still_answers() -> None:
    rising = torch.arange(50000, dtype=torch.float32).repeat(3, 1)
    done, _, _ = compiled(rising, 10)
    assert not done  # every value would be inserted: torch.topk is faster there
    top, where = select_topk(rising, 10)
    assert where.tolist() == [list(range(49999, 49989, -1))] * 3 and torch.equal(top, where.float())


@needs_kernel
def test_layouts_outside_it_raise_unsupported_and_select_topk_falls_back() -> None:
    scores = torch.randn(40, 6).t()  # (6, 40) with strided rows
    with pytest.raises(native.NativeUnsupported):
        compiled(scores, 5)
    with pytest.raises(native.NativeUnsupported):
        compiled(torch.randn(2, 300), native.TOPK_MAX + 1)
    for k in (5, native.TOPK_MAX + 1):
        wide = torch.randn(3, 300)
        assert torch.equal(select_topk(wide, k)[0], wide.topk(k, dim=1).values)
    assert torch.equal(select_topk(scores, 5)[1], scores.topk(5, dim=1).indices)


def test_select_topk_without_the_kernel_is_torch_topk(monkeypatch) -> None:
    monkeypatch.setenv("METAEMBED_NATIVE", "0")
    scores = torch.randn(7, 1000, generator=torch.Generator().manual_seed(3))
    top, where = select_topk(scores, 10)
    expected = scores.topk(10, dim=1)
    assert torch.equal(top, expected.values) and torch.equal(where, expected.indices)
