"""Evaluation as the paper reports it: MMEB and ViDoRe per budget, tables and plots.

Benchmark kinds read local copies of the published files (:mod:`~metaembed.evaluation.kinds.mmeb`,
:mod:`~metaembed.evaluation.kinds.vidore`, :mod:`~metaembed.evaluation.kinds.beir` for your
own collection), each a registered :class:`~metaembed.evaluation.kinds.BenchmarkKind`;
:func:`run_sweep` encodes each data set once, caches the
embeddings and scores every budget of a ladder; :func:`write_report` writes the
JSON, Markdown table and PNG plot.

Typical use::

    from metaembed.evaluation import run_sweep
    result = run_sweep(model, "data/MMEB-eval", out_dir="runs/mmeb", ladder="1,1 4,8 16,64")
    print(result.groups["Overall"])
"""

from metaembed.evaluation.kinds import BENCHMARK_KINDS, Benchmark, BenchmarkKind, detect_kind
from metaembed.evaluation.cache import EmbeddingCache, model_identity
from metaembed.evaluation.metrics import build_run, precision_at_1, retrieval_metrics
from metaembed.evaluation.report import markdown_table, plot, write_report
from metaembed.evaluation.result import SweepResult
from metaembed.evaluation.sweep import MultiVectorEncoder, run_sweep
from metaembed.evaluation.tasks import CandidateListTask, RetrievalTask

__all__ = [
    "BENCHMARK_KINDS",
    "Benchmark",
    "BenchmarkKind",
    "detect_kind",
    "CandidateListTask",
    "RetrievalTask",
    "EmbeddingCache",
    "model_identity",
    "precision_at_1",
    "retrieval_metrics",
    "build_run",
    "MultiVectorEncoder",
    "run_sweep",
    "SweepResult",
    "write_report",
    "markdown_table",
    "plot",
]
