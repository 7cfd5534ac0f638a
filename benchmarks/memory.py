"""How much of an index each search mode needs in memory, on a trained model's embeddings.

Index memory is what late-interaction users run out of. A MetaEmbed index is memory-mapped and
position-major: a candidate's ``j``-th vectors of a segment are one contiguous slab, so a search
that reads only the first vector of every candidate (the ``coarse`` and ``ann`` first stages)
and then the shortlisted rows needs only that slab and those rows in memory, not the index. This
measures what each mode makes the operating system keep: for every budget and mode a fresh
process drops the index's files from the page cache (``posix_fadvise(DONTNEED)``, checked with
``mincore``), searches every query in batches, and counts the files' pages then resident
(``mincore``, kernel read-ahead included: what a user's machine holds), beside the top-10 overlap
with exact search at the same budget, and beside the index's own account of it
(:meth:`~metaembed.index.MultiVectorIndex.memory_bytes`: the first ``r_c`` vectors of every
candidate). ``ann`` also holds its HNSW graph in process memory (reported as the kept graph
file's size; loaded from the cache, so it reads no vectors). A first stage does not shrink the
working set over a stream of queries: the re-rank's rows, and the 4,096-row chunks that are
checksum-verified the first time a process reads any of their rows, soon cover the slabs below
``r_c``; what the budget's ``r_c`` saves, every mode saves.

    python -m benchmarks.memory --index IDX --queries q.jsonl --out benchmarks/results --name memory-{cpu}

Linux only (``mincore``, ``posix_fadvise``); no root needed (only clean, unmapped pages are dropped).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.coarse_to_fine import BATCH, read_queries
from benchmarks.measure import K, overlap, write_results
from benchmarks.scoring import cpu_class, cpu_description, load_average
from metaembed import native
from metaembed.budget import Budget

MODES = ("exact", "coarse", "ann")
SHORTLIST = 200
_PAGE = mmap.PAGESIZE
_REPOSITORY = Path(__file__).resolve().parents[1]  # where ``python -m benchmarks.memory`` runs the children


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache now (``mincore`` over a fresh read-only mapping)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    with open(path, "rb") as handle:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, handle.fileno(), 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vector = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(address), size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return sum(byte & 1 for byte in bytes(vector)) * _PAGE
        finally:
            libc.munmap(ctypes.c_void_p(address), size)


def index_files(index: Path) -> dict[str, list[Path]]:
    """The index folder's files by kind: ``vectors`` (segments), ``catalog`` (SQLite, with its journal) and ``other``."""
    kinds: dict[str, list[Path]] = {"vectors": [], "catalog": [], "other": []}
    for path in sorted(index.iterdir()):
        if path.is_file():
            kind = "vectors" if path.suffix == ".vec" else "catalog" if path.name.startswith("catalog.sqlite") else "other"
            kinds[kind].append(path)
    return kinds


def drop_from_page_cache(paths: Sequence[Path]) -> None:
    """Ask the kernel to drop the clean, unmapped pages of ``paths`` (a tmpfs keeps them: check with :func:`resident_bytes`)."""
    for path in paths:
        with open(path, "rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def measure_one(index: Path, embeddings: torch.Tensor, budget: Budget, mode: str, shortlist: int) -> dict[str, Any]:
    """In this (fresh) process: drop the index from the page cache, search every query, count what became resident."""
    from metaembed.index import MultiVectorIndex

    kinds = index_files(index)
    everything = [path for paths in kinds.values() for path in paths]
    if mode == "ann":  # the graph kept in the cache (built here if it is not), so the measured process reads no vectors for it
        with MultiVectorIndex.open(index) as opened:
            opened.search(embeddings[:1], k=K, budget=budget, mode=mode, shortlist=shortlist)
    with MultiVectorIndex.open(index) as opened:
        drop_from_page_cache(everything)
        before = {kind: sum(resident_bytes(path) for path in paths) for kind, paths in kinds.items()}
        found = []
        for start in range(0, embeddings.shape[0], BATCH):
            hits = opened.search(embeddings[start : start + BATCH], k=K, budget=budget,
                                 **({} if mode == "exact" else {"mode": mode, "shortlist": shortlist}))
            found += [[hit.id for hit in row] for row in hits]
        after = {kind: sum(resident_bytes(path) for path in paths) for kind, paths in kinds.items()}
        graph = None
        if mode == "ann":
            stage = opened._first_stages["ann"]
            path = stage._cache_file()
            graph = path.stat().st_size if path is not None and path.is_file() else None
        predicted = opened.memory_bytes(budget)
    return {"budget": str(budget), "mode": mode, "shortlist": None if mode == "exact" else shortlist,
            "resident_before": before, "resident": after, "predicted": predicted, "graph_bytes": graph, "ids": found}


def measure(index: Path, embeddings: torch.Tensor, budgets: Sequence[Budget], shortlist: int) -> list[dict[str, Any]]:
    """One fresh process per (budget, mode), each measured by :func:`measure_one`; overlap with exact's ids."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        queries = Path(work) / "queries.pt"
        torch.save(embeddings, queries)
        for budget in budgets:
            exact: list[list[str]] | None = None
            for mode in MODES:
                if budget == Budget(1, 1) and mode == "coarse":
                    continue  # coarse at (1,1) is exact search
                out = Path(work) / "row.json"
                subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", str(index), str(queries),
                                str(budget), mode, str(shortlist), str(out)], check=True, cwd=_REPOSITORY)
                row = json.loads(out.read_text())
                ids = row.pop("ids")
                exact = ids if mode == "exact" else exact
                row["overlap"] = overlap(ids, exact) if exact is not None else None
                rows.append(row)
                print(_line(row, _vector_bytes(index)), flush=True)
    return rows


def _vector_bytes(index: Path) -> int:
    return sum(path.stat().st_size for path in index_files(index)["vectors"])


def _line(row: dict[str, Any], vectors: int) -> str:
    resident = row["resident"]["vectors"]
    graph = "" if row["graph_bytes"] is None else f", graph {row['graph_bytes'] / 2**20:,.0f} MiB"
    return (f"{row['budget']:>5} {row['mode']:>6}: vectors resident {resident / 2**20:8,.1f} MiB "
            f"({resident / vectors:6.1%}), catalog {row['resident']['catalog'] / 2**20:6,.1f} MiB{graph}, "
            f"overlap {row['overlap']:.3f}")


def markdown(report: dict[str, Any]) -> str:
    vectors = report["vector_bytes"]
    lines = [
        "# Index memory a search needs, per mode", "",
        f"{report['cpu']}; {report['torch_threads']} threads. Index {report['index']} ({report['size']:,} candidates, "
        f"{report['dtype']}, vectors {vectors / 2**20:,.1f} MiB in {report['segments']} segment files, catalog "
        f"{report['catalog_bytes'] / 2**20:,.1f} MiB); {report['num_queries']} queries from {report['queries']}, "
        f"searched in batches of {BATCH}, top-{K}. Each row: a fresh process drops the index files from the page "
        "cache, searches every query, then counts the files' resident pages (mincore; the kernel's read-ahead "
        "included). `memory_bytes(budget)` is the index's own account: the first r_c stored vectors of every candidate. "
        "coarse / ann re-rank a shortlist of "
        f"{report['shortlist']}; ann's HNSW graph is process memory beside the files (the kept graph file's size).", "",
        f"Command: `{report['command']}`", "",
        "| budget | mode | vectors resident | of the vectors | `memory_bytes(budget)` | resident / predicted | catalog resident | graph | top-10 overlap with exact |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        resident = row["resident"]["vectors"]
        graph = "—" if row["graph_bytes"] is None else f"{row['graph_bytes'] / 2**20:,.0f} MiB"
        lines.append(f"| {row['budget']} | {row['mode']} | {resident / 2**20:,.1f} MiB | {resident / vectors:.1%} | "
                     f"{row['predicted'] / 2**20:,.1f} MiB | {resident / row['predicted']:.2f} | "
                     f"{row['resident']['catalog'] / 2**20:,.1f} MiB | {graph} | {row['overlap']:.3f} |")
    worst_before = max(row["resident_before"]["vectors"] for row in report["rows"])
    lines += ["", f"Largest vector bytes still resident right after a drop: {worst_before / 2**20:,.1f} MiB "
              "(the drop worked when this is near 0)."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=False, help="an index built by a trained model")
    parser.add_argument("--queries", type=Path, help="JSONL of queries")
    parser.add_argument("--field", default="text", help="the JSONL field holding the query text")
    parser.add_argument("--max-queries", type=int, default=512, help="queries used, evenly spread over the file")
    parser.add_argument("--shortlist", type=int, default=SHORTLIST, help="coarse / ann shortlist size")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for NAME.json / .md")
    parser.add_argument("--name", default="memory-{cpu}", help="output stem; {cpu} becomes the CPU class and kernel ISA")
    parser.add_argument("--child", nargs=6, metavar=("INDEX", "QUERIES", "BUDGET", "MODE", "SHORTLIST", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        index, queries, budget, mode, shortlist, out = args.child
        row = measure_one(Path(index), torch.load(queries), Budget.parse(budget), mode, int(shortlist))
        Path(out).write_text(json.dumps(row))
        return row
    if not sys.platform.startswith("linux"):
        raise SystemExit("benchmarks.memory needs Linux (mincore, posix_fadvise)")
    if args.index is None or args.queries is None:
        parser.error("--index and --queries are required")
    from metaembed.retriever import Retriever

    retriever = Retriever.open(args.index)
    texts = read_queries(args.queries, args.field, args.max_queries)
    embeddings = retriever.model.encode_queries(list(texts), show_progress=False)
    kinds = index_files(args.index)
    report: dict[str, Any] = {
        "cpu": cpu_description(), "load": load_average(), "torch_threads": torch.get_num_threads(),
        "index": str(args.index), "size": len(retriever), "dtype": retriever.index.dtype,
        "segments": len(kinds["vectors"]), "vector_bytes": _vector_bytes(args.index),
        "catalog_bytes": sum(path.stat().st_size for path in kinds["catalog"]),
        "queries": str(args.queries), "num_queries": len(texts), "shortlist": args.shortlist,
        "command": "python -m benchmarks.memory " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    report["rows"] = measure(args.index, embeddings, list(retriever.ladder), args.shortlist)
    name = args.name.replace("{cpu}", f"{cpu_class()}-{native.isa() or 'blas'}")
    write_results(args.out, name, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
