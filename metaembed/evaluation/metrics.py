"""Retrieval metrics: Precision@1 over candidate lists, and nDCG / recall / MRR via trec_eval.

Precision@1 is ours (one comparison). nDCG@k, recall@k and MRR come from
``pytrec_eval`` (the trec_eval bindings MTEB and vidore-benchmark use), so our
numbers are comparable with theirs. All values are fractions in ``[0, 1]``.

Ties. An untrained model that scores every candidate alike must not look
perfect, so :func:`precision_at_1` counts a tie between the positive and any
distractor as a miss. trec_eval orders tied documents by document id,
descending (``"d9"`` before ``"d10"`` before ``"d1"``), independently of their
relevance; we keep that convention for nDCG so that numbers match the
reference evaluators.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import pytrec_eval
import torch

from metaembed.errors import InputError

#: The k values reported by default: nDCG@5 is ViDoRe's headline metric.
DEFAULT_K_VALUES: tuple[int, ...] = (1, 5, 10)


def precision_at_1(scores: torch.Tensor, same_as_positive: torch.Tensor | None = None) -> torch.Tensor:
    """Whether each query's positive (column 0) strictly beats every distractor.

    ``scores`` is ``(Q, L)`` float: query ``i``'s scores for its ``L``
    candidates, the positive first. ``same_as_positive`` is an optional ``(L,)``
    or ``(Q, L)`` bool mask of columns that hold the positive itself again (the
    same item listed twice); those are not distractors. Returns ``(Q,)`` bool.
    A tie with a distractor is a miss, so constant scores give 0, not 1.

    >>> precision_at_1(torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.2, 0.3, 0.1]])).tolist()
    [True, False, False]
    """
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise InputError(f"scores must be (queries, candidates) with candidates >= 1, got {tuple(scores.shape)}")
    distractor = torch.ones_like(scores, dtype=torch.bool)
    distractor[:, 0] = False
    if same_as_positive is not None:
        distractor &= ~same_as_positive.to(torch.bool).expand_as(scores)
    masked = scores.masked_fill(~distractor, float("-inf"))
    return scores[:, 0] > masked.max(dim=1).values


def _measure_names(k_values: Sequence[int]) -> tuple[set[str], dict[str, str]]:
    """trec_eval measure specs for ``k_values`` and the mapping to our metric names."""
    ks = ",".join(str(k) for k in k_values)
    specs = {f"ndcg_cut.{ks}", f"recall.{ks}", "recip_rank"}
    names = {"recip_rank": "mrr"}
    for k in k_values:
        names[f"ndcg_cut_{k}"] = f"ndcg@{k}"
        names[f"recall_{k}"] = f"recall@{k}"
    return specs, names


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    k_values: Sequence[int] = DEFAULT_K_VALUES,
) -> dict[str, dict[str, float]]:
    """nDCG@k, recall@k and MRR of every judged query, computed by trec_eval.

    ``qrels[query_id][doc_id]`` is an integer grade (graded gain in nDCG);
    ``run[query_id][doc_id]`` a score (higher is better). Every query with
    judgments gets an entry; one with no entry in ``run`` scores 0 (nothing
    retrieved); queries without judgments are left out (trec_eval's convention).
    Returns ``{query_id: {"ndcg@5": ..., "recall@5": ..., "mrr": ...}}``, what
    paired comparisons of two systems need.
    """
    if not k_values or any(int(k) < 1 for k in k_values):
        raise InputError(f"k values must be positive integers, got {list(k_values)}")
    judged = {qid: {d: int(g) for d, g in docs.items()} for qid, docs in qrels.items() if docs}
    if not judged:
        raise InputError("the qrels judge no query: there is nothing to evaluate")
    specs, names = _measure_names(sorted({int(k) for k in k_values}))
    evaluator = pytrec_eval.RelevanceEvaluator(judged, specs)
    evaluated = evaluator.evaluate({qid: dict(docs) for qid, docs in run.items() if qid in judged})
    # trec_eval silently skips judged queries that the run lacks; they score 0.
    zero = {name: 0.0 for name in names.values()}
    return {
        qid: ({names[m]: v for m, v in evaluated[qid].items()} if qid in evaluated else dict(zero))
        for qid in judged
    }


def retrieval_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    k_values: Sequence[int] = DEFAULT_K_VALUES,
) -> dict[str, float]:
    """Mean nDCG@k, recall@k and MRR over the judged queries (see :func:`per_query_metrics`).

    Returns ``{"ndcg@5": ..., "recall@5": ..., "mrr": ...}``.
    """
    per_query = per_query_metrics(qrels, run, k_values)
    names = next(iter(per_query.values())).keys()
    return {name: sum(values[name] for values in per_query.values()) / len(per_query) for name in names}


def rows_to_keep(doc_ids: Sequence[str], depth: int, ignore_identical_ids: bool = False) -> int:
    """How many top-scored corpus rows hold each query's top ``depth`` distinct documents.

    Rows sharing a document id (ViDoRe v1 lists some pages twice) and a dropped
    identical id can push distinct documents down; this many rows always suffice.
    """
    duplicates = len(doc_ids) - len(set(doc_ids))
    return min(len(doc_ids), depth + duplicates + int(ignore_identical_ids))


def run_from_ranked_rows(
    values: torch.Tensor,
    rows: torch.Tensor,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    depth: int = 1000,
    ignore_identical_ids: bool = False,
) -> dict[str, dict[str, float]]:
    """A trec_eval run from each query's best corpus rows, sorted by descending score.

    ``values`` / ``rows`` are ``(Q, K)``: scores and corpus row indices. A document
    listed on several rows scores its best row (the first met); the reference
    ViDoRe evaluator does the same. With ``ignore_identical_ids`` a document
    whose id equals the query's id is skipped. At most ``depth`` documents are
    kept per query.
    """
    run: dict[str, dict[str, float]] = {}
    for qid, row_values, row_indices in zip(query_ids, values.tolist(), rows.tolist()):
        docs: dict[str, float] = {}
        for value, row in zip(row_values, row_indices):
            doc_id = doc_ids[row]
            if doc_id in docs or (ignore_identical_ids and doc_id == qid):
                continue
            docs[doc_id] = value
            if len(docs) == depth:
                break
        run[qid] = docs
    return run


def build_run(
    scores: torch.Tensor,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    depth: int = 1000,
    ignore_identical_ids: bool = False,
) -> dict[str, dict[str, float]]:
    """Turn a ``(Q, N)`` score matrix over corpus rows into a run of each query's top
    ``depth`` documents (see :func:`run_from_ranked_rows` for duplicates and identical ids).
    """
    if scores.shape != (len(query_ids), len(doc_ids)):
        raise InputError(
            f"scores have shape {tuple(scores.shape)} but there are {len(query_ids)} queries "
            f"and {len(doc_ids)} documents"
        )
    keep = rows_to_keep(doc_ids, depth, ignore_identical_ids)
    values, rows = scores.float().topk(keep, dim=1)
    return run_from_ranked_rows(values, rows, query_ids, doc_ids, depth, ignore_identical_ids)


def mean(values: Iterable[float]) -> float:
    """The plain mean of ``values`` (the benchmarks average data sets unweighted)."""
    values = list(values)
    if not values:
        raise InputError("cannot average an empty list of scores")
    return sum(values) / len(values)


__all__ = [
    "DEFAULT_K_VALUES",
    "precision_at_1",
    "per_query_metrics",
    "retrieval_metrics",
    "rows_to_keep",
    "run_from_ranked_rows",
    "build_run",
    "mean",
]
