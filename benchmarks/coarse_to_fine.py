"""Coarse-to-fine search on a trained model's embeddings: how much of exact top-10 it keeps, and how fast.

The scoring benchmark (:mod:`benchmarks.scoring`) times coarse-to-fine on synthetic vectors, where
its top-10 overlap with exact search says nothing (random vectors have no budget structure). This
script measures the overlap where it means something: on an index built by a trained MetaEmbed
model (by default the quickstart's), with that model's real query embeddings.

For every budget of the index's ladder above ``(1,1)`` and every shortlist size it reports

* ``coarse``: (1,1) MaxSim over every candidate, the best ``shortlist`` re-ranked exactly;
* ``ann``: the shortlist from the FAISS HNSW graph over first vectors, re-ranked exactly;

each as top-10 overlap with exact search at the same budget (1.0 = the same ten items) and the
median latency per batch of queries beside exact search's.

    python -m benchmarks.coarse_to_fine                                  # the quickstart's index
    python -m benchmarks.coarse_to_fine --index IDX --queries q.jsonl --field text
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.measure import K, overlap
from metaembed.budget import Budget
from metaembed.errors import InputError
from metaembed.jsonl import iter_jsonl
from metaembed.retriever import Retriever

#: Shortlists as fractions of the index size (a 1,000 shortlist is 1% of N = 100,000).
DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.1)
BATCH = 16


def default_index() -> Path:
    """The quickstart's index: ``$METAEMBED_CACHE/quickstart/index`` (``~/.cache/metaembed`` by default)."""
    cache = Path(os.environ.get("METAEMBED_CACHE", Path.home() / ".cache" / "metaembed"))
    return cache / "quickstart" / "index"


def read_queries(path: Path, field: str, limit: int | None) -> list[str]:
    """The ``field`` of each JSONL row of ``path`` (a string, or a list of strings: one query each),
    at most ``limit`` of them, evenly spread over the file."""
    texts = []
    for line, row in iter_jsonl(path):
        value = row.get(field)
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise InputError(f"{path}, line {line}: no text field {field!r}")
        texts.extend(values)
    if not texts:
        raise InputError(f"{path} holds no queries")
    if limit is not None and len(texts) > limit:
        step = len(texts) / limit
        texts = [texts[int(i * step)] for i in range(limit)]
    return texts


def _timed_search(retriever: Retriever, embeddings: torch.Tensor, **search: Any) -> tuple[float, list[list[str]]]:
    """Median seconds per batch of :data:`BATCH` queries, and every query's top-10 ids."""
    seconds, found = [], []
    for start in range(0, embeddings.shape[0], BATCH):
        begin = time.perf_counter()
        results = retriever.index.search(embeddings[start : start + BATCH], k=K, **search)
        seconds.append(time.perf_counter() - begin)
        found += [[hit.id for hit in row] for row in results]
    return statistics.median(seconds), found


def measure(retriever: Retriever, texts: Sequence[str], shortlists: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of (budget, method, shortlist, overlap with exact top-10, median latency per batch)."""
    embeddings = retriever.model.encode_queries(list(texts), show_progress=False)
    retriever.index.search(embeddings[:1], k=K, mode="ann", budget=Budget(1, 1))  # build the graph untimed
    rows = []
    for budget in retriever.ladder:
        if budget == Budget(1, 1):
            continue
        exact_s, exact = _timed_search(retriever, embeddings, budget=budget)
        rows.append({"budget": str(budget), "method": "exact", "shortlist": len(retriever), "overlap": 1.0,
                     "latency_ms": 1e3 * exact_s})
        for shortlist in shortlists:
            for mode in ("coarse", "ann"):
                seconds, found = _timed_search(retriever, embeddings, budget=budget, mode=mode, shortlist=shortlist)
                rows.append({"budget": str(budget), "method": mode, "shortlist": shortlist,
                             "overlap": overlap(found, exact), "latency_ms": 1e3 * seconds})
    return rows


def markdown(report: dict[str, Any]) -> str:
    """The rows as a Markdown table under a line saying what was measured."""
    lines = [
        "# Coarse-to-fine search on a trained model's embeddings",
        "",
        f"Index {report['index']} ({report['size']:,} candidates, model {report['model']}); "
        f"{report['num_queries']} queries from {report['queries']} (field {report['field']!r}); "
        f"top-{K}; latency = median per batch of {BATCH} queries; overlap = top-{K} overlap with exact search "
        "at the same budget. coarse = (1,1) over every candidate, ann = FAISS HNSW over first vectors; "
        "both re-rank their shortlist exactly.",
        "",
        "| budget | method | shortlist | % of index | top-10 overlap | latency ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        share = 100 * row["shortlist"] / report["size"]
        lines.append(f"| {row['budget']} | {row['method']} | {row['shortlist']:,} | {share:.0f}% | "
                     f"{row['overlap']:.3f} | {row['latency_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=None, help="an index built by a trained model "
                        "(default: the quickstart's, under $METAEMBED_CACHE)")
    parser.add_argument("--queries", type=Path, default=None,
                        help="JSONL of queries (default: the quickstart's pages.jsonl beside its index)")
    parser.add_argument("--field", default="names",
                        help="the JSONL field holding the query text (a string or a list of strings)")
    parser.add_argument("--max-queries", type=int, default=512, help="queries used, evenly spread over the file")
    parser.add_argument("--shortlists", default=None,
                        help="comma-separated shortlist sizes (default: 1%%, 2%%, 5%%, 10%% of the index)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for coarse_to_fine.json / .md")
    args = parser.parse_args(argv)
    index = args.index or default_index()
    if not index.exists():
        raise SystemExit(f"no index at {index}: run `metaembed quickstart` first, or pass --index")
    queries = args.queries or index.parent / "pages.jsonl"
    if not queries.is_file():
        raise SystemExit(f"no query file at {queries}: pass --queries")
    retriever = Retriever.open(index)
    size = len(retriever)
    if args.shortlists:
        shortlists = sorted({int(value) for value in args.shortlists.split(",")})
    else:
        shortlists = sorted({max(K, round(size * fraction)) for fraction in DEFAULT_FRACTIONS})
    texts = read_queries(queries, args.field, args.max_queries)
    report = {"index": str(index), "model": str(retriever.index.metadata.get("model", "")), "size": size,
              "queries": str(queries), "field": args.field, "num_queries": len(texts),
              "torch_threads": torch.get_num_threads(), "rows": measure(retriever, texts, shortlists)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coarse_to_fine.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "coarse_to_fine.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
