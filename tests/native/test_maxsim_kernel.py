"""The fused compiled MaxSim kernel against a float64 reference, at the shapes where tiling can go wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaembed import native
from metaembed.scoring import CandidateSource, query_matrix, score_many, score_sources

needs_kernel = pytest.mark.skipif(not native.available(), reason="the compiled MaxSim kernel is not built here")


def has_amx() -> bool:
    return native._maxsim is not None and bool(native._maxsim.has_avx512()) and bool(native._maxsim.has_amx())


@pytest.fixture(autouse=True, params=["avx2", "avx512", "amx"])
def instruction_set(request, monkeypatch) -> str:
    """Every test runs on each instruction set of the kernel that this CPU has (AMX pinned: every job on the tiles)."""
    if request.param == "avx512" and not (native._maxsim is not None and native._maxsim.has_avx512()):
        pytest.skip("this CPU has no AVX-512")
    if request.param == "amx" and not has_amx():
        pytest.skip("this CPU (or its OS) has no AMX tiles")
    monkeypatch.setenv("METAEMBED_NATIVE_ISA", request.param)
    return request.param


def reference(queries: torch.Tensor, stored: torch.Tensor, r_q: int) -> np.ndarray:
    """float64 MaxSim of queries (Q, R_q, D) against position-major candidates (r_c, C, D)."""
    similarity = torch.einsum("qid,jcd->qcij", queries[:, :r_q].double(), stored.double())
    return similarity.amax(dim=3).sum(dim=2).numpy()


def run(queries: torch.Tensor, r_q: int, positions, scales=None, width: int | None = None) -> torch.Tensor:
    count = positions[0].shape[0]
    out = torch.full((queries.shape[0], width or count), -9.0)
    native.score_run(query_matrix(queries, r_q), r_q, positions, scales, out[:, :count])
    return out


# (queries, r_q, candidates, r_c, D): query rows below, at and between the 8/16/32-wide panels;
# candidate counts that leave partial 6- or 8-row tiles and partial blocks; D below 8, not a multiple
# of 8, and above the 256-value K block with a remainder. The last three reach the 8 x 8 transposes that
# sum each query's maxima (r_q = 1 straight into the output, r_q > 1 through its scratch) with query
# and candidate counts that leave partial blocks of 8.
SHAPES = [(1, 1, 1, 1, 3), (3, 5, 7, 3, 13), (2, 4, 50, 8, 128), (5, 3, 97, 5, 200), (16, 16, 49, 64, 64),
          (4, 2, 13, 2, 1030), (2, 12, 6, 4, 520), (3, 8, 61, 2, 300),
          (16, 1, 50, 1, 64), (11, 1, 45, 2, 32), (9, 2, 23, 3, 40)]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_the_reference_for_every_tiling_edge(shape, dtype: torch.dtype) -> None:
    num_queries, r_q, count, r_c, dim = shape
    generator = torch.Generator().manual_seed(sum(shape))
    queries = torch.randn(num_queries, r_q, dim, generator=generator)
    stored = torch.randn(r_c, count, dim, generator=generator).to(dtype)
    got = run(queries, r_q, list(stored))
    np.testing.assert_allclose(got.numpy(), reference(queries, stored.float(), r_q), rtol=1e-4, atol=1e-4 * dim**0.5)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("shape", [(16, 16, 50, 64, 128), (20, 4, 300, 8, 384), (5, 1, 17, 1, 2048), (3, 5, 37, 3, 100)],
                         ids=str)
def test_compact_storage_scores_at_fp32_accuracy(shape, dtype: torch.dtype) -> None:
    # Every path computes in fp32 (AMX: the exact bf16 parts of the stored values times the query's
    # three bf16 parts). Dropping one of those products shows here: 3.5e-6 at the first shape.
    num_queries, r_q, count, r_c, dim = shape
    generator = torch.Generator().manual_seed(dim)
    queries = torch.nn.functional.normalize(torch.randn(num_queries, r_q, dim, generator=generator), dim=-1)
    unit = torch.nn.functional.normalize(torch.randn(r_c, count, dim, generator=generator), dim=-1)
    scales = None
    if dtype == torch.int8:  # as the index stores it: a scale per group of 64 values (one group if D is not a multiple)
        groups = unit.unflatten(-1, (dim // 64 if dim % 64 == 0 else 1, -1))
        scales = groups.abs().amax(-1) / 127
        stored = (groups / scales[..., None]).round().to(torch.int8).flatten(-2)
        values = (stored.float().unflatten(-1, groups.shape[-2:]) * scales[..., None]).flatten(-2)
    else:
        stored = unit.to(dtype)
        values = stored.float()
    got = run(queries, r_q, list(stored), None if scales is None else list(scales))
    assert np.abs(got.numpy() - reference(queries, values, r_q)).max() < 1.5e-6


@needs_kernel
def test_the_automatic_choice_scores_batches_on_either_side_of_the_tile_threshold(monkeypatch, instruction_set: str) -> None:
    if instruction_set != "amx":
        pytest.skip("the automatic choice between AMX and AVX-512 is what this checks")
    monkeypatch.setenv("METAEMBED_NATIVE_ISA", "auto")
    assert native.isa() == "amx"
    generator = torch.Generator().manual_seed(9)
    stored = torch.randn(4, 70, 96, generator=generator).half()
    for num_queries, r_q in [(2, 4), (16, 4), (8, 16)]:  # 8 rows: AVX-512; 64 and 128: the tiles
        queries = torch.randn(num_queries, r_q, 96, generator=generator)
        np.testing.assert_allclose(run(queries, r_q, list(stored)).numpy(), reference(queries, stored.float(), r_q),
                                   rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_int8_codes_are_scaled_per_group(groups: int) -> None:
    generator = torch.Generator().manual_seed(groups)
    codes = torch.randint(-127, 128, (4, 23, 64), generator=generator, dtype=torch.int8)
    scales = torch.rand(4, 23, groups, generator=generator) / 50
    queries = torch.randn(3, 2, 64, generator=generator)
    values = (codes.float().unflatten(-1, (groups, -1)) * scales[..., None]).flatten(-2)
    got = run(queries, 2, list(codes), list(scales))
    np.testing.assert_allclose(got.numpy(), reference(queries, values, 2), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_strided_candidate_major_views_and_output_columns() -> None:
    generator = torch.Generator().manual_seed(7)
    candidates = torch.randn(31, 6, 40, generator=generator).half()  # (C, R_c, D): rows 6*40 apart
    queries = torch.randn(2, 3, 40, generator=generator)
    got = run(queries, 3, [candidates[:, j] for j in range(5)], width=35)
    np.testing.assert_allclose(got[:, :31].numpy(), reference(queries, candidates[:, :5].transpose(0, 1).float(), 3),
                               rtol=1e-5, atol=1e-5)
    assert torch.all(got[:, 31:] == -9.0)  # nothing written past its own columns


@needs_kernel
def test_all_negative_similarities_keep_their_maximum() -> None:
    queries = torch.tensor([[[1.0, 0.0]]])
    stored = torch.tensor([[[-1.0, 0.0]], [[-0.25, 0.0]]])  # (r_c=2, C=1, D=2)
    assert run(queries, 1, list(stored)).item() == pytest.approx(-0.25)


@needs_kernel
def test_layouts_outside_the_kernel_raise_unsupported() -> None:
    queries = query_matrix(torch.randn(1, 1, 8), 1)
    out = torch.empty(1, 4)
    mixed = [torch.randn(4, 8), torch.randn(4, 16)[:, :8]]  # two positions with different row strides
    with pytest.raises(native.NativeUnsupported, match="row stride"):
        native.score_run(queries, 1, mixed, None, out)
    with pytest.raises(native.NativeUnsupported, match="dtype"):
        native.score_run(queries, 1, [torch.randn(4, 8, dtype=torch.float64)], None, out)
    with pytest.raises(native.NativeUnsupported, match="scales"):
        native.score_run(queries, 1, [torch.zeros(4, 8, dtype=torch.int8)], None, out)


@needs_kernel
def test_score_sources_falls_back_to_blas_for_unsupported_layouts() -> None:
    generator = torch.Generator().manual_seed(3)
    queries = torch.randn(2, 2, 8, generator=generator)
    first, second = torch.randn(5, 8, generator=generator), torch.randn(5, 16, generator=generator)[:, :8]
    out = score_sources(query_matrix(queries, 2), 2, [CandidateSource([first, second])])
    np.testing.assert_allclose(out.numpy(), reference(queries, torch.stack([first, second]), 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blas", [False, True], ids=["kernel", "blas"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_a_shortlist_is_scored_in_place_through_its_row_numbers(monkeypatch, dtype: torch.dtype, blas: bool) -> None:
    if blas:
        monkeypatch.setenv("METAEMBED_NATIVE", "0")
    elif not native.available():
        pytest.skip("the compiled MaxSim kernel is not built here")
    generator = torch.Generator().manual_seed(11)
    r_c, stored_rows, dim = 3, 200, 72
    if dtype == torch.int8:
        stored = torch.randint(-127, 128, (r_c, stored_rows, dim), generator=generator, dtype=torch.int8)
        scales = torch.rand(r_c, stored_rows, 3, generator=generator) / 50
        values = (stored.float().unflatten(-1, (3, -1)) * scales[..., None]).flatten(-2)
        scale_list = list(scales)
    else:
        stored = torch.randn(r_c, stored_rows, dim, generator=generator).to(dtype)
        values, scale_list = stored.float(), None
    rows = torch.tensor([199, 3, 3, 0, 57, 120, 121, 8, 64, 150, 42, 77, 5], dtype=torch.int64)  # any order, repeats
    queries = torch.randn(5, 4, dim, generator=generator)
    out = torch.full((5, 20), -9.0)
    score_sources(query_matrix(queries, 4), 4, [CandidateSource(list(stored), scale_list, 6, rows)], out)
    np.testing.assert_allclose(out[:, 6:19].numpy(), reference(queries, values[:, rows], 4), rtol=1e-4, atol=1e-4)
    assert (out[:, :6] == -9.0).all() and (out[:, 19:] == -9.0).all()  # other columns untouched


@pytest.mark.parametrize("blas", [False, True], ids=["kernel", "blas"])
def test_many_small_jobs_in_one_pass_score_as_each_alone(monkeypatch, blas: bool) -> None:
    if blas:
        monkeypatch.setenv("METAEMBED_NATIVE", "0")
    generator = torch.Generator().manual_seed(5)
    stored = torch.randn(4, 300, 40, generator=generator).half()
    jobs = []
    for number in range(6):  # one query a job, each with its own shortlist, as coarse-to-fine re-ranks
        rows = torch.randperm(300, generator=generator)[: 20 + 37 * number].sort().values
        queries = torch.randn(1, 3, 40, generator=generator)
        jobs.append((queries, [CandidateSource(list(stored), None, 0, rows[:10]),
                               CandidateSource(list(stored), None, 10, rows[10:])], rows))
    got = score_many([(query_matrix(q, 3), 3, sources) for q, sources, _ in jobs])
    for (queries, _, rows), scores in zip(jobs, got):
        np.testing.assert_allclose(scores.numpy(), reference(queries, stored.float()[:, rows], 3), rtol=1e-4, atol=1e-4)


def test_switched_off_by_environment(monkeypatch) -> None:
    monkeypatch.setenv("METAEMBED_NATIVE", "0")
    assert not native.available()
    with pytest.raises(native.NativeUnsupported, match="not available"):
        native.score_run(query_matrix(torch.randn(1, 1, 8), 1), 1, [torch.randn(2, 8)], None, torch.empty(1, 2))


def test_a_missing_extension_leaves_scoring_on_the_blas_path(monkeypatch) -> None:
    monkeypatch.setattr(native, "_maxsim", None)  # what an install without a C compiler looks like
    assert not native.available()
    generator = torch.Generator().manual_seed(4)
    queries, stored = torch.randn(2, 3, 16, generator=generator), torch.randn(4, 9, 16, generator=generator)
    out = score_sources(query_matrix(queries, 3), 3, [CandidateSource(list(stored))])
    np.testing.assert_allclose(out.numpy(), reference(queries, stored, 3), rtol=1e-5, atol=1e-5)


def test_the_kernel_is_built_wherever_it_can_run(monkeypatch) -> None:
    # The extension is optional so that installs without a compiler succeed; on a machine that
    # has one and an AVX2 CPU, a missing kernel means a broken build, which must not pass silently.
    import platform
    import shutil
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    if platform.machine() != "x86_64" or not shutil.which("cc") or not all(
        f" {flag}" in flags for flag in ("avx2", "fma", "f16c")
    ):
        pytest.skip("no C compiler or no AVX2/FMA/F16C CPU here: the BLAS path is expected")
    monkeypatch.delenv("METAEMBED_NATIVE", raising=False)
    assert native._maxsim is not None, "metaembed/native/maxsim.c was not compiled by the install"
    assert native.available()


@needs_kernel
def test_the_instruction_set_is_reported_and_can_be_pinned(monkeypatch, instruction_set: str) -> None:
    assert native.isa() == instruction_set
    monkeypatch.setenv("METAEMBED_NATIVE_ISA", "sse")
    with pytest.raises(ValueError, match="METAEMBED_NATIVE_ISA"):
        native.isa()
