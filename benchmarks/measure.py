"""Timing helpers of the scoring benchmark: the GEMM roofline, interleaved repetitions, peers fed in blocks."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from metaembed.index import MultiVectorIndex
from metaembed.index.codecs import embedding_bytes

K = 10


def write_results(folder: Path, name: str, report: dict, text: str) -> None:
    """``folder/name.json`` (the report) and ``folder/name.md`` (its ``text``), then print the text."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2))
    (folder / f"{name}.md").write_text(text)
    print(text)


def measure_gemm_peak(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of a square ``n``-cubed ``torch.mm`` on all threads (the roofline the targets use)."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


@dataclass
class Method:
    """One scorer in a budget's comparison: how to run it and what to report beside its latency."""

    name: str
    run: Callable[[], tuple[float, list[list[str]]]]  # returns its own elapsed seconds and top-10 ids
    flops: int
    index_bytes: int
    note: str
    time_cap: float
    num_candidates: int
    reference: list[list[str]]
    times: list[float] = field(default_factory=list)
    top: list[list[str]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # more columns of its row (an engine's build time and bytes on disk)


def round_robin(methods: list[Method], max_reps: int) -> None:
    """Time every method ``max_reps`` times, interleaved, so load from other processes hits all alike.

    Each method first runs once untimed (warm-up) unless that call took over 1 s,
    in which case it counts. A method stops repeating once its timed total would
    pass its ``time_cap``; it always gets at least one timed run.
    """
    for method in methods:
        elapsed, method.top = method.run()
        if elapsed >= 1.0:
            method.times.append(elapsed)
    for _ in range(max_reps):
        for method in methods:
            if len(method.times) >= max_reps:
                continue
            if method.times and sum(method.times) + method.times[-1] > method.time_cap:
                continue
            elapsed, method.top = method.run()
            method.times.append(elapsed)


def overlap(found: list[list[str]], reference: list[list[str]]) -> float:
    """Mean fraction of the reference top-10 present in ``found``'s top-10 (of all of it, when shorter)."""
    return statistics.mean(len(set(f[:K]) & set(r[:K])) / max(1, len(r[:K])) for f, r in zip(found, reference))


class Blocks:
    """fp32 candidate-major blocks ``(n, r_c, D)`` read from the float16 index: what every peer is given.

    Blocks are cached when they fit ``cache_bytes``, else re-read for each call
    (the read is never part of a timing)."""

    def __init__(self, index: MultiVectorIndex, r_c: int, rows: int, cache_bytes: int) -> None:
        self.index, self.r_c, self.rows = index, r_c, rows
        total = embedding_bytes(r_c, index.dim, "float32", len(index))
        self._cached = list(self._read()) if total <= cache_bytes else None

    def _read(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        return self.index.export(r_c=self.r_c, batch=self.rows)

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        return iter(self._cached) if self._cached is not None else self._read()


def blockwise(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], blocks: Blocks, queries: torch.Tensor):
    """A runner scoring ``blocks`` with ``score(queries, block) -> (Q, n)``; times only the scoring and top-k."""

    def run() -> tuple[float, list[list[str]]]:
        elapsed, best_scores, best_ids = 0.0, None, []
        for ids, block in blocks:
            start = time.perf_counter()
            scores = score(queries, block).float()
            top, where = scores.topk(min(K, scores.shape[1]), dim=1)
            if best_scores is not None:
                top = torch.cat([best_scores, top], dim=1)
            elapsed += time.perf_counter() - start
            names = [[ids[i] for i in row] for row in where.tolist()]
            merged = names if best_scores is None else [a + b for a, b in zip(best_ids, names)]
            keep = top.topk(min(K, top.shape[1]), dim=1).indices.tolist()
            best_scores = top.gather(1, torch.tensor(keep))
            best_ids = [[row[i] for i in picks] for row, picks in zip(merged, keep)]
        return elapsed, best_ids

    return run


def einsum_reference(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    return torch.einsum("qid,cjd->qcij", queries, candidates).amax(dim=3).sum(dim=2)


def index_runner(index: MultiVectorIndex, queries: torch.Tensor, **search: object):
    def run() -> tuple[float, list[list[str]]]:
        start = time.perf_counter()
        results = index.search(queries, k=K, **search)
        return time.perf_counter() - start, [[hit.id for hit in row] for row in results]

    return run


