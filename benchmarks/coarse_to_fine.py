"""Coarse-to-fine search on a trained model's embeddings: how much of exact top-10 it keeps, and how fast.

The scoring benchmark (:mod:`benchmarks.scoring`) times coarse-to-fine on synthetic vectors, where
its top-10 overlap with exact search says nothing (random vectors have no budget structure). This
script measures the overlap where it means something: on an index built by a trained MetaEmbed
model (by default the quickstart's), with that model's real query embeddings.

For every budget of the index's ladder above ``(1,1)`` and every shortlist size it reports

* ``coarse``: (1,1) MaxSim over every candidate, the best ``shortlist`` re-ranked exactly;
* ``ann``: the shortlist from the FAISS HNSW graph over first vectors, re-ranked exactly;

each as top-10 overlap with exact search at the same budget (1.0 = the same ten items) and the
median latency per batch of queries beside exact search's. With ``--xtr-python`` it also builds an
``xtr-warp-rs`` WARP index over the same stored vectors (the first ``r_c`` of each candidate) at the
budgets of ``--xtr-budgets`` and times its own search on the same query vectors, one call per batch,
with the same threads; the report then says, for each of its settings, whether one of ours is at
least as fast at equal or better overlap (issue 20's target, at N = 100k).

    python -m benchmarks.coarse_to_fine                                  # the quickstart's index
    python -m benchmarks.coarse_to_fine --index IDX --queries q.jsonl --field text
    make bench-approximate     # 100k passages of Debian manuals, the built-in model, xtr-warp beside
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks import engines
from benchmarks.measure import K, overlap, write_results
from benchmarks.scoring import cpu_class, cpu_description, load_average
from metaembed import native
from metaembed.cache import cache_folder
from metaembed.budget import Budget
from metaembed.errors import InputError
from metaembed.index.first_stages.ann import kept_graph_file
from metaembed.jsonl import iter_jsonl
from metaembed.retriever import Retriever

#: Shortlists as fractions of the index size (a 1,000 shortlist is 1% of N = 100,000).
DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.1)
BATCH = 16
#: xtr-warp search settings: its own tuned defaults, then wider probes.
WARP_SETTINGS = '[{}, {"nprobe": 32}, {"nprobe": 64}]'


def default_index() -> Path:
    """The quickstart's index: ``$METAEMBED_CACHE/quickstart/index`` (``~/.cache/metaembed`` by default)."""
    return cache_folder("quickstart") / "index"


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


def measure(retriever: Retriever, embeddings: torch.Tensor, shortlists: Sequence[int]) -> tuple[list[dict[str, Any]], dict[str, list[list[str]]]]:
    """Rows of (budget, method, shortlist, overlap with exact top-10, median latency per batch), and
    exact search's top-10 ids per budget."""
    kept = None if retriever.index.path is None else kept_graph_file(retriever.index.path)
    stamp = _modified(kept)
    begin = time.perf_counter()
    retriever.index.search(embeddings[:1], k=K, mode="ann", budget=Budget(1, 1))  # build (or load) the graph untimed
    graph_s = time.perf_counter() - begin
    # loaded: a kept graph was there and was not rewritten (a build or a growth over 1 s rewrites it)
    loaded = stamp is not None and _modified(kept) == stamp
    rows, exact_ids = [], {}
    for budget in retriever.ladder:
        if budget == Budget(1, 1):
            continue
        exact_s, exact = _timed_search(retriever, embeddings, budget=budget)
        exact_ids[str(budget)] = exact
        rows.append({"budget": str(budget), "method": "exact", "shortlist": len(retriever), "overlap": 1.0,
                     "latency_ms": 1e3 * exact_s})
        for shortlist in shortlists:
            for mode in ("coarse", "ann"):
                seconds, found = _timed_search(retriever, embeddings, budget=budget, mode=mode, shortlist=shortlist)
                rows.append({"budget": str(budget), "method": mode, "shortlist": shortlist,
                             "overlap": overlap(found, exact), "latency_ms": 1e3 * seconds,
                             **({"graph_build_s": graph_s, "graph_was_kept": loaded} if mode == "ann" else {})})
    return rows, exact_ids


def _modified(path: Path | None) -> int | None:
    """``path``'s modification time in ns, ``None`` when there is no such file."""
    try:
        return None if path is None else path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def warp_rows(retriever: Retriever, embeddings: torch.Tensor, exact_ids: dict[str, list[list[str]]],
              budgets: Sequence[Budget], python: str, settings: list[dict], reps: int,
              work: Path) -> list[dict[str, Any]]:
    """xtr-warp's rows: a WARP index over the first ``r_c`` stored vectors of every candidate (built
    by its worker, timed there), searched with each setting at ``(r_q, r_c)``, one call per batch."""
    import numpy as np

    rows = []
    for budget in budgets:
        ids, parts = [], []
        for batch_ids, vectors in retriever.index.export(budget.r_c):
            ids += batch_ids
            parts.append(vectors.numpy())
        engine = engines.XtrWarp(str(work), retriever.index.dim, [budget.r_c], python, torch.get_num_threads(), settings)
        engine.add(0, np.concatenate(parts))
        parts.clear()
        engine.finish()
        queries = embeddings[:, : budget.r_q].numpy()
        for result in engine.timed_search(queries, budget.r_q, budget.r_c, K, reps, batch=BATCH):
            setting = ", ".join(f"{key}={value}" for key, value in result["setting"].items()) or "its tuned defaults"
            found = [[ids[pid] for pid in row] for row in result["ids"]]
            rows.append({"budget": str(budget), "method": f"xtr-warp ({setting})", "shortlist": None,
                         "overlap": overlap(found, exact_ids[str(budget)]),
                         "latency_ms": 1e3 * statistics.median(result["times"]),
                         "build_s": engine.build_seconds[budget.r_c], "stored_bytes": engine.index_bytes[budget.r_c]})
    return rows


def targets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """For each xtr-warp row: the fastest of ours at equal or better overlap, and whether it is as fast."""
    lines = []
    for peer in (row for row in rows if row["method"].startswith("xtr-warp")):
        ours = [row for row in rows if row["budget"] == peer["budget"] and not row["method"].startswith("xtr-warp")
                and row["overlap"] >= peer["overlap"]]
        best = min(ours, key=lambda row: row["latency_ms"])
        shortlist = "" if best["method"] == "exact" else f", shortlist {best['shortlist']:,}"
        verdict = "met" if best["latency_ms"] <= peer["latency_ms"] else "NOT met"
        lines.append(f"vs {peer['method']} at ({peer['budget']}): it takes {peer['latency_ms']:.1f} ms at overlap "
                     f"{peer['overlap']:.3f}; ours {best['method']}{shortlist}: {best['latency_ms']:.1f} ms at "
                     f"{best['overlap']:.3f} ({peer['latency_ms'] / best['latency_ms']:.1f}x): {verdict}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The rows as a Markdown table under a line saying what was measured."""
    lines = [
        "# Coarse-to-fine search on a trained model's embeddings",
        "",
        f"{report.get('cpu', '')}; {report['torch_threads']} threads; load before: {report.get('load', '?')}. "
        f"Index {report['index']} ({report['size']:,} candidates, model {report['model']}); "
        f"{report['num_queries']} queries from {report['queries']} (field {report['field']!r}); "
        f"top-{K}; latency = median per batch of {BATCH} queries; overlap = top-{K} overlap with exact search "
        "at the same budget. coarse = (1,1) over every candidate, ann = FAISS HNSW over first vectors; "
        "both re-rank their shortlist exactly." + (
            " xtr-warp = a WARP index over the same stored vectors (its k-means centroids and residual "
            "codes), its own search, one call per batch." if any("build_s" in row for row in report["rows"]) else ""),
        "",
        "| budget | method | shortlist | % of index | top-10 overlap | latency ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in sorted(report["rows"], key=lambda row: (row["budget"] != "2,4", row["budget"], row["latency_ms"])):
        if row["shortlist"] is None:
            shortlist = share = "—"
        else:
            shortlist, share = f"{row['shortlist']:,}", f"{100 * row['shortlist'] / report['size']:.1f}%"
        lines.append(f"| {row['budget']} | {row['method']} | {shortlist} | {share} | "
                     f"{row['overlap']:.3f} | {row['latency_ms']:.1f} |")
    graph = next((row for row in report["rows"] if "graph_build_s" in row), None)
    if graph is not None:
        how = ("loaded from the cache (the graph an earlier process kept)" if graph.get("graph_was_kept")
               else "built")
        lines += ["", f"ann graph: {how} in {graph['graph_build_s']:.1f} s by the first `ann` search (untimed above; "
                      "kept in memory, grown as segments are added, and in the cache, where the next process loads it)"]
    warp = [row for row in report["rows"] if "build_s" in row]
    if warp:
        lines += ["", "xtr-warp index: " + "; ".join(
            f"({row['budget']}) built in {row['build_s']:.0f} s, {row['stored_bytes'] / 2**20:,.1f} MiB"
            for row in {row["budget"]: row for row in warp}.values())]
    if report.get("targets"):
        lines += ["", "## Target", ""] + [f"- {line}" for line in report["targets"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=None, help="an index built by a trained model "
                        "(default: the quickstart's, under $METAEMBED_CACHE)")
    parser.add_argument("--queries", type=Path, default=None,
                        help="JSONL of queries (default: the quickstart's held-out queries beside its index)")
    parser.add_argument("--field", default="text",
                        help="the JSONL field holding the query text (a string or a list of strings)")
    parser.add_argument("--max-queries", type=int, default=512, help="queries used, evenly spread over the file")
    parser.add_argument("--shortlists", default=None,
                        help="comma-separated shortlist sizes (default: 1%%, 2%%, 5%%, 10%% of the index)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for NAME.json / .md")
    parser.add_argument("--name", default="coarse_to_fine",
                        help="output stem (default coarse_to_fine); {cpu} becomes the CPU class and kernel ISA, e.g. zen3-avx2")
    parser.add_argument("--xtr-python", default=engines.default_warp_python(),
                        help="an interpreter with xtr-warp-rs (see requirements-peers.txt); default $METAEMBED_XTR_PYTHON")
    parser.add_argument("--xtr-budgets", default="4,8", help="budgets at which to build WARP indexes, e.g. '4,8 8,16'")
    parser.add_argument("--xtr-settings", default=WARP_SETTINGS, help="JSON list of XTRWarp.search keyword dicts")
    parser.add_argument("--xtr-reps", type=int, default=3, help="timed passes over the queries per setting")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder for the WARP indexes")
    args = parser.parse_args(argv)
    args.name = args.name.replace("{cpu}", f"{cpu_class()}-{native.isa() or 'blas'}")
    index = args.index or default_index()
    if not index.exists():
        raise SystemExit(f"no index at {index}: run `metaembed quickstart` first, or pass --index")
    queries = args.queries or index.parent / "heldout" / "queries.jsonl"
    if not queries.is_file():
        raise SystemExit(f"no query file at {queries}: pass --queries")
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)  # checked now, not after the minutes of measuring before WARP
    retriever = Retriever.open(index)
    size = len(retriever)
    if args.shortlists:
        shortlists = sorted({int(value) for value in args.shortlists.split(",")})
    else:
        shortlists = sorted({max(K, round(size * fraction)) for fraction in DEFAULT_FRACTIONS})
    texts = read_queries(queries, args.field, args.max_queries)
    report = {"cpu": cpu_description(), "load": load_average(), "index": str(index),
              "model": str(retriever.index.metadata.get("model", "")), "size": size,
              "queries": str(queries), "field": args.field, "num_queries": len(texts),
              "torch_threads": torch.get_num_threads()}
    embeddings = retriever.model.encode_queries(list(texts), show_progress=False)
    report["rows"], exact_ids = measure(retriever, embeddings, shortlists)
    if args.xtr_python:
        budgets = [retriever.check_budget(Budget.parse(text)) for text in args.xtr_budgets.split()]
        with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
            report["rows"] += warp_rows(retriever, embeddings, exact_ids, budgets, args.xtr_python,
                                        json.loads(args.xtr_settings), args.xtr_reps, Path(work))
        report["targets"] = targets(report["rows"])
    write_results(args.out, args.name, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
