"""The ``metaembed`` command line: parse arguments, call the library, print.

Every command is a thin wrapper over a library call (:mod:`metaembed.retriever`,
:mod:`metaembed.serving`, :mod:`metaembed.quickstart`, the training and evaluation packages).
Errors the user can cause -- a missing file, a malformed budget, a budget larger than the index
holds -- print one line ``error: ...`` and exit with status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer

from metaembed.errors import IndexCorruptError, MetaEmbedError

app = typer.Typer(
    name="metaembed",
    help="MetaEmbed multi-vector retrieval: build an index of images, PDFs and text, search it at "
    "a budget r_q,r_c of your choice, serve it over HTTP.\n\n"
    "Start with:  metaembed quickstart",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
index_app = typer.Typer(
    help="Build and maintain a multi-vector index (build | add | delete | info | check | repair | compact | export).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(index_app, name="index")

BUDGET_HELP = (
    "Budget 'r_q,r_c': use the first r_q query vectors and the first r_c candidate vectors. "
    "Smaller is faster, larger is more accurate. Default: the largest budget recorded in the index."
)
LADDER_HELP = (
    "Budgets to record in the index as the ladder it is meant to be searched at, "
    "space- or ';'-separated, e.g. '1,1 2,4 4,8 8,16'. Default: the paper's ladder "
    "'1,1 2,4 4,8 8,16 16,64' cut to what the model produces."
)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# --- encode ----------------------------------------------------------------------------------
@app.command(no_args_is_help=True)
def encode(
    model: Path = typer.Option(..., "--model", "-m", help="Folder of a saved MetaEmbed model."),
    input: Path = typer.Option(..., "--input", "-i", help="A folder (images, PDFs, text files) or a JSONL of items."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the embeddings (.npz with 'ids' and 'embeddings')."),
    as_: str = typer.Option("candidate", "--as", help="Encode the items as 'query' or 'candidate'."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Items per forward pass."),
) -> None:
    """Embed items into multi-vector embeddings and save them.

    The file holds 'ids' (N,) and 'embeddings' (N, R, D) float32, R being the model's number of
    query or candidate Meta Tokens; any prefix [:, :r] is a valid lower-budget embedding.

    \b
    Example:
      metaembed encode -m ./my-model -i ./photos -o photos.npz
    """
    import numpy as np

    from metaembed.ingest import iter_records
    from metaembed.retriever import load_model

    if as_ not in ("query", "candidate"):
        raise typer.BadParameter(f"--as must be 'query' or 'candidate', got {as_!r}")
    encoder = load_model(model)
    records = list(iter_records(input))
    items = [r.item() for r in records]
    encode_fn = encoder.encode_queries if as_ == "query" else encoder.encode_candidates
    embeddings = encode_fn(items, batch_size=batch_size, show_progress_bar=True)
    np.savez(out, ids=np.array([r.id for r in records]), embeddings=embeddings.float().numpy())
    typer.echo(f"wrote {len(records)} embeddings of shape {tuple(embeddings.shape[1:])} to {out}")


# --- index -----------------------------------------------------------------------------------
@index_app.command("build", no_args_is_help=True)
def index_build(
    model: Path = typer.Option(..., "--model", "-m", help="Folder of a saved MetaEmbed model."),
    input: Path = typer.Option(
        ..., "--input", "-i",
        help="A folder (walked recursively: images, PDFs rendered page by page, .txt/.md files) "
        "or a JSONL file with one {\"id\", \"text\"?, \"image\"?} object per line.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create, or to resume if it exists."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help=LADDER_HELP),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Items encoded per batch; each batch is saved before the next."),
    dtype: str = typer.Option("float16", "--dtype", help="Storage type of the vectors: float16 (half the memory) or float32."),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Encode on the Ray cluster at ADDRESS ('auto', 'ray://host:10001', or 'local' to start one "
        "on this machine) into a sharded collection. Needs metaembed[ray].",
    ),
    shards: Optional[int] = typer.Option(None, "--shards", min=1, help="With --ray: shards of a new collection."),
    replicas: Optional[int] = typer.Option(
        None, "--replicas", min=1, help="With --ray: model replicas (default: one per GPU, else one per 2 CPUs)."),
) -> None:
    """Embed a folder or JSONL into a new index, or resume an interrupted build.

    The index records the model folder and the budget ladder, so 'metaembed search' needs only
    the index path. Ids already in the index are skipped: rerun the same command to resume.

    \b
    Examples:
      metaembed index build -m ./my-model -i ./docs -o ./docs.index --budgets "1,1 4,8 16,64"
      metaembed index build --ray auto -m ./my-model -i ./docs -o ./docs.collection --shards 8
    """
    if ray is not None:
        from metaembed.distributed.build import build_collection, connected

        with connected(ray):
            collection = build_collection(model, input, out, num_shards=shards, budgets=budgets,
                                          batch_size=batch_size, dtype=dtype, replicas=replicas)
            typer.echo(f"collection {out}: {len(collection)} items in {collection.num_shards} shards")
        return
    from metaembed.retriever import build_index

    before = _size_if_exists(out)
    retriever = build_index(model, input, out, budgets=budgets, batch_size=batch_size, dtype=dtype)
    added = len(retriever) - before
    typer.echo(f"index {out}: {len(retriever)} items ({added} added, {before} already there)")


def _size_if_exists(path: Path) -> int:
    if not path.exists():
        return 0
    from metaembed.retriever import open_index

    return len(open_index(path))


@index_app.command("add", no_args_is_help=True)
def index_add(
    index: Path = typer.Argument(..., help="Index folder made by 'metaembed index build'."),
    input: Path = typer.Option(..., "--input", "-i", help="Folder or JSONL of new items (same formats as 'index build')."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Items encoded per batch."),
) -> None:
    """Add new items to an index with the model it records; ids already there are skipped.

    \b
    Example:
      metaembed index add ./docs.index -i ./more-docs
    """
    from metaembed.retriever import build_index, open_index

    existing = open_index(index)
    before = len(existing)
    model = existing.metadata.get("model")
    if not model:
        raise MetaEmbedError(f"index {index} does not record its model; rebuild it with 'metaembed index build'")
    retriever = build_index(model, input, index, batch_size=batch_size)
    typer.echo(f"index {index}: {len(retriever)} items ({len(retriever) - before} added)")


@index_app.command("delete", no_args_is_help=True)
def index_delete(
    index: Path = typer.Argument(..., help="Index folder."),
    ids: list[str] = typer.Argument(..., help="One or more item ids to remove (as shown by 'metaembed search')."),
) -> None:
    """Remove items from an index by id.

    \b
    Example:
      metaembed index delete ./docs.index report.pdf#page=3 notes.txt
    """
    from metaembed.retriever import open_index

    opened = open_index(index)
    opened.delete(list(ids))
    typer.echo(f"deleted {len(ids)} items; {len(opened)} left")


@index_app.command("info", no_args_is_help=True)
def index_info(
    index: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show an index's model, size, budgets and memory / FLOPs per budget.

    \b
    Example:
      metaembed index info ./docs.index --json
    """
    from metaembed.retriever import Retriever

    info = Retriever.open(index).info()
    if as_json:
        _echo_json(info)
        return
    typer.echo(f"index:       {index}\nmodel:       {info['model']}\nitems:       {info['size']}")
    typer.echo(f"dimension:   {info['dim']}\nmax budget:  {info['max_budget']}")
    typer.echo(f"{'budget':>8}  {'memory':>12}  {'FLOPs/query':>14}")
    for row in info["per_budget"]:
        typer.echo(f"{row['budget']:>8}  {_human_bytes(row['memory_bytes']):>12}  {row['flops_per_query']:>14,}")


@index_app.command("check", no_args_is_help=True)
def index_check(index: Path = typer.Argument(..., help="Index folder.")) -> None:
    """Read every byte of an index and list what is damaged (exit status 2 if anything is).

    Checks the catalog's pages and rows and every chunk of every vector file against the
    checksums written with them.

    \b
    Example:
      metaembed index check ./docs.index
    """
    from metaembed.index import MultiVectorIndex

    damage = MultiVectorIndex.check(index)
    for found in damage:
        lost = f" ({len(found.ids)} items)" if found.ids else ""
        typer.echo(f"damaged: {found.file}: {found.message}{lost}")
    if damage:
        raise IndexCorruptError(f"index {index} has {len(damage)} damaged parts: 'metaembed index repair {index}' drops them")
    with MultiVectorIndex.open(index) as opened:
        typer.echo(f"index {index}: sound ({len(opened)} items, {_human_bytes(_segment_bytes(index))} of vectors)")


@index_app.command("repair", no_args_is_help=True)
def index_repair(
    index: Path = typer.Argument(..., help="Index folder."),
    input: Optional[Path] = typer.Option(
        None, "--input", "-i", help="The folder or JSONL the index was built from: re-embed the dropped items."
    ),
    batch_size: int = typer.Option(16, help="Items encoded at once when re-embedding."),
) -> None:
    """Drop the damaged parts of an index (and, with --input, embed the items they held again).

    \b
    Example:
      metaembed index repair ./docs.index --input ./docs
    """
    from metaembed.index import MultiVectorIndex

    lost = MultiVectorIndex.repair(index)
    typer.echo(f"index {index}: dropped {len(lost)} damaged items" + (f": {', '.join(lost[:10])}" if lost else ""))
    if input is None or not lost:
        return
    from metaembed.ingest import iter_records
    from metaembed.retriever import Retriever

    retriever = Retriever.open(index)
    wanted = set(lost)
    records = [record for record in iter_records(input) if record.id in wanted]
    retriever.add([r.id for r in records], [r.item() for r in records], [r.payload for r in records],
                  batch_size=batch_size)
    missing = len(lost) - len(records)
    typer.echo(f"re-embedded {len(records)} items from {input}" + (f"; {missing} are not in it" if missing else ""))


@index_app.command("compact", no_args_is_help=True)
def index_compact(index: Path = typer.Argument(..., help="Index folder.")) -> None:
    """Reclaim the space of deleted items and merge small segment files.

    \b
    Example:
      metaembed index compact ./docs.index
    """
    from metaembed.retriever import open_index

    before = _segment_bytes(index)
    with open_index(index) as opened:
        opened.compact()
    typer.echo(f"index {index}: vectors {_human_bytes(before)} -> {_human_bytes(_segment_bytes(index))}")


def _segment_bytes(index: Path) -> int:
    return sum(path.stat().st_size for path in Path(index).glob("seg-*"))


@index_app.command("export", no_args_is_help=True)
def index_export(
    index: Path = typer.Argument(..., help="Index folder."),
    target: str = typer.Argument(..., help="Where to write: a file (safetensors, npz), a LanceDB folder, or for "
                                 "Qdrant a URL, ':memory:' or a local-mode folder."),
    to: str = typer.Option(..., "--to", help="safetensors | npz | lancedb | qdrant"),
    budget: Optional[str] = typer.Option(None, "--budget", "-b", help="Files: keep the first r_c vectors "
                                         "('r_c' or 'r_q,r_c'). Default: all stored vectors."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="LanceDB/Qdrant: one multi-vector column per r_c "
                                          "of this ladder, e.g. '1,1 4,8 16,64'. Default: the index's ladder."),
    name: Optional[str] = typer.Option(None, "--name", help="LanceDB table / Qdrant collection (default 'metaembed')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing table or collection."),
    dtype: str = typer.Option("float32", "--dtype", help="Files: float32 or float16 vectors."),
) -> None:
    """Export an index (ids, vectors, payloads) to a file or a vector database.

    \b
    Examples:
      metaembed index export ./docs.index docs.safetensors --to safetensors --budget 16
      metaembed index export ./docs.index ./lance --to lancedb --budgets "1,1 4,8 16,64"
      metaembed index export ./docs.index http://localhost:6333 --to qdrant --name docs
    """
    from metaembed.integrations.exporting import export_index
    from metaembed.retriever import open_index

    opened = open_index(index)
    count = export_index(opened, to, target, budget=budget, budgets=budgets, name=name, overwrite=overwrite, dtype=dtype)
    typer.echo(f"exported {count} items from {index} to {to} {target}")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover - unreachable


# --- search ----------------------------------------------------------------------------------
@app.command(no_args_is_help=True)
def search(
    index: Path = typer.Argument(..., help="Index folder made by 'metaembed index build'."),
    query: Optional[str] = typer.Argument(None, help="Query text (optional when --image is given)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Query image file (alone or with the text)."),
    budget: Optional[str] = typer.Option(None, "--budget", "-b", help=BUDGET_HELP),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="How many results to return."),
    mode: str = typer.Option("exact", "--mode", help="'exact': MaxSim over every item; 'coarse': score all at budget 1,1, rerank the best 1000 "
        "exactly; 'ann': take the shortlist from a FAISS graph (sub-linear), rerank exactly."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
) -> None:
    """Search an index with text and/or an image at a budget.

    \b
    Examples:
      metaembed search ./docs.index "quarterly revenue table" --budget 4,8 -k 5
      metaembed search ./photos.index --image cat.jpg --json
    """
    from metaembed.budget import Budget
    from metaembed.retriever import Retriever

    chosen = Budget.parse(budget) if budget is not None else None  # read at the edge, checked by the retriever
    if query is None and image is None:
        raise MetaEmbedError("give query text, --image PATH, or both")
    if image is not None and not image.is_file():
        raise MetaEmbedError(f"image file not found: {image}")
    item: dict[str, Any] = {}
    if query is not None:
        item["text"] = query
    if image is not None:
        item["image"] = image
    retriever = Retriever.open(index)
    hits = retriever.search(item, k=k, budget=chosen, mode=mode)
    chosen = chosen or retriever.default_budget
    if as_json:
        _echo_json({"budget": str(chosen), "results": [h.as_dict() for h in hits]})
        return
    typer.echo(format_hits(hits, chosen))


def format_hits(hits: list, budget: Any) -> str:
    """A readable table of hits: rank, score, id and the path or a text snippet."""
    lines = [f"budget {budget}: {len(hits)} results", f"{'rank':>4}  {'score':>8}  {'id':<32}  path / snippet"]
    for hit in hits:
        # the most human field the payload has: a snippet, a title or name, else the file
        shown = next((hit.payload[key] for key in ("text", "title", "name", "path") if hit.payload.get(key)), "")
        shown = " ".join(str(shown).split())
        if len(shown) > 60:
            shown = shown[:57] + "..."
        lines.append(f"{hit.rank:>4}  {hit.score:>8.4f}  {hit.id:<32}  {shown}")
    return "\n".join(lines)


# --- train / eval / bench --------------------------------------------------------------------
@app.command(no_args_is_help=True)
def train(
    config: Path = typer.Argument(..., help="Training YAML (model, output_dir, data, max_steps, ...; see metaembed.training.config)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Override the config's output_dir."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override the config's max_steps."),
) -> None:
    """Train a MetaEmbed model (Meta Tokens + LoRA, MMR loss) from a YAML config.

    The final model is saved to OUTPUT_DIR/model, ready for 'metaembed index build --model'.

    \b
    Example:
      metaembed train configs/mmr.yaml --output-dir runs/mmr --max-steps 200
    """
    import dataclasses

    from metaembed.training.config import TrainingConfig
    from metaembed.training.run import train as run_training

    if not config.is_file():
        raise MetaEmbedError(f"config file not found: {config}")
    loaded = TrainingConfig.from_yaml(config)
    changes: dict[str, Any] = {}
    if output_dir is not None:
        changes["output_dir"] = str(output_dir)
    if max_steps is not None:
        changes["max_steps"] = max_steps
    final = run_training(dataclasses.replace(loaded, **changes) if changes else loaded)
    typer.echo(f"trained model saved to {final}")


@app.command("eval", no_args_is_help=True)
def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="Folder of a saved MetaEmbed model."),
    benchmark: Path = typer.Option(..., "--benchmark", "-b", help="Local benchmark folder (MMEB, ViDoRe v1/v2 or BEIR layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.json, results.md and results.png."),
    ladder: Optional[str] = typer.Option(None, "--ladder", help="Budgets to score, e.g. '1,1 4,8 16,64'. " + LADDER_HELP.split(". ", 1)[1]),
    kind: Optional[str] = typer.Option(None, "--kind", help="Benchmark kind when it cannot be detected from the folder."),
    datasets: Optional[list[str]] = typer.Option(None, "--dataset", help="Only this data set (repeatable)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Items per forward pass."),
) -> None:
    """Evaluate a model at every budget of a ladder and write a table and a plot.

    Embeddings are cached under OUT/cache, so a rerun (or a new ladder) reuses them.

    \b
    Example:
      metaembed eval -m ./my-model -b data/ViDoRe -o runs/vidore --ladder "1,1 4,8 16,64"
    """
    from metaembed.evaluation import markdown_table, run_sweep
    from metaembed.retriever import load_model

    if not benchmark.exists():
        raise MetaEmbedError(f"benchmark folder not found: {benchmark}")
    result = run_sweep(
        load_model(model), benchmark, out_dir=out, kind=kind, ladder=ladder,
        batch_size=batch_size, datasets=datasets or None, model_name=str(model),
    )
    typer.echo(markdown_table(result))
    typer.echo(f"results written to {out}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def bench(
    context: typer.Context,
    script: str = typer.Option("scoring", "--script", help="Which benchmarks/<name>.py to run."),
) -> None:
    """Run a speed benchmark from a source checkout's benchmarks/ folder.

    Any further arguments are passed to the script (see 'metaembed bench -- --help'). The
    scripts print a table and write JSON, with peer implementations measured in the same run.
    They live in the repository, not in the installed package: run this inside a clone (or
    with metaembed installed from one with 'pip install -e .').

    \b
    Examples:
      metaembed bench -- --quick --out runs/bench
      metaembed bench --script coarse_to_fine      # on the quickstart's trained model
    """
    import subprocess

    root = checkout_root(Path.cwd(), Path(__file__).resolve().parent)
    if root is None:
        raise MetaEmbedError(
            "'metaembed bench' runs the speed benchmarks of a source checkout, and the installed package "
            "does not include them: git clone the metaembed repository, 'pip install -e .' in it, and run "
            "'metaembed bench' there"
        )
    target = root / "benchmarks" / f"{script}.py"
    if not target.is_file():
        available = sorted(p.stem for p in (root / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
        raise MetaEmbedError(f"benchmark script {target} not found; the checkout has: {', '.join(available)}")
    completed = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", *context.args], cwd=root)
    if completed.returncode:
        raise typer.Exit(completed.returncode)


def checkout_root(start: Path, package_dir: Path) -> Path | None:
    """The source checkout whose benchmarks/ 'metaembed bench' runs, or ``None`` outside one.

    Looks in ``start`` and its parents (a user inside a clone), then beside ``package_dir``
    (an editable install); a checkout holds both ``benchmarks/__init__.py`` and ``metaembed/``.
    """
    for folder in (start, *start.parents, package_dir.parent):
        if (folder / "benchmarks" / "__init__.py").is_file() and (folder / "metaembed" / "__init__.py").is_file():
            return folder
    return None


# --- serve -----------------------------------------------------------------------------------
@app.command(no_args_is_help=True)
def serve(
    index: Path = typer.Argument(..., help="Index folder to serve."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="METAEMBED_API_KEY",
        help="If set, every request except GET /health must send this value in the X-API-Key header. "
        "Also read from $METAEMBED_API_KEY.",
    ),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Serve a sharded collection (made by 'index build --ray') with Ray Serve on the cluster "
        "at ADDRESS ('auto', 'ray://host:10001', or 'local'); same endpoints and API key.",
    ),
) -> None:
    """Serve an index over HTTP (OpenAPI docs at /docs).

    Endpoints: POST /search, POST /items, DELETE /items/{id}, GET /health, GET /info.

    \b
    Examples:
      metaembed serve ./docs.index --port 8080 --api-key secret
      metaembed serve ./docs.collection --ray auto --host 0.0.0.0 --port 8080
    """
    if ray is not None:
        from metaembed.distributed.build import connected
        from metaembed.distributed.serve import run

        with connected(ray):
            run(index, host=host, port=port, api_key=api_key, blocking=True)
        return
    from metaembed.serving.server import serve

    serve(index, host=host, port=port, api_key=api_key)


# --- quickstart ------------------------------------------------------------------------------
@app.command()
def quickstart(
    cache: Path = typer.Option(
        Path(os.environ.get("METAEMBED_CACHE", Path.home() / ".cache" / "metaembed")) / "quickstart",
        "--cache", help="Folder for the trained model, the index, the results table and plot. Reused on the next run.",
    ),
    retrain: bool = typer.Option(False, "--retrain", help="Train again even if a trained model is in the cache."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Most training steps (default: the recipe's 3000)."),
    train_minutes: float = typer.Option(
        11.0, "--train-minutes", min=0.1,
        help="Training stops after this many minutes even if --steps are not done (the schedule adapts).",
    ),
    page_grid: Optional[int] = typer.Option(
        None, "--page-grid", min=1,
        help="Glyphs per page side (default 2: four characters on every searchable image; 1: one each).",
    ),
) -> None:
    """Train (or load) a small MetaEmbed model on real offline data, index it, measure every budget.

    The data: every character that matplotlib's DejaVu Sans font draws, paired with its Unicode
    name and drawn four to a page (a 2x2 sheet; --page-grid sets the sheet's side). 20% of the
    characters are held out; their names are the test queries, each searched for the one page that
    shows it. Prints Recall@1 / nDCG@5, query latency and index memory per budget, how far the
    largest budget's gain over the smallest exceeds its noise, and writes a PNG plot.

    \b
    Example:
      metaembed quickstart --cache ./.metaembed
    """
    from metaembed.quickstart import run_quickstart

    run_quickstart(
        cache, retrain=retrain, steps=steps, time_budget_s=60 * train_minutes, page_grid=page_grid, echo=typer.echo
    )


# --- entry point -----------------------------------------------------------------------------
def _quiet_libraries() -> None:
    # Weight-loading bars and load reports from transformers would bury the CLI's own output;
    # the CLI's progress bars (indexing, training) are its own tqdm bars and stay.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print ``error: ...`` and return 2 (no traceback)."""
    _quiet_libraries()
    try:
        app(args=argv, prog_name="metaembed", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code or 0)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        return 1
    except click.ClickException as error:
        error.show()
        return 2
    except (MetaEmbedError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
