"""Budgeted MaxSim, its CPU kernel, and the FLOP accounting of the paper's efficiency table.

MaxSim (late interaction) scores a query of ``r_q`` vectors against a candidate of
``r_c`` vectors as ``sum_i max_j <q_i, c_j>``. MetaEmbed's Matryoshka training
makes every *prefix* useful, so a budget ``(r_q, r_c)`` simply keeps the first
``r_q`` query vectors and the first ``r_c`` candidate vectors.

The kernel is written for a CPU where fp32 GEMM is fast and fp16/bf16 GEMM is a
very slow fallback (docs/results/lab-notes.md has the measurements):

* Candidates are visited **position by position**: for a chunk of candidates and
  each position ``j < r_c`` one fp32 GEMM ``(chunk, D) @ (D, Q*r_q)`` is computed
  and folded into a running maximum. The full ``(Q, C, r_q, r_c)`` similarity
  tensor that peers materialise is never built; the working set stays in cache.
* All queries of a batch are one ``(Q*r_q, D)`` matrix, so the GEMM is wide
  enough to run near peak and every candidate byte is read once per batch.
* Compact storage (fp16, bf16, int8 codes with an fp32 scale per group of
  consecutive values; the storage codecs of :mod:`metaembed.index.codecs` make
  them) is upcast to fp32 one ``(chunk, D)`` block at a time; arithmetic is
  always fp32, so fp16 storage loses nothing beyond its own rounding.
* Where the compiled kernel of :mod:`metaembed.native` is built (x86-64 with
  AVX2 + FMA + F16C; AVX-512 used where present, and AMX tiles for float16 /
  bfloat16 / int8 storage at fp32 accuracy), each chunk is scored by it instead:
  the same position-major walk, but the max over positions and the sum over
  query vectors are fused into the register tiles of the product, so nothing
  is re-packed or written back per position (faster than the BLAS path at the
  ladder's budgets; see benchmarks/results/). The BLAS path below remains for every other CPU
  and layout, and ``METAEMBED_NATIVE=0`` selects it.
* Chunks are spread over dedicated worker threads (:mod:`metaembed.workers`),
  one per torch intra-op thread, each running torch single-threaded: no
  OpenMP barrier per op, so the kernel stays fast on a loaded machine.

A position-major layout ``(R_c, C, D)`` (what :mod:`metaembed.index` stores)
makes every position block contiguous and a prefix ``r_c`` touches only the
first ``r_c`` slabs; a candidate-major ``(C, R_c, D)`` tensor is scored through
a strided view without a copy.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch

from metaembed.budget import Budget, BudgetLike
from metaembed import native
from metaembed.errors import InputError
from metaembed.workers import pool_size, run_parallel

ArrayLike = Union[torch.Tensor, np.ndarray]

#: dtypes a caller may hand to :func:`maxsim`; anything else is refused.
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# Scratch memory per worker and chunk: two (chunk, Q*r_q) fp32 buffers plus one
# (chunk, D) upcast buffer stay under 16 MiB: large enough that each GEMM call
# amortises its overhead, small enough to stay in the last-level cache.
_SCRATCH_BYTES = 16 << 20
_MAX_CHUNK = 4096
_MIN_CHUNK = 256  # fewer, larger ops for small candidate sets: per-op overhead is ~10 us
# fp32 bytes one task of a decoded source (CandidateSource.decode) holds at once: a few chunks stay in L2/L3.
_DECODE_BYTES = 4 << 20
# Query rows (Q*r_q) scored per pass; more queries are split into groups so the
# scratch buffers stay bounded whatever the batch size.
_MAX_QUERY_ROWS = 1024


def as_tensor(values: ArrayLike, name: str, keep_device: bool = False) -> torch.Tensor:
    """Return ``values`` as a torch tensor without copying when possible.

    Accepts torch tensors and numpy arrays of a floating dtype; float64 is
    accepted and computed in fp32. Raises :class:`InputError` otherwise. The
    result is on the CPU unless ``keep_device`` is set.
    """
    if isinstance(values, np.ndarray):
        if values.dtype.kind != "f":
            raise InputError(f"{name} must hold floating-point values, got numpy dtype {values.dtype}")
        with warnings.catch_warnings():
            # Read-only arrays (memmaps) are only read here; torch warns that it cannot enforce that.
            warnings.simplefilter("ignore", UserWarning)
            values = torch.from_numpy(values)
    elif not isinstance(values, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(values).__name__}")
    if values.dtype not in _FLOAT_DTYPES:
        raise InputError(f"{name} must be float32, float16 or bfloat16, got {values.dtype}")
    if values.device.type != "cpu" and not keep_device:
        values = values.cpu()
    return values


def _check_3d(values: torch.Tensor, name: str, shape_doc: str) -> None:
    if values.ndim != 3:
        raise InputError(f"{name} must have shape {shape_doc}, got shape {tuple(values.shape)}")
    if values.shape[1] == 0 or values.shape[2] == 0:
        raise InputError(f"{name} has an empty axis: shape {tuple(values.shape)}")


def resolve_budget(budget: BudgetLike | None, max_r_q: int, max_r_c: int, where: str) -> Budget:
    """Read ``budget`` (``None`` = everything available) and check it fits ``max_r_q`` / ``max_r_c``."""
    if budget is None:
        return Budget(max_r_q, max_r_c)
    return Budget.parse(budget).check_within(max_r_q, max_r_c, where)


def query_matrix(queries: torch.Tensor, r_q: int) -> torch.Tensor:
    """The first ``r_q`` vectors of every query as one contiguous fp32 ``(Q*r_q, D)`` matrix."""
    return queries[:, :r_q].to(torch.float32).reshape(-1, queries.shape[-1]).contiguous()


def chunk_size(dim: int, query_rows: int) -> int:
    """Candidates per chunk so the fp32 scratch buffers fit :data:`_SCRATCH_BYTES`."""
    per_candidate = 4 * (2 * query_rows + dim)
    return int(max(_MIN_CHUNK, min(_MAX_CHUNK, _SCRATCH_BYTES // per_candidate)))


@dataclass(frozen=True)
class CandidateSource:
    """One run of candidates for :func:`score_sources`, given position by position.

    Attributes:
        positions: ``r_c`` tensors ``(N, D)``; ``positions[j][c]`` is the ``j``-th vector of
            candidate ``c`` (any float dtype or int8, any row stride). With ``decode``, the
            stored codes ``(N, W)`` instead (only their number of rows is read).
        scales: for int8 ``positions``, ``r_c`` fp32 tensors ``(N, G)`` (see
            :func:`score_positions`); ``None`` otherwise.
        column: the column of the output where this source's first candidate goes.
        rows: ``None`` (the run is all ``N`` rows), or int64 ``(n,)`` row numbers in ``[0, N)``:
            the run is those rows, in that order, read in place (a shortlist scored
            without gathering a copy of its vectors first).
        decode: for codes the kernel cannot read (product quantisation): ``decode(start, stop)``
            returns the ``r_c`` fp32 ``(stop - start, D)`` positions of candidates ``[start, stop)``.
            Each scoring task decodes only its own chunk, at most :data:`_DECODE_BYTES` of fp32,
            so a search's memory does not grow with the index (and decoding runs on every worker).
            Only with ``rows=None``.
    """

    positions: Sequence[torch.Tensor]
    scales: Sequence[torch.Tensor] | None = None
    column: int = 0
    rows: torch.Tensor | None = None
    decode: Callable[[int, int], Sequence[torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.decode is not None and self.rows is not None:
            raise ValueError("a decoded source scores its rows in order: rows must be None")

    @property
    def size(self) -> int:
        return int(self.positions[0].shape[0] if self.rows is None else self.rows.shape[0])


def score_positions(
    query_rows: torch.Tensor,
    r_q: int,
    positions: Sequence[torch.Tensor],
    scales: Sequence[torch.Tensor] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """MaxSim of a query batch against candidates given position by position.

    Args:
        query_rows: fp32 ``(Q*r_q, D)``, the prefix ``r_q`` of each query stacked
            (see :func:`query_matrix`).
        r_q: query vectors per query in ``query_rows``.
        positions: ``r_c`` tensors of shape ``(C, D)``; ``positions[j][c]`` is the
            ``j``-th vector of candidate ``c``. Any float dtype or int8, any row
            stride (a view into a ``(C, R_c, D)`` or ``(R_c, C, D)`` tensor works).
        scales: for int8 ``positions``, ``r_c`` fp32 tensors of shape ``(C, G)``
            with one scale per group of ``D / G`` consecutive values
            (value = code * scale; ``G = 1`` is a scale per vector); ``None`` otherwise.
        out: optional fp32 ``(Q, C)`` tensor to write into.

    Returns:
        fp32 ``(Q, C)`` scores ``sum_i max_j <q_i, c_j>``.
    """
    return score_sources(query_rows, r_q, [CandidateSource(positions, scales)], out)


def score_sources(
    query_rows: torch.Tensor, r_q: int, sources: Sequence[CandidateSource], out: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`score_positions` over several candidate runs (e.g. index segments) in one parallel pass.

    The chunks of every source go to the worker threads together, so many small
    sources cost no more than one large one. ``out`` (fp32 ``(Q, C)``, made if
    ``None``) receives each source's scores from its ``column`` on; columns that
    no source covers are left as they were.
    """
    total_rows = query_rows.shape[0]
    num_queries = total_rows // r_q
    width = max((source.column + source.size for source in sources), default=0)
    if out is None:
        out = torch.empty(num_queries, width, dtype=torch.float32)
    group = max(1, _MAX_QUERY_ROWS // r_q)
    for q_start in range(0, num_queries, group):
        q_stop = min(num_queries, q_start + group)
        _score_query_group(query_rows[q_start * r_q : q_stop * r_q], r_q, sources, out[q_start:q_stop])
    return out


def score_many(jobs: Sequence[tuple[torch.Tensor, int, Sequence[CandidateSource]]]) -> list[torch.Tensor]:
    """:func:`score_sources` for several independent ``(query_rows, r_q, sources)`` jobs in one
    parallel pass: the chunks of every job go to the worker threads together, so many small jobs
    (one query's shortlist each, in coarse-to-fine re-ranking) share one dispatch instead of
    paying one each. Returns each job's fp32 ``(Q_i, C_i)`` scores; every job's query rows must
    fit one query group (at most 1,024 rows)."""
    outs, tasks = [], []
    for query_rows, r_q, sources in jobs:
        if query_rows.shape[0] > _MAX_QUERY_ROWS:
            raise ValueError(f"score_many takes at most {_MAX_QUERY_ROWS} query rows a job")
        width = max((source.column + source.size for source in sources), default=0)
        outs.append(torch.empty(query_rows.shape[0] // r_q, width, dtype=torch.float32))
        tasks += _chunk_tasks(query_rows, r_q, sources, outs[-1])
    _run(tasks)
    return outs


def _run(tasks: list[Callable[[], None]]) -> None:
    if len(tasks) > 1 and pool_size() > 1:
        run_parallel(lambda task: task(), tasks, pool_size())
    else:
        for task in tasks:
            task()


def _score_query_group(
    query_rows: torch.Tensor, r_q: int, sources: Sequence[CandidateSource], out: torch.Tensor
) -> None:
    _run(_chunk_tasks(query_rows, r_q, sources, out))


def _chunk_tasks(
    query_rows: torch.Tensor, r_q: int, sources: Sequence[CandidateSource], out: torch.Tensor
) -> list[Callable[[], None]]:
    """The scoring of ``sources`` against one query group, as independent chunks for the workers."""
    rows, dim = query_rows.shape
    num_queries = rows // r_q
    num_candidates = sum(source.size for source in sources)
    query_t = query_rows.t()  # (D, Q*r_q): a transposed view; BLAS reads it as transB
    workers = pool_size()
    use_native = native.available()
    # Several chunks per worker so a worker slowed by other load gets fewer of them. The BLAS
    # path's scratch grows with its block, so it walks a chunk in blocks of at most chunk_size.
    blas_block = chunk_size(dim, rows)
    chunk = max(_MIN_CHUNK, -(-num_candidates // (4 * workers)))
    if not use_native:
        chunk = min(blas_block, chunk)

    def step(source: CandidateSource) -> int:
        if source.decode is None:
            return chunk
        return max(1, min(chunk, _DECODE_BYTES // (4 * dim * len(source.positions))))

    tasks = [(source, start, min(source.size, start + size))
             for source in sources for size in (step(source),) for start in range(0, source.size, size)]

    def score_blas(source: CandidateSource, start: int, stop: int) -> None:
        n = stop - start
        best = torch.empty(n, rows, dtype=torch.float32)
        similarity = torch.empty(n, rows, dtype=torch.float32)
        upcast = torch.empty(n, dim, dtype=torch.float32)
        picked = None if source.rows is None else source.rows[start:stop]
        for j, block in enumerate(source.positions):
            block = block[start:stop] if picked is None else block.index_select(0, picked)
            if block.dtype != torch.float32:
                upcast.copy_(block)  # upcast one (chunk, D) block; fp32 arithmetic from compact storage
                if source.scales is not None:
                    group_scales = source.scales[j]
                    group_scales = group_scales[start:stop] if picked is None else group_scales.index_select(0, picked)
                    upcast.view(n, group_scales.shape[1], -1).mul_(group_scales[:, :, None])
                block = upcast
            if j == 0:
                torch.mm(block, query_t, out=best)
            else:
                torch.mm(block, query_t, out=similarity)
                torch.maximum(best, similarity, out=best)
        # (n, Q*r_q) -> (n, Q): the sum over the r_q query vectors of each query.
        column = source.column + start
        out[:, column : column + n].copy_(best.view(n, num_queries, r_q).sum(dim=2).t())

    def score_chunk(task: tuple[CandidateSource, int, int]) -> None:
        source, start, stop = task
        if source.decode is not None:  # this chunk's fp32 vectors, made here and dropped after
            source = CandidateSource(list(source.decode(start, stop)), None, source.column + start)
            start, stop = 0, stop - start
        if use_native:
            column = source.column + start
            try:
                if source.rows is None:
                    native.score_run(
                        query_rows,
                        r_q,
                        [block[start:stop] for block in source.positions],
                        None if source.scales is None else [scales[start:stop] for scales in source.scales],
                        out[:, column : column + stop - start],
                    )
                else:
                    native.score_run(query_rows, r_q, source.positions, source.scales,
                                     out[:, column : column + stop - start], source.rows[start:stop])
                return
            except native.NativeUnsupported:
                pass  # a layout the fused kernel does not take: the BLAS path handles every layout
        for block_start in range(start, stop, blas_block):
            score_blas(source, block_start, min(stop, block_start + blas_block))

    return [functools.partial(score_chunk, task) for task in tasks]


def score_dense(query_rows: torch.Tensor, r_q: int, candidates: torch.Tensor) -> torch.Tensor:
    """MaxSim of a query batch against a small fp32 candidate block in one GEMM.

    ``query_rows`` is fp32 ``(Q*r_q, D)``; ``candidates`` fp32 position-major
    ``(r_c, P, D)``, contiguous. Materialises the ``(r_c*P, Q*r_q)``
    similarities, so keep ``P`` small (re-ranking a shortlist);
    :func:`score_positions` is the kernel for large candidate sets. Returns fp32 ``(Q, P)``.
    """
    r_c, count, dim = candidates.shape
    similarity = candidates.reshape(r_c * count, dim) @ query_rows.t()
    return similarity.view(r_c, count, -1, r_q).amax(dim=0).sum(dim=2).t()


def maxsim(queries: ArrayLike, candidates: ArrayLike, budget: BudgetLike | None = None) -> torch.Tensor:
    """Budgeted MaxSim scores of every query against every candidate.

    Args:
        queries: ``(Q, R_q, D)`` torch tensor or numpy array, float32, float16 or
            bfloat16 (float64 is computed in float32).
        candidates: ``(C, R_c, D)``, same dtypes; need not match the queries' dtype.
        budget: ``(r_q, r_c)`` as a :class:`~metaembed.budget.Budget`, ``"4,8"``
            or a pair: score the first ``r_q`` query vectors against the first
            ``r_c`` candidate vectors. ``None`` uses all ``R_q`` and ``R_c``.

    Returns:
        float32 ``(Q, C)`` tensor, ``scores[q, c] = sum_{i<r_q} max_{j<r_c} <queries[q,i], candidates[c,j]>``,
        computed in fp32 whatever the input dtype, on the CPU; inputs on an
        accelerator are scored there by :func:`maxsim_blocked` and the scores
        stay on that device. Inputs are not checked for
        NaN/inf here (that would cost a pass over the data); the index checks on add.

    Raises:
        InputError: wrong type, dtype, number of axes, or differing ``D``.
        BudgetError: a budget larger than ``R_q`` or ``R_c``.

    >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])              # 1 query, 2 vectors
    >>> c = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 2.0], [0.0, 0.0]]])
    >>> maxsim(q, c)                                            # max per query vector, summed
    tensor([[1.5000, 2.0000]])
    >>> maxsim(q, c, budget="1,1")
    tensor([[1., 0.]])
    """
    queries = as_tensor(queries, "queries", keep_device=True)
    candidates = as_tensor(candidates, "candidates", keep_device=True)
    _check_3d(queries, "queries", "(Q, R_q, D)")
    _check_3d(candidates, "candidates", "(C, R_c, D)")
    if queries.shape[2] != candidates.shape[2]:
        raise InputError(
            f"queries have dimension D={queries.shape[2]} but candidates have D={candidates.shape[2]}"
        )
    chosen = resolve_budget(budget, queries.shape[1], candidates.shape[1], "the inputs")
    if queries.shape[0] == 0 or candidates.shape[0] == 0:
        return torch.zeros(queries.shape[0], candidates.shape[0], dtype=torch.float32)
    if queries.device.type != "cpu" or candidates.device.type != "cpu":
        # Accelerator inputs are scored where they live: copying them to the CPU
        # would cost more than the scoring itself.
        device = queries.device if queries.device.type != "cpu" else candidates.device
        return maxsim_blocked(queries.to(device), candidates.to(device), chosen)
    if candidates.dtype == torch.float64:
        candidates = candidates.to(torch.float32)
    rows = query_matrix(queries, chosen.r_q)
    positions = [candidates[:, j] for j in range(chosen.r_c)]  # strided (C, D) views, no copy
    return score_positions(rows, chosen.r_q, positions)


def maxsim_blocked(
    queries: torch.Tensor, candidates: torch.Tensor, budget: Budget, block_bytes: int = 256 << 20
) -> torch.Tensor:
    """Device-agnostic MaxSim for inputs on an accelerator; the result stays on that device.

    ``queries`` ``(Q, R_q, D)`` and ``candidates`` ``(C, R_c, D)`` on one device,
    any float dtype. Candidates are taken in blocks so that one block's
    ``(n * r_c, Q * r_q)`` fp32 similarity matrix stays under ``block_bytes``:
    each block is one GEMM (the shape accelerators run best), then a max over
    the block's ``r_c`` vectors and a sum over the ``r_q`` query vectors.
    Accumulation is fp32 whatever the storage dtype. Returns fp32 ``(Q, C)``.
    """
    num_queries, num_candidates, dim = queries.shape[0], candidates.shape[0], queries.shape[2]
    r_q, r_c = budget.r_q, budget.r_c
    rows = queries[:, :r_q].to(torch.float32).reshape(-1, dim)  # (Q*r_q, D)
    out = torch.empty(num_queries, num_candidates, dtype=torch.float32, device=queries.device)
    block = max(1, block_bytes // (4 * r_c * rows.shape[0]))
    for start in range(0, num_candidates, block):
        chunk = candidates[start : start + block, :r_c].to(torch.float32)  # (n, r_c, D)
        n = chunk.shape[0]
        similarity = chunk.reshape(n * r_c, dim) @ rows.t()  # (n*r_c, Q*r_q)
        best = similarity.view(n, r_c, num_queries, r_q).amax(dim=1)  # (n, Q, r_q)
        out[:, start : start + n] = best.sum(dim=2).t()
    return out


def maxsim_flops(budget: BudgetLike, dim: int, num_candidates: int = 1, num_queries: int = 1) -> int:
    """Multiply-add FLOPs of exact MaxSim: ``2 * r_q * r_c * D`` per (query, candidate) pair.

    The max and sum add ``r_q * r_c`` comparisons per pair, which the paper's
    efficiency table (and this count) leaves out.

    >>> maxsim_flops("16,64", dim=128)
    262144
    """
    b = Budget.parse(budget)
    return 2 * b.r_q * b.r_c * int(dim) * int(num_candidates) * int(num_queries)


__all__ = [
    "maxsim",
    "maxsim_flops",
    "score_positions",
    "score_sources",
    "score_many",
    "CandidateSource",
    "score_dense",
    "query_matrix",
    "resolve_budget",
    "as_tensor",
]
