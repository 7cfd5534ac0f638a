"""Sharded search and distributed encoding against the number of shards and replicas, beside one process.

Search: N random unit candidates (``--num-vectors`` x ``--dim``, float16 and int8) in one
:class:`~metaembed.index.MultiVectorIndex` (the peer), in a :class:`~metaembed.distributed.ShardedIndex`
served in-process, and in one served by Ray actors (one per shard), at each budget, exact and
coarse-to-fine. Latency is one query per call (median and best of the repetitions, interleaved
so load from other processes hits every method alike); throughput is a batch of ``--batch``
queries per call. Encoding: ``build_index`` (one process) beside ``build_collection`` on Ray
with 1..``--max-replicas`` model replicas, on a tiny random model (the cost of the machinery,
not of a real model). Prints tables and writes ``distributed.json`` / ``distributed.md``.

    python -m benchmarks.distributed --out benchmarks/results
    python -m benchmarks.distributed --quick --no-ray        # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from metaembed.distributed import ShardedIndex
from metaembed.index import MultiVectorIndex

BUDGETS = ("1,1", "4,8", "8,16")


def _unit(n: int, r: int, d: int, seed: int) -> torch.Tensor:
    out = torch.empty(n, r, d, dtype=torch.float16)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, 8192):  # in blocks: an fp32 copy of the whole set would double the memory
        block = torch.randn(min(8192, n - start), r, d, generator=generator)
        out[start : start + len(block)] = torch.nn.functional.normalize(block, dim=-1).half()
    return out


def _timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _round_robin(methods: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    for run in methods.values():  # warm-up: memory maps paged in, actors' first call done
        run()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(reps):
        for name, run in methods.items():
            times[name].append(_timed(run))
    return times


def search_rows(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    ids = [f"doc-{i}" for i in range(args.num_candidates)]
    vectors = _unit(args.num_candidates, args.num_vectors, args.dim, seed=0)
    one = _unit(1, args.num_vectors, args.dim, seed=1).float()
    batch = _unit(args.batch, args.num_vectors, args.dim, seed=2).float()
    rows = []
    for dtype in args.dtypes:
        searchers: dict[str, Any] = {}
        single = MultiVectorIndex.create(root / f"single-{dtype}", dim=args.dim, num_vectors=args.num_vectors, dtype=dtype)
        single.add(ids, vectors)
        single.compact()
        searchers["one index"] = single
        for shards in args.shards:
            path = root / f"sharded-{dtype}-{shards}"
            with ShardedIndex.create(path, num_shards=shards, dim=args.dim, num_vectors=args.num_vectors, dtype=dtype) as c:
                c.add(ids, vectors)
                c.compact()
            searchers[f"{shards} shards, in-process"] = ShardedIndex.open(path)
            if args.ray:
                searchers[f"{shards} shards, Ray actors"] = ShardedIndex.open(path, backend="ray", num_cpus=0)
        for budget in BUDGETS:
            for mode in ("exact", "coarse"):
                if mode == "coarse" and budget == "1,1":
                    continue  # (1,1) is the first stage itself
                options = {"budget": budget, "mode": mode, "shortlist": args.shortlist, "k": 10}
                latency = _round_robin({n: (lambda s=s: s.search(one, **options)) for n, s in searchers.items()}, args.reps)
                throughput = _round_robin({n: (lambda s=s: s.search(batch, **options)) for n, s in searchers.items()},
                                          max(1, args.reps // 4))
                for name in searchers:
                    rows.append({
                        "dtype": dtype, "budget": budget, "mode": mode, "method": name,
                        "latency_ms_median": 1e3 * statistics.median(latency[name]),
                        "latency_ms_best": 1e3 * min(latency[name]),
                        "queries_per_s": args.batch / statistics.median(throughput[name]),
                    })
                    print(_line(rows[-1]), flush=True)
        for searcher in searchers.values():
            searcher.close(terminate=True) if isinstance(searcher, ShardedIndex) else searcher.close()
    return rows


def encode_rows(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    from metaembed.distributed.build import build_collection
    from metaembed.model.testing import tiny_model
    from metaembed.retriever import build_index

    model = root / "model"
    tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8).save_pretrained(model)
    source = root / "items.jsonl"
    source.write_text("".join(json.dumps({"id": f"t{i}", "text": f"item {i} " + "word " * (i % 40)}) + "\n"
                              for i in range(args.encode_items)))
    rows = []
    seconds = _timed(lambda: build_index(model, source, root / "single.index", progress=False, batch_size=16))
    rows.append({"method": "build_index, one process", "replicas": 1, "seconds": seconds,
                 "items_per_s": args.encode_items / seconds})
    print(rows[-1], flush=True)
    for replicas in range(1, args.max_replicas + 1):
        out = root / f"collection-{replicas}"
        holder: list = []
        seconds = _timed(lambda: holder.append(build_collection(
            model, source, out, num_shards=2, replicas=replicas, batch_size=16, progress=False,
            shard_options={"num_cpus": 0})))
        holder[0].close(terminate=True)
        rows.append({"method": "build_collection, Ray Data", "replicas": replicas, "seconds": seconds,
                     "items_per_s": args.encode_items / seconds})
        print(rows[-1], flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    return (f"{row['dtype']:>8} {row['budget']:>6} {row['mode']:>6}  {row['method']:<26} "
            f"{row['latency_ms_median']:8.2f} ms (best {row['latency_ms_best']:7.2f})  {row['queries_per_s']:8.1f} q/s")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Distributed benchmark ({report['machine']})", "",
             f"N={report['num_candidates']:,} candidates x {report['num_vectors']} vectors x D={report['dim']}, "
             f"shortlist {report['shortlist']}, latency = one query per call, throughput = {report['batch']} queries "
             "per call.", "",
             "| dtype | budget | mode | method | latency median (ms) | best (ms) | queries/s |", "|---|---|---|---|---|---|---|"]
    for r in report["search"]:
        lines.append(f"| {r['dtype']} | {r['budget']} | {r['mode']} | {r['method']} | {r['latency_ms_median']:.2f} | "
                     f"{r['latency_ms_best']:.2f} | {r['queries_per_s']:.1f} |")
    if report["encode"]:
        lines += ["", f"Encoding {report['encode_items']} JSONL items with a tiny random model:", "",
                  "| method | replicas | seconds | items/s |", "|---|---|---|---|"]
        for r in report["encode"]:
            lines.append(f"| {r['method']} | {r['replicas']} | {r['seconds']:.1f} | {r['items_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-candidates", type=int, default=50_000)
    parser.add_argument("--num-vectors", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "int8"])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--shortlist", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--encode-items", type=int, default=256)
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="Only the in-process methods.")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: checks the script runs.")
    parser.add_argument("--out", type=Path, default=None, help="Folder for distributed.json and distributed.md.")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_candidates, args.reps, args.shards, args.dtypes, args.encode_items = 2000, 2, [1, 2], ["float16"], 16
    started = False
    if args.ray:
        from metaembed.distributed.build import connect

        started = connect("local", num_cpus=os.cpu_count(), object_store_memory=512 * 1024**2,
                          include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="metaembed-bench-distributed-") as scratch:
            root = Path(scratch)
            search = search_rows(args, root)
            encode = encode_rows(args, root) if args.ray else []
    finally:
        if started:
            import ray

            ray.shutdown()
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "num_candidates": args.num_candidates, "num_vectors": args.num_vectors, "dim": args.dim,
              "shortlist": args.shortlist, "batch": args.batch, "encode_items": args.encode_items,
              "search": search, "encode": encode}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "distributed.json").write_text(json.dumps(report, indent=2))
        (args.out / "distributed.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
