"""Budgeted MaxSim search: metaembed against its peers, in one run, on the same inputs.

For each corpus size and each budget of the ladder this measures

* ``ours exact``: ``MultiVectorIndex.search`` on float16 storage (the default), top-10;
* ``ours int8``: the same on int8 storage (a fp32 scale per 64 values);
* ``ours coarse``: coarse-to-fine, (1,1) over everything, 1,000 shortlist re-ranked;
* ``ours ann``: coarse-to-fine with a FAISS HNSW first stage (D = 128 only);
* ``ours maxsim``: :func:`metaembed.scoring.maxsim` on the fp32 blocks the peers get;
* ``einsum``: the plain reference ``einsum("qid,cjd->qcij").amax(-1).sum(-1)``;
* ``colpali``: colpali-engine 0.3.18 ``score_multi_vector``;
* ``pylate``: PyLate 1.6.0 ``colbert_scores`` (its torch path, the only one on CPU);
* ``qdrant-edge``: qdrant-edge-py 0.9.0, native MaxSim, one named multivector per r_c.

All scorers see the same values: the corpus as stored in float16, upcast to fp32
candidate-major blocks for the peers (the upcast is not timed; peers get it
free). Peers score the full matrix, then ``torch.topk`` picks 10 (timed). Every
method's top-10 is compared with a float32 exact reference computed from the
original fp32 data. Latency is the median over repetitions for one batch of 16
queries; slow methods get fewer repetitions (reported), never silently none.

    python -m benchmarks.scoring            # full run: N=100k at D=128, N=20k at D=2048 (long)
    python -m benchmarks.scoring --quick    # seconds: a smoke run on tiny sizes
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmarks import peers
from benchmarks.data import SyntheticCorpus
from benchmarks.measure import K, Blocks, Method, blockwise, einsum_reference, index_runner, measure_gemm_peak, overlap, round_robin
from benchmarks.report import check_targets, markdown_report
from metaembed import native
from metaembed.budget import DEFAULT_LADDER, Budget
from metaembed.index import MultiVectorIndex
from metaembed.index.codecs import embedding_bytes
from metaembed.scoring import maxsim, maxsim_flops

NUM_QUERIES = 16
QUERY_VECTORS = 16
SHORTLIST = 1000


@dataclass(frozen=True)
class Size:
    name: str
    num_candidates: int
    dim: int
    qdrant_candidates: int  # qdrant needs its vectors as Python lists; capped where that would not fit


FULL_SIZES = (Size("N=100k D=128", 100_000, 128, 100_000), Size("N=20k D=2048", 20_000, 2048, 2_000))
QUICK_SIZES = (Size("N=400 D=64", 400, 64, 400), Size("N=200 D=128", 200, 128, 100))


def build_indexes(corpus: SyntheticCorpus, folder: Path, queries: torch.Tensor, ladder) -> dict:
    """Stream the corpus once: fill a float16 and an int8 index, and compute the fp32 exact top-10 at every budget."""
    indexes = {dtype: MultiVectorIndex.create(folder / dtype, dim=corpus.dim, num_vectors=64, dtype=dtype)
               for dtype in ("float16", "int8")}
    reference: dict[Budget, tuple[torch.Tensor, list[list[str]]]] = {}
    seconds = {dtype: 0.0 for dtype in indexes}
    for first, block in corpus.blocks():
        ids = [f"c{first + i}" for i in range(block.shape[0])]
        for dtype, index in indexes.items():
            start = time.perf_counter()
            index.add(ids, block)
            seconds[dtype] += time.perf_counter() - start
        for budget in ladder:
            scores = maxsim(queries, block, budget)  # fp32 original values: the reference
            top, where = scores.topk(min(K, scores.shape[1]), dim=1)
            names = [[ids[i] for i in row] for row in where.tolist()]
            if budget in reference:
                old_scores, old_names = reference[budget]
                top = torch.cat([old_scores, top], dim=1)
                names = [a + b for a, b in zip(old_names, names)]
            keep = top.topk(min(K, top.shape[1]), dim=1).indices
            reference[budget] = (top.gather(1, keep), [[row[i] for i in picks] for row, picks in zip(names, keep.tolist())])
    for dtype, index in indexes.items():
        start = time.perf_counter()
        index.save()
        seconds[dtype] += time.perf_counter() - start
    return {"indexes": indexes, "reference": {b: names for b, (_, names) in reference.items()}, "build_s": seconds}


def run_size(size: Size, args: argparse.Namespace, work: Path, peak: float, log: Callable[[str], None]) -> list[dict]:
    corpus = SyntheticCorpus(size.num_candidates, size.dim)
    queries, _ = corpus.queries(NUM_QUERIES, QUERY_VECTORS)
    ladder = DEFAULT_LADDER
    built = build_indexes(corpus, work / size.name.replace(" ", "_").replace("=", ""), queries, ladder)
    fp16, int8 = built["indexes"]["float16"], built["indexes"]["int8"]
    log(f"[{size.name}] built float16 + int8 indexes in {built['build_s']}")
    found = peers.available()
    qdrant = None
    if found["qdrant_edge"] and not args.no_qdrant:
        qdrant = build_qdrant(size, fp16, ladder, work, log)
    rows: list[dict] = []
    for budget in ladder:
        methods = budget_methods(size, corpus, budget, fp16, int8, qdrant, queries, built["reference"], args)
        round_robin(methods, args.reps)
        for method in methods:
            rows.append(result_row(size, budget, method, peak, args.reps))
            row = rows[-1]
            log(f"[{size.name}] {str(budget):>5} {method.name:<12} {row['latency_s'] * 1e3:10.1f} ms "
                f"(min {row['min_latency_s'] * 1e3:.1f})  {row['gflops_per_s']:7.1f} GFLOP/s  "
                f"overlap {row['top10_overlap_vs_fp32_exact']:.3f}  reps {row['reps']}")
    if qdrant is not None:
        qdrant[0].close()
    for index in (fp16, int8):
        index.close()
    shutil.rmtree(work / size.name.replace(" ", "_").replace("=", ""), ignore_errors=True)
    return rows


def result_row(size: Size, budget: Budget, method: Method, peak: float, max_reps: int) -> dict:
    latency = statistics.median(method.times)
    row = {
        "size": size.name, "num_candidates": method.num_candidates, "dim": size.dim, "method": method.name,
        "budget": str(budget), "latency_s": latency, "min_latency_s": min(method.times),
        "queries_per_s": NUM_QUERIES / latency, "flops": method.flops, "gflops_per_s": method.flops / latency / 1e9,
        "pct_of_gemm_peak": 100 * method.flops / latency / 1e9 / peak, "index_bytes": method.index_bytes,
        "reps": len(method.times), "reps_capped": len(method.times) < max_reps,
        "top10_overlap_vs_fp32_exact": overlap(method.top, method.reference), "note": method.note,
    }
    if method.num_candidates != size.num_candidates:
        row["latency_s_at_full_n"] = latency * size.num_candidates / method.num_candidates
    return row


def budget_methods(size, corpus, budget, fp16, int8, qdrant, queries, reference, args) -> list[Method]:
    """Every scorer to compare at ``budget``, on the same queries and (stored) candidate values."""
    n, dim = size.num_candidates, size.dim
    exact_flops = maxsim_flops(budget, dim, n, NUM_QUERIES)
    ref = reference[budget]
    cap, peer_cap = args.time_cap, args.peer_time_cap
    methods = [
        Method("ours exact", index_runner(fp16, queries, budget=budget), exact_flops, fp16.memory_bytes(budget),
               "float16 storage, fp32 compute, top-10 included", cap, n, ref),
        Method("ours int8", index_runner(int8, queries, budget=budget), exact_flops, int8.memory_bytes(budget),
               "int8 storage + fp32 scale per 64 values", cap, n, ref),
    ]
    if budget != Budget(1, 1):
        coarse_flops = maxsim_flops((1, 1), dim, n, NUM_QUERIES) + maxsim_flops(budget, dim, min(SHORTLIST, n), NUM_QUERIES)
        methods.append(Method("ours coarse", index_runner(fp16, queries, budget=budget, mode="coarse", shortlist=SHORTLIST),
                              coarse_flops, fp16.memory_bytes(budget), f"(1,1) first stage, shortlist {SHORTLIST}",
                              cap, n, ref))
        if args.ann and dim <= 128:
            start = time.perf_counter()
            fp16.search(queries[:1], k=1, budget=budget, mode="ann", shortlist=SHORTLIST)  # builds the graph once
            build = time.perf_counter() - start
            methods.append(Method("ours ann", index_runner(fp16, queries, budget=budget, mode="ann", shortlist=SHORTLIST),
                                  maxsim_flops(budget, dim, SHORTLIST, NUM_QUERIES), fp16.memory_bytes(budget),
                                  f"FAISS HNSW first stage over first vectors (first call {build:.1f} s incl. build), "
                                  f"shortlist {SHORTLIST}", cap, n, ref))
    # Our kernel and every peer get the same fp32 candidate-major blocks.
    block_rows = max(256, min(8192, (512 << 20) // (4 * NUM_QUERIES * QUERY_VECTORS * budget.r_c + 4 * budget.r_c * dim)))
    blocks = Blocks(fp16, budget.r_c, block_rows, args.cache_bytes)
    q = queries[:, : budget.r_q].contiguous()
    peer_bytes = embedding_bytes(budget.r_c, dim, "float32", n)
    note = f"fp32 input in blocks of {block_rows} candidates (block read not timed)"
    methods.append(Method("ours maxsim", blockwise(maxsim, blocks, q), exact_flops, peer_bytes, note, cap, n, ref))
    methods.append(Method("einsum", blockwise(einsum_reference, blocks, q), exact_flops, peer_bytes, note, peer_cap, n, ref))
    found = peers.available()
    if found["colpali"]:
        methods.append(Method("colpali", blockwise(peers.colpali_score_multi_vector, blocks, q), exact_flops,
                              peer_bytes, note, peer_cap, n, ref))
    if found["pylate"]:
        methods.append(Method("pylate", blockwise(peers.pylate_colbert_scores, blocks, q), exact_flops, peer_bytes,
                              note + "; its torch path does not chunk, so each block is one einsum", peer_cap, n, ref))
    if qdrant is not None:
        engine, subset, ingest = qdrant
        sub_ref = ref if subset == n else subset_reference(corpus, queries, budget, subset)

        def run() -> tuple[float, list[list[str]]]:
            start = time.perf_counter()
            found = engine.search(queries.numpy(), budget.r_q, budget.r_c, K)
            return time.perf_counter() - start, [[f"c{i}" for i, _ in row] for row in found]

        stored = embedding_bytes(sum(engine.candidate_budgets), dim, "float32", subset)
        where = "all candidates" if subset == n else (
            f"the first {subset} of {n} candidates (vectors go in as Python lists; latency_s_at_full_n scales it)")
        methods.append(Method("qdrant-edge", run, maxsim_flops(budget, dim, subset, NUM_QUERIES), stored,
                              f"plain index, one named multivector per r_c, on {where}; ingest {ingest:.0f} s",
                              peer_cap, subset, sub_ref))
    return methods


def subset_reference(corpus: SyntheticCorpus, queries: torch.Tensor, budget: Budget, n: int) -> list[list[str]]:
    """fp32 exact top-10 among the first ``n`` candidates (for an engine measured on a subset)."""
    blocks = []
    for first, block in corpus.blocks():
        if first >= n:
            break
        blocks.append(block[: n - first])
    scores = maxsim(queries, torch.cat(blocks), budget)
    return [[f"c{i}" for i in row] for row in scores.topk(min(K, n), dim=1).indices.tolist()]


def build_qdrant(size: Size, fp16: MultiVectorIndex, ladder, work: Path, log) -> tuple:
    """qdrant-edge holding the first ``size.qdrant_candidates`` candidates, same stored values as the peers get."""
    n = size.qdrant_candidates
    folder = Path(tempfile.mkdtemp(dir=work, prefix="qdrant-"))
    engine = peers.QdrantEdgeMaxSim(str(folder), size.dim, sorted({b.r_c for b in ladder}))
    start, done = time.perf_counter(), 0
    for ids, block in fp16.export(r_c=64, batch=1024):
        take = min(len(ids), n - done)
        if take <= 0:
            break
        engine.add(done, block[:take].numpy())
        done += take
    ingest = time.perf_counter() - start
    log(f"[{size.name}] qdrant-edge ingested {done} points in {ingest:.1f} s")
    return engine, done, ingest


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for scoring.json / .md")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder for the indexes")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per measurement (at most)")
    parser.add_argument("--time-cap", type=float, default=20.0, help="seconds per measurement of our methods")
    parser.add_argument("--peer-time-cap", type=float, default=30.0, help="seconds per measurement of a peer")
    parser.add_argument("--cache-bytes", type=int, default=1_000_000_000,
                        help="keep the peers' fp32 blocks in memory up to this many bytes, else re-read them per call")
    parser.add_argument("--no-ann", dest="ann", action="store_false", help="skip the FAISS first stage")
    parser.add_argument("--no-qdrant", action="store_true", help="skip qdrant-edge")
    parser.add_argument("--sizes", default=None, help="comma-separated subset of size names to run, e.g. 'N=100k D=128'")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.sizes:
        wanted = {s.strip() for s in args.sizes.split(",")}
        sizes = tuple(s for s in sizes if s.name in wanted)
    if args.quick:
        # Small cache: the small budgets use cached blocks, the large ones the streaming path.
        args.reps, args.time_cap, args.peer_time_cap, args.cache_bytes = 1, 5.0, 5.0, 1 << 20
    work = Path(tempfile.mkdtemp(prefix="metaembed-bench-", dir=args.work_dir))
    log = lambda line: print(line, flush=True)  # noqa: E731
    # The machine is shared: the peak is measured before each size and at the end,
    # and the best of these is the roofline (a lower one would flatter our % of peak).
    peaks = [measure_gemm_peak()]
    log(f"fp32 GEMM peak (2048^3, {torch.get_num_threads()} threads): {peaks[0]:.1f} GFLOP/s")
    rows: list[dict] = []
    try:
        for size in sizes:
            rows.extend(run_size(size, args, work, max(peaks), log))
            peaks.append(measure_gemm_peak())
            report = write_report(rows, peaks, args)  # after every size: a long run keeps what it measured
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown_report(report))
    return report


def cpu_description() -> str:
    """CPU model, family and vector extensions, from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {vector}"


def write_report(rows: list[dict], peaks: list[float], args: argparse.Namespace) -> dict:
    """Write scoring.json and scoring.md for ``rows``, every % of peak against the best measured peak."""
    peak = max(peaks)
    for row in rows:
        row["pct_of_gemm_peak"] = 100 * row["gflops_per_s"] / peak
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu": cpu_description(),
                    "our_kernel": f"fused C ({native.isa()})" if native.available() else "BLAS (torch.mm + max)",
                    "gemm_peak_gflops": peak, "gemm_peak_gflops_measurements": peaks,
                    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20},
        "setup": {"num_queries": NUM_QUERIES, "query_vectors": QUERY_VECTORS, "candidate_vectors": 64, "k": K,
                  "shortlist": SHORTLIST, "quick": args.quick, "peers": peers.available()},
        "results": rows,
    }
    report["targets"] = check_targets(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scoring.json").write_text(json.dumps(report, indent=1))
    (args.out / "scoring.md").write_text(markdown_report(report))
    return report


if __name__ == "__main__":
    main()
