"""metaembed.scoring.maxsim against a naive float64 reference and against the peers' own scorers.

Every test runs twice: on the fused compiled kernel (metaembed.native, where it is built)
and on the BLAS path that is used where it is not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaembed.budget import DEFAULT_LADDER, Budget
from metaembed.errors import BudgetError, InputError
from metaembed.scoring import (
    CandidateSource,
    score_sources,
    maxsim,
    maxsim_blocked,
    maxsim_flops,
    query_matrix,
    score_dense,
    score_positions,
)


@pytest.fixture(autouse=True, params=["native", "blas"])
def kernel_path(request, monkeypatch) -> str:
    from metaembed import native

    if request.param == "native" and not native.available():
        pytest.skip("the compiled MaxSim kernel is not built on this machine")
    monkeypatch.setenv("METAEMBED_NATIVE", "1" if request.param == "native" else "0")
    return request.param


def naive_maxsim(queries: np.ndarray, candidates: np.ndarray, r_q: int, r_c: int) -> np.ndarray:
    """Pair-by-pair float64 MaxSim: the definition, one (query, candidate) pair at a time."""
    out = np.zeros((queries.shape[0], candidates.shape[0]))
    for qi, query in enumerate(queries.astype(np.float64)):
        for ci, cand in enumerate(candidates.astype(np.float64)):
            similarity = query[:r_q] @ cand[:r_c].T  # (r_q, r_c) dot products of one pair
            out[qi, ci] = similarity.max(axis=1).sum()
    return out


def unit_vectors(generator: torch.Generator, *shape: int) -> torch.Tensor:
    values = torch.randn(*shape, generator=generator)
    return values / values.norm(dim=-1, keepdim=True)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return unit_vectors(generator, 5, 16, 32), unit_vectors(generator, 37, 64, 32)


@pytest.mark.parametrize("budget", DEFAULT_LADDER, ids=str)
def test_matches_naive_reference_at_every_ladder_budget(pair, budget: Budget) -> None:
    queries, candidates = pair
    expected = naive_maxsim(queries.numpy(), candidates.numpy(), budget.r_q, budget.r_c)
    got = maxsim(queries, candidates, budget=budget)
    assert got.dtype == torch.float32 and got.shape == (5, 37)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compact_dtypes_are_scored_in_fp32_without_extra_loss(pair, dtype: torch.dtype) -> None:
    queries, candidates = (t.to(dtype) for t in pair)
    # The reference sees exactly the stored (rounded) values, in float64: any
    # difference beyond fp32 rounding would be loss added by the kernel.
    expected = naive_maxsim(queries.float().numpy(), candidates.float().numpy(), 4, 8)
    got = maxsim(queries, candidates, budget="4,8")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_numpy_inputs_of_every_numpy_float_dtype(pair) -> None:
    queries, candidates = pair
    expected = maxsim(queries, candidates, budget=(2, 4))
    for dtype in (np.float32, np.float16, np.float64):
        q, c = queries.numpy().astype(dtype), candidates.numpy().astype(dtype)
        reference = naive_maxsim(q.astype(np.float64), c.astype(np.float64), 2, 4)
        np.testing.assert_allclose(maxsim(q, c, budget=(2, 4)).numpy(), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maxsim(queries.numpy(), candidates.numpy(), "2,4"), expected, rtol=1e-6)


def test_read_only_memmap_like_arrays_are_accepted(pair) -> None:
    queries, candidates = pair
    frozen = candidates.numpy().copy()
    frozen.flags.writeable = False
    np.testing.assert_allclose(maxsim(queries, frozen), maxsim(queries, candidates), rtol=1e-6)


def test_mixed_query_and_candidate_dtypes(pair) -> None:
    queries, candidates = pair
    got = maxsim(queries.to(torch.bfloat16), candidates.to(torch.float16), budget="8,16")
    expected = naive_maxsim(queries.to(torch.bfloat16).float().numpy(), candidates.half().float().numpy(), 8, 16)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_many_chunks_and_query_groups_give_the_same_scores(monkeypatch) -> None:
    import metaembed.scoring.kernel as scoring

    generator = torch.Generator().manual_seed(1)
    queries, candidates = unit_vectors(generator, 9, 4, 8), unit_vectors(generator, 301, 8, 8)
    expected = naive_maxsim(queries.numpy(), candidates.numpy(), 3, 5)
    # Force tiny chunks and query groups so every boundary (partial last chunk,
    # several query groups) is exercised on a small input.
    monkeypatch.setattr(scoring, "_MAX_CHUNK", 7)
    monkeypatch.setattr(scoring, "_MIN_CHUNK", 7)
    monkeypatch.setattr(scoring, "_MAX_QUERY_ROWS", 6)
    np.testing.assert_allclose(maxsim(queries, candidates, "3,5").numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 4])
def test_int8_positions_with_group_scales(groups: int) -> None:
    generator = torch.Generator().manual_seed(2)
    codes = torch.randint(-127, 128, (6, 11, 16), generator=generator, dtype=torch.int8)  # (R_c, C, D)
    scales = torch.rand(6, 11, groups, generator=generator) / 100  # one scale per 16 / groups values
    queries = unit_vectors(generator, 3, 4, 16)
    values = (codes.float().unflatten(-1, (groups, -1)) * scales[..., None]).flatten(-2)
    expected = naive_maxsim(queries.numpy(), values.transpose(0, 1).numpy(), 4, 6)
    got = score_positions(query_matrix(queries, 4), 4, list(codes), scales=list(scales))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_negative_similarities_are_not_clipped_by_padding() -> None:
    # colpali relies on zero padding, which would turn an all-negative max into 0;
    # our candidates are dense, so the max of negatives must stay negative.
    queries = torch.tensor([[[1.0, 0.0]]])
    candidates = torch.tensor([[[-1.0, 0.0], [-0.5, 0.0]]])
    assert maxsim(queries, candidates).item() == pytest.approx(-0.5)


def test_empty_batches_give_empty_scores(pair) -> None:
    queries, candidates = pair
    assert maxsim(queries[:0], candidates).shape == (0, 37)
    assert maxsim(queries, candidates[:0]).shape == (5, 0)


def test_errors_name_the_offending_value(pair) -> None:
    queries, candidates = pair
    with pytest.raises(InputError, match="D=32 but candidates have D=8"):
        maxsim(queries, candidates[..., :8])
    with pytest.raises(BudgetError, match="only 16"):
        maxsim(queries, candidates, budget=(17, 4))
    with pytest.raises(BudgetError, match="only 64"):
        maxsim(queries, candidates, budget="4,65")
    with pytest.raises(InputError, match=r"\(Q, R_q, D\)"):
        maxsim(queries[0], candidates)
    with pytest.raises(InputError, match="int64"):
        maxsim(queries.long(), candidates)
    with pytest.raises(InputError, match="numpy dtype int32"):
        maxsim(np.zeros((1, 1, 32), dtype=np.int32), candidates)
    with pytest.raises(InputError, match="list"):
        maxsim([[[1.0]]], candidates)


def test_flops_follow_the_paper_accounting() -> None:
    # 2 * r_q * r_c * D per pair: (16, 64) at D=128 is 262,144 FLOPs, x 100k candidates.
    assert maxsim_flops((16, 64), dim=128, num_candidates=100_000) == 26_214_400_000
    assert maxsim_flops("1,1", dim=4, num_candidates=3, num_queries=2) == 48


class TestAgainstPeers:
    """Our scores equal colpali-engine's and PyLate's own functions on the same fp32 inputs."""

    @pytest.fixture(autouse=True)
    def _peers(self):
        peers = pytest.importorskip("benchmarks.peers")
        found = peers.available()
        if not (found["colpali"] and found["pylate"]):
            pytest.skip("peers not installed: pip install --no-deps -r requirements-peers.txt")
        self.peers = peers

    @pytest.mark.parametrize("budget", DEFAULT_LADDER, ids=str)
    def test_colpali_and_pylate_agree(self, pair, budget: Budget) -> None:
        queries, candidates = pair
        q, c = queries[:, : budget.r_q].contiguous(), candidates[:, : budget.r_c].contiguous()
        ours = maxsim(queries, candidates, budget=budget)
        torch.testing.assert_close(ours, self.peers.colpali_score_multi_vector(q, c), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours, self.peers.pylate_colbert_scores(q, c), rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_compact_dtypes_match_peers_fed_the_same_values_in_fp32(self, pair, dtype: torch.dtype) -> None:
        # Peers compute in the input dtype (fp16 / bf16 max and sum), which loses
        # precision; fed the identical rounded values in fp32 they must agree with us.
        queries, candidates = (t[:, :8].to(dtype) for t in pair)
        ours = maxsim(queries, candidates)
        torch.testing.assert_close(
            ours, self.peers.pylate_colbert_scores(queries.float(), candidates.float()), rtol=1e-5, atol=1e-5
        )
        # And in their own dtype they agree with us to that dtype's precision.
        theirs = self.peers.colpali_score_multi_vector(queries, candidates)
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=5e-2)


def test_score_dense_equals_the_naive_reference() -> None:
    generator = torch.Generator().manual_seed(3)
    queries, candidates = unit_vectors(generator, 3, 5, 8), unit_vectors(generator, 13, 6, 8)
    got = score_dense(query_matrix(queries, 4), 4, candidates[:, :5].transpose(0, 1).contiguous())
    np.testing.assert_allclose(got.numpy(), naive_maxsim(queries.numpy(), candidates.numpy(), 4, 5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("budget", DEFAULT_LADDER, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accelerator_path_matches_the_naive_reference(pair, budget: Budget, dtype: torch.dtype) -> None:
    # The path GPU inputs take is device-agnostic; run it on the CPU with blocks
    # small enough that the candidates span several of them.
    queries, candidates = (values.to(dtype) for values in pair)
    scores = maxsim_blocked(queries, candidates, budget, block_bytes=4 * budget.r_c * 5 * budget.r_q * 7)
    expected = naive_maxsim(queries.float().numpy(), candidates.float().numpy(), budget.r_q, budget.r_c)
    assert scores.dtype == torch.float32
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_several_sources_fill_their_own_columns_in_one_pass() -> None:
    generator = torch.Generator().manual_seed(5)
    queries = unit_vectors(generator, 3, 4, 16)
    parts = [unit_vectors(generator, n, 6, 16) for n in (5, 1, 9)]  # three runs of candidates
    sources = [CandidateSource(list(part.transpose(0, 1)[:5].half()), None, column)
               for part, column in zip(parts, (2, 7, 8))]
    out = torch.full((3, 17), -7.0)
    score_sources(query_matrix(queries, 4), 4, sources, out)
    expected = naive_maxsim(queries.numpy(), torch.cat(parts).half().float().numpy(), 4, 5)
    np.testing.assert_allclose(out[:, 2:17].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.all(out[:, :2] == -7.0)  # columns no source covers are left alone


def test_a_decoded_source_is_decoded_chunk_by_chunk_within_its_bound(monkeypatch) -> None:
    import threading

    import metaembed.scoring.kernel as scoring

    generator = torch.Generator().manual_seed(6)
    queries, candidates = unit_vectors(generator, 4, 3, 16), unit_vectors(generator, 500, 6, 16)
    stored = candidates.transpose(0, 1)[:5].contiguous()  # (r_c, N, D): what a codec's decode returns
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def decode(start: int, stop: int) -> list[torch.Tensor]:
        with lock:
            calls.append((start, stop))
        return list(stored[:, start:stop])

    codes = [torch.zeros(500, 4, dtype=torch.uint8) for _ in range(5)]  # only their row count is read
    monkeypatch.setattr(scoring, "_DECODE_BYTES", 5 * 16 * 4 * 30)  # 30 candidates of fp32 a task
    out = torch.full((4, 503), -7.0)
    score_sources(query_matrix(queries, 3), 3, [CandidateSource(codes, None, 3, decode=decode)], out)
    expected = naive_maxsim(queries.numpy(), candidates.numpy(), 3, 5)
    np.testing.assert_allclose(out[:, 3:].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.all(out[:, :3] == -7.0)
    assert max(stop - start for start, stop in calls) <= 30  # never more than the bound at once
    assert sorted(calls) == [(start, min(500, start + 30)) for start in range(0, 500, 30)]  # every row once
    with pytest.raises(ValueError, match="rows must be None"):
        CandidateSource(codes, None, 0, torch.arange(3), decode=decode)
