"""The budget sweep: encode once at the full budget, re-score at every budget of a ladder.

Queries and candidates are encoded once with all their Meta Token vectors
(``R_q`` / ``R_c``) and cached on disk (:mod:`metaembed.evaluation.cache`). A
budget ``(r_q, r_c)`` keeps the first ``r_q`` / ``r_c`` of them, so every budget
of the ladder is only a call to :func:`metaembed.scoring.maxsim` on cached
tensors. An interrupted run resumes from the cache without re-encoding.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from metaembed.budget import Budget, BudgetLike, ladder_within
from metaembed.errors import InputError
from metaembed.evaluation.kinds import Benchmark, get_kind
from metaembed.evaluation.cache import EmbeddingCache, model_identity
from metaembed.evaluation.metrics import (
    DEFAULT_K_VALUES,
    mean,
    per_query_metrics,
    precision_at_1,
    rows_to_keep,
    run_from_ranked_rows,
)
from metaembed.evaluation.report import RESULTS_JSON, write_report
from metaembed.evaluation.result import SweepResult
from metaembed.evaluation.tasks import CandidateListTask, RetrievalTask, Task
from metaembed.model.items import Item
from metaembed.index.codecs import embedding_bytes
from metaembed.index.topk import blocked_topk
from metaembed.scoring import maxsim, maxsim_flops

logger = logging.getLogger(__name__)


class MultiVectorEncoder(Protocol):
    """What the sweep needs from a model (``metaembed.model.MetaEmbedModel`` is one).

    Both methods return float ``(N, R, D)`` tensors with all vectors when
    ``budget`` is ``None``.
    """

    num_query_tokens: int
    num_candidate_tokens: int

    def encode_queries(self, items: Sequence[Any], *, batch_size: int, budget: Any = None,
                       instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor: ...

    def encode_candidates(self, items: Sequence[Any], *, batch_size: int, budget: Any = None,
                          instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor: ...


#: Query vectors (queries * r_q) scored per MaxSim call over candidate lists: wide
#: enough that the kernel's GEMMs run near peak (one query at a time is far slower; see
#: docs/results/lab-notes.md).
_QUERY_ROWS_PER_BLOCK = 1024


def score_candidate_lists(
    task: CandidateListTask, queries: torch.Tensor, candidates: torch.Tensor, budget: Budget
) -> float:
    """Precision@1 of ``task`` at ``budget`` from its cached embeddings.

    ``queries`` is ``(Q, R_q, D)``, ``candidates`` ``(U, R_c, D)`` over the task's
    distinct candidates. Queries are scored in blocks against the union of
    their lists (MMEB classification: the same classes for every query;
    retrieval: 1,000 of the pool per query), then each query reads its own
    list's scores. A union covering most of the pool scores the pool in place
    instead of copying it.
    """
    lists = task.candidate_lists
    # Identical lists side by side keep each block's union small.
    order = sorted(range(len(lists)), key=lambda row: lists[row])
    block = max(1, _QUERY_ROWS_PER_BLOCK // budget.r_q)
    hits = 0
    for start in range(0, len(order), block):
        rows = order[start : start + block]
        union = sorted({c for row in rows for c in lists[row]})
        if 2 * len(union) > candidates.shape[0]:
            scores, column = maxsim(queries[rows], candidates, budget), None
        else:
            # Slice to r_c before gathering: the copy holds only the vectors scored.
            scores = maxsim(queries[rows], candidates[torch.tensor(union), : budget.r_c], budget)
            column = {c: j for j, c in enumerate(union)}
        for i, row in enumerate(rows):
            listed = torch.tensor(lists[row])
            columns = listed if column is None else torch.tensor([column[c] for c in lists[row]])
            hits += int(precision_at_1(scores[i, columns][None], listed == listed[0]).item())
    return hits / len(lists)


def top_rows(
    queries: torch.Tensor, corpus: torch.Tensor, budget: Budget, keep: int, block_bytes: int = 256 << 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``keep`` best corpus rows by MaxSim at ``budget``: ``(Q, keep)`` scores and row indices.

    The corpus is scored in blocks whose ``(Q, block)`` fp32 score matrix stays
    under ``block_bytes``, merging a running top-``keep``, so a large user
    collection never needs its full ``(Q, N)`` score matrix in memory.
    """
    num_queries, num_rows = queries.shape[0], corpus.shape[0]
    block = max(keep, block_bytes // (4 * max(1, num_queries)))
    blocks = ((maxsim(queries, corpus[start : start + block], budget), start) for start in range(0, num_rows, block))
    return blocked_topk(blocks, num_queries, keep)


def score_retrieval(
    task: RetrievalTask,
    queries: torch.Tensor,
    corpus: torch.Tensor,
    budget: Budget,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    depth: int = 1000,
) -> dict[str, float]:
    """nDCG@k, recall@k and MRR of ``task`` at ``budget``: exhaustive MaxSim over the
    corpus, each query's top ``depth`` documents judged by trec_eval (means over queries)."""
    per_query = score_retrieval_per_query(task, queries, corpus, budget, k_values, depth)
    names = next(iter(per_query.values())).keys()
    return {name: sum(values[name] for values in per_query.values()) / len(per_query) for name in names}


def score_retrieval_per_query(
    task: RetrievalTask,
    queries: torch.Tensor,
    corpus: torch.Tensor,
    budget: Budget,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    depth: int = 1000,
) -> dict[str, dict[str, float]]:
    """As :func:`score_retrieval`, every judged query's metrics: ``{query_id: {metric: value}}``."""
    depth = max(depth, *k_values)
    keep = rows_to_keep(task.doc_ids, depth, task.ignore_identical_ids)
    values, rows = top_rows(queries, corpus, budget, keep)
    run = run_from_ranked_rows(values, rows, task.query_ids, task.doc_ids, depth, task.ignore_identical_ids)
    return per_query_metrics(task.qrels, run, k_values)


def _encode_side(
    encode: Any,
    items: list[Item],
    cache: EmbeddingCache,
    batch_size: int,
    instruction: str | None,
    show_progress: bool | None,
) -> torch.Tensor:
    def run(batch: list[Item]) -> torch.Tensor:
        return encode(batch, batch_size=batch_size, budget=None, instruction=instruction,
                      show_progress=show_progress)

    return cache.get_or_encode(items, run)


def group_averages(kind: str, result: SweepResult) -> dict[str, dict[str, float]]:
    """Plain means of the headline metric over data sets, per budget, for the groups the
    benchmark ``kind`` defines (MMEB: each meta-task present, IND, OOD and Overall; the rest:
    "Average")."""
    metric = result.headline_metric
    groups = get_kind(kind).groups(result)
    return {
        label: {b: mean(result.datasets[n][b][metric] for n in members) for b in result.ladder}
        for label, members in groups.items()
        if members
    }


def _check_ladder(ladder: Sequence[Budget], queries: torch.Tensor, candidates: torch.Tensor, name: str) -> None:
    for budget in ladder:
        budget.check_within(queries.shape[1], candidates.shape[1], f"the embeddings of data set {name!r}")


def run_sweep(
    model: MultiVectorEncoder,
    benchmark: str | Path | Benchmark,
    *,
    out_dir: str | Path | None,
    kind: str | None = None,
    ladder: str | Sequence[BudgetLike] | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    datasets: Sequence[str] | None = None,
    model_name: str | None = None,
    image_root: str | Path | None = None,
    query_instruction: str | None = None,
    candidate_instruction: str | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    shard_size: int = 256,
    cache_dtype: str = "float16",
    show_progress: bool | None = None,
    per_query: bool = False,
) -> SweepResult:
    """Evaluate ``model`` on a local benchmark folder at every budget of ``ladder``.

    Args:
        model: an encoder with ``encode_queries`` / ``encode_candidates``
            returning ``(N, R, D)`` tensors (see :class:`MultiVectorEncoder`).
        benchmark: a folder (MMEB, ViDoRe v1/v2 or BEIR layout; its kind is
            detected unless ``kind`` is given) or an opened :class:`Benchmark`.
        out_dir: where ``results.json``, ``results.md`` and ``results.png`` go
            (``None``: write nothing). ``results.json`` is rewritten after each
            data set, so a long run shows its progress.
        ladder: budgets ``"r_q,r_c"``; each must fit the model's numbers of Meta
            Tokens. Default: the paper's ladder, cut to the budgets the model can
            serve, plus its full budget ``(R_q, R_c)``.
        cache_dir: embedding cache (default ``<out_dir>/cache``); re-running with
            the same model and data reuses every shard already encoded.
        datasets: names of the data sets to run (default: all present).
        model_name: a name for the model in cache keys and reports (default:
            its ``name_or_path`` or class name). Cache keys also hash its config
            and a sample of its weights.
        image_root: MMEB's image folder when it is not under ``benchmark``.
        query_instruction / candidate_instruction: instructions for ViDoRe/BEIR
            items that carry none (MMEB items bring their own).
        k_values: cut-offs for nDCG@k / recall@k.
        shard_size: items per cache shard (the unit of resumption).
        cache_dtype: storage precision of cached embeddings ("float16",
            "bfloat16" or "float32"); scoring is always fp32.
        per_query: also keep every query's metrics of retrieval data sets in
            ``result.per_query`` (for paired comparisons of two models).

    Returns:
        a :class:`SweepResult` (also written to ``out_dir`` when given).
    """
    budgets = _ladder_for(model, ladder)
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if out_dir is None and cache_dir is None:
        raise InputError("give out_dir or cache_dir: the sweep caches embeddings on disk")
    out_path = Path(out_dir) if out_dir is not None else None
    cache_root = Path(cache_dir) if cache_dir is not None else out_path / "cache"  # type: ignore[operator]
    bench = (
        benchmark
        if isinstance(benchmark, Benchmark)
        else Benchmark.open(benchmark, kind, image_root=image_root, image_dir=cache_root / "images")
    )
    names = bench.select(list(datasets) if datasets is not None else None)
    identity = model_identity(model, model_name)
    identity["instructions"] = [query_instruction, candidate_instruction]
    result = SweepResult(
        benchmark=bench.kind,
        model=identity["name"],
        ladder=[str(b) for b in budgets],
        headline_metric=bench.headline_metric,
        paper={model: dict(values) for model, values in get_kind(bench.kind).paper.items()},
        index_dtype=cache_dtype,
    )
    for name in names:
        started = time.perf_counter()
        task = bench.load(name)
        options = {"shard_size": shard_size, "dtype": cache_dtype, "dataset": f"{bench.kind}/{name}"}
        candidate_items = task.candidates if isinstance(task, CandidateListTask) else task.corpus
        query_cache = EmbeddingCache.for_items(cache_root, identity, "queries", task.queries, **options)
        candidate_cache = EmbeddingCache.for_items(cache_root, identity, "candidates", candidate_items, **options)
        queries = _encode_side(model.encode_queries, task.queries, query_cache, batch_size,
                               query_instruction if isinstance(task, RetrievalTask) else None, show_progress)
        candidates = _encode_side(model.encode_candidates, candidate_items, candidate_cache, batch_size,
                                  candidate_instruction if isinstance(task, RetrievalTask) else None,
                                  show_progress)
        if queries.shape[2] != candidates.shape[2]:
            raise InputError(f"data set {name!r}: query dim {queries.shape[2]} != candidate dim {candidates.shape[2]}")
        _check_ladder(budgets, queries, candidates, name)
        per_budget: dict[str, dict[str, float]] = {}
        for budget in budgets:
            if isinstance(task, CandidateListTask):
                per_budget[str(budget)] = {"precision@1": score_candidate_lists(task, queries, candidates, budget)}
            else:
                scored = score_retrieval_per_query(task, queries, candidates, budget, k_values)
                names_ = next(iter(scored.values())).keys()
                per_budget[str(budget)] = {n: sum(v[n] for v in scored.values()) / len(scored) for n in names_}
                if per_query:
                    result.per_query.setdefault(name, {})[str(budget)] = {
                        metric: {qid: values[metric] for qid, values in scored.items()} for metric in names_
                    }
        result.datasets[name] = per_budget
        result.info[name] = _task_info(task, time.perf_counter() - started)
        dim = queries.shape[2]
        result.costs = {
            str(b): {
                "scoring_flops_per_pair": float(maxsim_flops(b, dim)),
                "index_bytes_per_candidate": float(embedding_bytes(b.r_c, dim, cache_dtype)),
            }
            for b in budgets
        }
        result.groups = group_averages(bench.kind, result)
        if out_path is not None:
            result.save(out_path / RESULTS_JSON)
        logger.info("%s: done in %.1fs", name, time.perf_counter() - started)
    if out_path is not None:
        write_report(result, out_path)
    return result


def _ladder_for(model: MultiVectorEncoder, ladder: str | Sequence[BudgetLike] | None) -> tuple[Budget, ...]:
    """The budgets to sweep: ``ladder`` checked against the model's Meta Tokens, or by
    default the paper's ladder cut to what the model has (plus its full budget)."""
    return ladder_within(ladder, getattr(model, "num_query_tokens", None), getattr(model, "num_candidate_tokens", None))


def _task_info(task: Task, seconds: float) -> dict[str, Any]:
    if isinstance(task, CandidateListTask):
        return {
            "meta_task": task.meta_task,
            "split": task.split,
            "num_queries": len(task.queries),
            "num_candidates": len(task.candidates),
            "seconds": round(seconds, 3),
        }
    return {
        "num_queries": len(task.queries),
        "num_candidates": len(task.corpus),
        "num_judged_queries": sum(1 for docs in task.qrels.values() if docs),
        "seconds": round(seconds, 3),
    }


__all__ = [
    "MultiVectorEncoder",
    "SweepResult",
    "run_sweep",
    "score_candidate_lists",
    "score_retrieval",
    "top_rows",
    "group_averages",
]
