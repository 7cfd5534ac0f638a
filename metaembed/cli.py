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

import typer

from metaembed.budget import DEFAULT_SHORTLIST
from metaembed.cache import cache_folder
from metaembed.errors import IndexCorruptError, MetaEmbedError
from metaembed.model.builtin import DEFAULT_MODEL

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
    help="Build and maintain a multi-vector index (build | add | sync | delete | info | check | repair | compact | export).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(index_app, name="index")
model_app = typer.Typer(help="Prepare a model for fast use (export).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(model_app, name="model")
cache_app = typer.Typer(help="What metaembed keeps in its cache, and clearing it (info | clear).",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")

MODEL_HELP = (
    "A built-in model name or the folder of a saved MetaEmbed model. Default: the built-in "
    f"'{DEFAULT_MODEL}'."
)
MODEL_OVERRIDE_HELP = (
    "Use this model (built-in name or folder) instead of the one the index records, e.g. after "
    "moving the model folder. It must embed into the index's dimension."
)
DTYPE_HELP = (
    "Storage type of the vectors: float16 (default; 2 bytes a value), bfloat16 (2 bytes, float32's "
    "range), int8 (1 byte plus one float32 scale per 64 values), float32 (4 bytes, exact), or the product "
    "quantisers pq4, pq2, pq1 (1/4, 1/8, 1/16 of float16; codebooks learnt from the first 16,384 vectors), "
    "apq2 (pq2's 1/8 of float16 with codes chosen for inner products: closer to exact search; unit vectors only), "
    "or ppq2 / ppq4 (1/8 / 1/4 of float16 an item: each vector coded as what the item's earlier vectors do not "
    "predict, vector 0 at a byte a value; the closest to exact search at those sizes; learnt from the first 4,096 items)."
)
STRICT_HELP = "Stop at the first file that cannot be read (default: skip it, say why, and go on)."
REPORT_HELP = "Write what was added, updated, deleted and skipped (with reasons) to this JSON file."
BUDGET_HELP = (
    "Budget 'r_q,r_c': use the first r_q query vectors and the first r_c candidate vectors. "
    "Smaller is faster, larger is more accurate. Default: the largest budget recorded in the index."
)
LADDER_HELP = (
    "Budgets to record in the index as the ladder it is meant to be searched at, "
    "space- or ';'-separated, e.g. '1,1 2,4 4,8 8,16'. Default: the paper's ladder "
    "'1,1 2,4 4,8 8,16 16,64' cut to what the model produces, topped with its full budget."
)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# --- encode ----------------------------------------------------------------------------------
@app.command(no_args_is_help=True)
def encode(
    input: Path = typer.Option(..., "--input", "-i", help="A folder (images, PDFs, text files) or a JSONL of items."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the embeddings (.npz with 'ids' and 'embeddings')."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    as_: str = typer.Option("candidate", "--as", help="Encode the items as 'query' or 'candidate'."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Items per forward pass."),
) -> None:
    """Embed items into multi-vector embeddings and save them.

    The file holds 'ids' (N,) and 'embeddings' (N, R, D) float32, R being the model's number of
    query or candidate Meta Tokens; any prefix [:, :r] is a valid lower-budget embedding. Files
    are read as 'index build' reads them (long texts in passages, images through OCR for a
    text-only model); unreadable files are skipped with a reason each.

    \b
    Example:
      metaembed encode -i ./photos -o photos.npz -m ./my-model
    """
    import numpy as np

    from metaembed.ingest import ReadOptions, iter_records
    from metaembed.retriever import load_model, passage_splitter

    if as_ not in ("query", "candidate"):
        raise MetaEmbedError(f"--as must be 'query' or 'candidate', got {as_!r}")
    iter_records(input)  # a missing input fails before the model is loaded
    encoder = load_model(model)
    skipped: list = []
    options = ReadOptions(images=bool(encoder.supports_images), split=passage_splitter(encoder))
    records = list(iter_records(input, options, skipped=skipped))
    _echo_skipped(skipped)
    if not records:
        raise MetaEmbedError(f"nothing to encode in {input}")
    items = [r.item() for r in records]
    encode_fn = encoder.encode_queries if as_ == "query" else encoder.encode_candidates
    embeddings = encode_fn(items, batch_size=batch_size, show_progress_bar=True)
    np.savez(out, ids=np.array([r.id for r in records]), embeddings=embeddings.float().numpy())
    typer.echo(f"wrote {len(records)} embeddings of shape {tuple(embeddings.shape[1:])} to {out}")


def _echo_skipped(skipped: list, report: Optional[Path] = None, shown: int = 20) -> None:
    """One line per skipped input on stderr (the first ``shown``; the rest are in the report)."""
    for entry in skipped[:shown]:
        typer.echo(f"skipped {entry}", err=True)
    if len(skipped) > shown:
        where = f"see {report}" if report else "rerun with --report FILE to list them"
        typer.echo(f"... and {len(skipped) - shown} more skipped: {where}", err=True)


def _finish_update(index: Path, size: int, report: Any, report_file: Optional[Path]) -> None:
    """Print an update's notes, skips and summary line; write the JSON report if asked."""
    if report_file is not None:
        report_file.write_text(json.dumps({
            "index": str(index), "size": size, "added": report.added, "updated": report.updated,
            "deleted": report.deleted, "unchanged": report.unchanged,
            "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped],
        }, indent=2, ensure_ascii=False))
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    _echo_skipped(report.skipped, report_file)
    line = f"index {index}: {size} items; {report.summary()}"
    if report.skipped:
        line += f": see {report_file}" if report_file else " (listed above)"
    typer.echo(line)


# --- index -----------------------------------------------------------------------------------
@index_app.command("build", no_args_is_help=True)
def index_build(
    input: Path = typer.Option(
        ..., "--input", "-i",
        help="A folder (walked recursively: images, PDFs page by page, text files) or a JSONL file "
        "with one {\"id\", \"text\"?, \"image\"?} object per line.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create, or to resume if it exists."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    budgets: Optional[str] = typer.Option(None, "--budgets", help=LADDER_HELP),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Items encoded per batch; each batch is saved before the next."),
    dtype: str = typer.Option("float16", "--dtype", help=DTYPE_HELP),
    copy_model: bool = typer.Option(False, "--copy-model", help="Keep a copy of the model inside the index folder, so the index is self-contained."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    report: Optional[Path] = typer.Option(None, "--report", help=REPORT_HELP),
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

    The index records its model (a built-in name or a path relative to the index), the folder
    (file paths are stored relative to it) and the budget ladder, so 'metaembed search' needs only
    the index path, and the index, model and folder can move together. Files already indexed with
    the same content are skipped: rerun the same command to resume. Long texts are split into
    passages the model reads whole; a text-only model reads images and scanned PDF pages through
    OCR. Unreadable files are skipped with a reason each.

    \b
    Examples:
      metaembed index build -i ./docs -o ./docs.index
      metaembed index build -i ./docs -o ./docs.index -m ./my-model --budgets "1,1 2,4 4,8"
      metaembed index build --ray auto -m ./my-model -i ./docs -o ./docs.collection --shards 8
    """
    if ray is not None:
        from metaembed.distributed.build import build_collection, connected

        with connected(ray):
            collection = build_collection(model, input, out, num_shards=shards, budgets=budgets,
                                          batch_size=batch_size, dtype=dtype, replicas=replicas)
            typer.echo(f"collection {out}: {len(collection)} items in {collection.num_shards} shards")
            collection.close()  # gives the build's lease back: the shard actors stop unless others use them
        return
    from metaembed.index.codecs import get_codec
    from metaembed.retriever import build_index, export_for_next_time

    get_codec(dtype)  # a bad --dtype fails before any work
    retriever = build_index(
        model, input, out, budgets=budgets, batch_size=batch_size, dtype=dtype, copy_model=copy_model, strict=strict
    )
    _finish_update(out, len(retriever), retriever.last_update, report)
    export_for_next_time(retriever.model)  # the model is loaded now: the first search will not need it


@index_app.command("add", no_args_is_help=True)
def index_add(
    index: Path = typer.Argument(..., help="Index folder made by 'metaembed index build'."),
    input: Path = typer.Option(..., "--input", "-i", help="Folder or JSONL of items (same formats as 'index build')."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Items encoded per batch."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_OVERRIDE_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    report: Optional[Path] = typer.Option(None, "--report", help=REPORT_HELP),
) -> None:
    """Add new files (or JSONL rows) to an index and re-index changed ones, in one commit.

    A file whose content changed since it was indexed replaces its old records; unchanged files
    are not read again. Nothing is removed (see 'metaembed index sync --delete-missing').

    \b
    Example:
      metaembed index add ./docs.index -i ./more-docs
    """
    _update(index, input, model, batch_size, strict, report, delete_missing=False)


@index_app.command("sync", no_args_is_help=True)
def index_sync(
    index: Path = typer.Argument(..., help="Index folder made by 'metaembed index build'."),
    folder: Optional[Path] = typer.Argument(None, help="The folder (or JSONL) to mirror. Default: the folder the index was built from."),
    delete_missing: bool = typer.Option(False, "--delete-missing", help="Also remove the records of files that are no longer there."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Items encoded per batch."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_OVERRIDE_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
    report: Optional[Path] = typer.Option(None, "--report", help=REPORT_HELP),
) -> None:
    """Bring an index up to date with its folder: new files added, changed ones re-indexed, in one commit.

    Each file's content hash is compared with the one stored at indexing time; only new and
    changed files are read and encoded. With --delete-missing, files that vanished are removed
    too. Everything is committed at once: a search never sees half an update.

    \b
    Example:
      metaembed index sync ./docs.index --delete-missing
      metaembed index sync ./docs.index ./docs
    """
    if folder is None:
        from metaembed.retriever import Retriever

        folder = Retriever.open(index).source
        if folder is None:
            raise MetaEmbedError(f"index {index} does not record the folder it was built from; give FOLDER")
    _update(index, folder, model, batch_size, strict, report, delete_missing=delete_missing)


def _update(
    index: Path, source: Path, model: Optional[str], batch_size: int, strict: bool, report: Optional[Path],
    delete_missing: bool,
) -> None:
    from metaembed.ingest import iter_records
    from metaembed.retriever import Retriever, update_index

    iter_records(source)  # a missing input fails before the model is loaded
    retriever = Retriever.open(index, model)
    done = update_index(retriever, source, delete_missing=delete_missing, strict=strict, batch_size=batch_size)
    _finish_update(index, len(retriever), done, report)


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


def _open_retriever(index: str | Path, model: Optional[str] = None, *, exported_queries: bool = False) -> Any:
    """A retriever on an index folder, or on a sharded collection's shards opened in this process (no Ray)."""
    from metaembed.distributed.collection import is_collection
    from metaembed.retriever import Retriever

    if not is_collection(index):
        return Retriever.open(index, model, exported_queries=exported_queries)
    from metaembed.distributed import ShardedIndex

    return Retriever.around(ShardedIndex.open(index), index, model, exported_queries=exported_queries)


@index_app.command("info", no_args_is_help=True)
def index_info(
    index: Path = typer.Argument(..., help="Index folder, or a sharded collection (read here, without Ray)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show an index's model, size, budgets and memory / FLOPs per budget.

    \b
    Example:
      metaembed index info ./docs.index --json
    """
    info = _open_retriever(index).info()
    if as_json:
        _echo_json(info)
        return
    typer.echo(f"index:       {index}\nmodel:       {info['model']}\nfolder:      {info['source'] or '-'}")
    shards = f" in {info['shards']} shards" if info["shards"] > 1 else ""
    typer.echo(f"items:       {info['size']}{shards}\nstorage:     {info['dtype']}")
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
    from metaembed.integrations.export_to import export_index
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


# --- model -----------------------------------------------------------------------------------
@model_app.command("export")
def model_export(
    model: str = typer.Argument(DEFAULT_MODEL, help=MODEL_HELP),
    force: bool = typer.Option(False, "--force", help="Export again even when a valid export exists."),
) -> None:
    """Export the model's query encoder (ONNX), so that 'metaembed search' needs no model load.

    The export goes to $METAEMBED_CACHE/query-encoders (default ~/.cache/metaembed), keyed by the
    model's files; 'metaembed index build' makes it too. Models other than one-way BERT ones have
    no export and search with the model itself.

    \b
    Example:
      metaembed model export ./my-model
    """
    from metaembed.model.query_export import export_query_encoder
    from metaembed.retriever import load_model

    folder = export_query_encoder(load_model(model), force=force)
    typer.echo(f"query encoder of {model}: {folder}")


# --- search ----------------------------------------------------------------------------------
@app.command(no_args_is_help=True)
def search(
    index: str = typer.Argument(..., help="Index folder made by 'metaembed index build', or a sharded collection "
                       "(searched here, without Ray); with --server: the query."),
    query: Optional[str] = typer.Argument(None, help="Query text (optional when --image is given)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Query image file (alone or with the text)."),
    budget: Optional[str] = typer.Option(None, "--budget", "-b", help=BUDGET_HELP),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="How many results to return."),
    mode: str = typer.Option("exact", "--mode", help="'exact': MaxSim over every item; 'coarse': score all at budget 1,1, rerank the best "
        "--shortlist exactly; 'ann': take the shortlist from a FAISS graph (sub-linear), rerank exactly."),
    shortlist: int = typer.Option(DEFAULT_SHORTLIST, "--shortlist", min=1,
        help="--mode coarse / ann: how many candidates the first stage hands to the exact re-rank; "
        "fewer is faster, more is closer to exact search."),
    per_file: bool = typer.Option(False, "--per-file", help="One result per file: its best page or passage."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_OVERRIDE_HELP),
    server: Optional[str] = typer.Option(
        None, "--server", envvar="METAEMBED_SERVER",
        help="Ask a running 'metaembed serve' at this URL (e.g. http://127.0.0.1:8000) instead of "
        "loading the model here: answers in milliseconds. Also read from $METAEMBED_SERVER.",
    ),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="METAEMBED_API_KEY", help="X-API-Key for --server (also $METAEMBED_API_KEY)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
) -> None:
    """Search an index with text and/or an image at a budget.

    Hits are pages, passages or whole files; their ids name the file and, where it was split, the
    page ('#page=3') and passage ('#passage=2', its character range in the payload).

    \b
    Examples:
      metaembed search ./docs.index "quarterly revenue table" --budget 4,8 -k 5
      metaembed search ./photos.index --image cat.jpg --json
      metaembed search --server http://127.0.0.1:8000 "quarterly revenue table"
    """
    if mode not in SEARCH_MODES:
        raise MetaEmbedError(f"--mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    if server is not None and query is None:
        index, query = "", index  # 'search --server URL QUERY': the one argument is the query
    from metaembed.budget import Budget

    parsed = Budget.parse(budget) if budget is not None else None  # read at the edge, checked by the retriever
    if query is None and image is None:
        raise MetaEmbedError("give query text, --image PATH, or both")
    if query is not None and not query.strip():
        raise MetaEmbedError("the query text is empty")
    if image is not None and not image.is_file():
        raise MetaEmbedError(f"image file not found: {image}")
    if server is not None:
        from metaembed.client import search_server

        def run_search(count: int) -> tuple[Any, list]:
            answer = search_server(
                server, query, image, k=count, budget=None if parsed is None else str(parsed), mode=mode,
                shortlist=shortlist, api_key=api_key,
            )
            return answer["budget"], answer["results"]
    else:
        item: dict[str, Any] = {}
        if query is not None:
            item["text"] = query
        if image is not None:
            item["image"] = image
        retriever = _open_retriever(index, model, exported_queries=True)

        def run_search(count: int) -> tuple[Any, list]:
            hits = retriever.search(item, k=count, budget=parsed, mode=mode, shortlist=shortlist)
            return parsed or retriever.default_budget, [hit.as_dict() for hit in hits]

    chosen, hits = run_search(k)
    if per_file:
        # several pages or passages of one file may lead: fetch more until k files are in hand
        fetch = k
        while len(best_per_file(hits)) < k and len(hits) == fetch:
            fetch *= 8
            chosen, hits = run_search(fetch)
        hits = best_per_file(hits)[:k]
    if as_json:
        _echo_json({"budget": str(chosen), "results": hits})
        return
    typer.echo(format_hits(hits, chosen))


SEARCH_MODES = ("exact", "coarse", "ann")


def best_per_file(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best of each file's hits (pages and passages of a file share its payload ``path``), re-ranked.

    Hits are the JSON form of search results (``{"rank", "id", "score", "payload"}``, best first),
    the same from a local index and from a server.
    """
    from metaembed.ingest import file_of

    best: dict[str, dict[str, Any]] = {}
    for hit in hits:
        best.setdefault(str(hit["payload"].get("path") or file_of(hit["id"])), hit)
    return [dict(hit, rank=rank) for rank, hit in enumerate(best.values(), start=1)]


def format_hits(hits: list[dict[str, Any]], budget: Any) -> str:
    """A readable table of hits (their JSON form): rank, score, id and the path or a text snippet."""
    lines = [f"budget {budget}: {len(hits)} results", f"{'rank':>4}  {'score':>8}  {'id':<32}  path / snippet"]
    for hit in hits:
        payload = hit["payload"] or {}
        # the most human field the payload has: a snippet, a title or name, else the file
        shown = next((payload[key] for key in ("text", "title", "name", "path") if payload.get(key)), "")
        shown = " ".join(str(shown).split())
        if len(shown) > 60:
            shown = shown[:57] + "..."
        lines.append(f"{hit['rank']:>4}  {hit['score']:>8.4f}  {hit['id']:<32}  {shown}")
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
    benchmark: Path = typer.Option(..., "--benchmark", "-b", help="Local benchmark folder (MMEB, ViDoRe v1/v2 or BEIR layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for results.json, results.md and results.png."),
    ladder: Optional[str] = typer.Option(None, "--ladder", help="Budgets to score, e.g. '1,1 4,8 16,64'. " + LADDER_HELP.split(". ", 1)[1]),
    kind: Optional[str] = typer.Option(None, "--kind", help="Benchmark kind when it cannot be detected from the folder."),
    datasets: Optional[list[str]] = typer.Option(None, "--dataset", help="Only this data set (repeatable)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Items per forward pass."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Evaluate a model at every budget of a ladder and write a table and a plot.

    Embeddings are cached under OUT/cache, so a rerun (or a new ladder) reuses them.

    \b
    Example:
      metaembed eval -b data/ViDoRe -o runs/vidore --ladder "1,1 4,8"
      metaembed eval -m ./my-model -b data/beir/scifact -o runs/scifact
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
# --- cache ----------------------------------------------------------------------------------
@cache_app.command("info")
def cache_info(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Each cache folder: where it is, what it holds, its size. Everything there is rebuilt when needed.

    \b
    Examples:
      metaembed cache info
      METAEMBED_CACHE=/scratch/metaembed metaembed cache info --json
    """
    from metaembed.cache import FOLDERS, cache_root, usage

    rows = usage()
    if as_json:
        _echo_json({"root": str(cache_root()), "folders": [
            {"name": row.name, "path": str(row.path), "bytes": row.bytes, "files": row.files,
             "holds": FOLDERS[row.name].holds} for row in rows]})
        return
    typer.echo(f"cache: {cache_root()} ($METAEMBED_CACHE)")
    for row in rows:
        typer.echo(f"  {row.name:<16} {_human_bytes(row.bytes):>10} {row.files:>6} files  {row.path}  "
                   f"({FOLDERS[row.name].holds})")
    typer.echo(f"  {'total':<16} {_human_bytes(sum(row.bytes for row in rows)):>10}")


@cache_app.command("clear", no_args_is_help=True)
def cache_clear(
    names: Optional[list[str]] = typer.Argument(None, help="Cache folders to delete (see 'metaembed cache info')."),
    everything: bool = typer.Option(False, "--all", help="Delete every cache folder."),
) -> None:
    """Delete cache folders; each is rebuilt when next needed (the quickstart's index, exports, graphs).

    \b
    Examples:
      metaembed cache clear ann-graphs
      metaembed cache clear --all
    """
    from metaembed.cache import FOLDERS, clear

    if bool(names) == everything:
        raise MetaEmbedError("name the cache folders to clear, or give --all (not both)")
    removed, left = clear(list(FOLDERS) if everything else list(names or []))
    typer.echo(f"cleared {len(removed)} folder(s)" + "".join(f"\n  {path}" for path in removed))
    for path in left:
        typer.echo(f"left {path}: an environment variable puts it outside the cache root; delete it yourself")


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
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_OVERRIDE_HELP),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Serve a sharded collection (made by 'index build --ray') with Ray Serve on the cluster "
        "at ADDRESS ('auto', 'ray://host:10001', or 'local'); same endpoints and API key.",
    ),
) -> None:
    """Serve an index over HTTP (OpenAPI docs at /docs).

    Endpoints: POST /search, POST /search/batch, POST /items, PUT/GET/DELETE /items/{id},
    GET /health, GET /info. The server serves what other processes commit meanwhile.

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

    from metaembed.retriever import Retriever

    # the model is loaded now, so a missing one fails here (one line), not at the first request
    loaded = Retriever.open(index, model).model
    serve(index, host=host, port=port, api_key=api_key, model=loaded)


# --- quickstart ------------------------------------------------------------------------------
@app.command()
def quickstart(
    cache: Path = typer.Option(
        cache_folder("quickstart"),
        "--cache", help="Folder for the held-out collection, the index, the results table and plot.",
    ),
    retrain: bool = typer.Option(
        False, "--retrain",
        help="First run the built-in model's full recipe (data from Debian's python3.11-doc and python-django-doc, "
             "then MMR training) and use that model.",
    ),
    max_pages: Optional[int] = typer.Option(
        None, "--max-pages", min=1, help="Evaluate on this many of the 500 held-out pages (and their queries)."
    ),
) -> None:
    """Search held-out manuals with the built-in model at every budget, beside plain MiniLM.

    No download and no training: the shipped model (MiniLM-L6 + Meta Tokens) and MiniLM as
    sentence-transformers ships it (one mean-pooled vector per page) are evaluated on 500 pages of
    ten Python libraries' manuals the model never saw. Prints nDCG@10 / Recall@1 of both per
    budget, query latency and index memory, writes results.json / results.png, and leaves an
    index to search.

    \b
    Example:
      metaembed quickstart --cache ./.metaembed
    """
    from metaembed.quickstart import run_quickstart

    run_quickstart(cache, retrain=retrain, max_pages=max_pages, echo=typer.echo)


# --- entry point -----------------------------------------------------------------------------
def _quiet_libraries() -> None:
    # Weight-loading bars and load reports from transformers would bury the CLI's own output;
    # the CLI's progress bars (indexing, training) are its own tqdm bars and stay. Libraries'
    # FutureWarnings speak to developers of this package, not to its users.
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line ``error: ...`` and return 2 (no traceback)."""
    _quiet_libraries()
    try:
        app(args=argv, prog_name="metaembed", standalone_mode=False)
    except typer.Exit as done:
        return int(done.exit_code or 0)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        return 130
    except typer.TyperException as error:  # typer's (vendored) click usage errors: bad options, values, commands
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
            typer.echo(context.get_help())
            return 2
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        typer.echo(f"error: {_one_line(error.format_message())}{hint}", err=True)
        return 2
    except (MetaEmbedError, OSError) as error:
        typer.echo(f"error: {_one_line(error)}", err=True)
        return 2
    return 0


#: Commands that only read and start nothing that outlives them. When one of them has finished,
#: the ``metaembed`` script ends the process without the interpreter's teardown (torch's alone
#: takes about 0.5 s of a 2 s cold search); its output is flushed first.
_READ_ONLY_COMMANDS = (("search",), ("index", "info"))


def run() -> None:
    """The ``metaembed`` console script: :func:`main` on ``sys.argv``, then exit with its status."""
    argv = sys.argv[1:]
    code = main(argv)
    if any(tuple(argv[:len(command)]) == command for command in _READ_ONLY_COMMANDS):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
