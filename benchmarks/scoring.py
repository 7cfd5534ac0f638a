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
* ``maxsim-cpu``: mixedbread's maxsim-cpu 0.1.0 (Rust + libxsmm, AVX2), one call per query;
* index-based engines (benchmarks/engines.py), with their build time and bytes on disk:
  ``qdrant-edge`` (native MaxSim), ``qdrant-client local`` (its local mode), ``lancedb``
  (flat multivector scan), all exact and measured on a prefix of the corpus where a full
  build would not fit the run (``latency_s_at_full_n`` scales them linearly: they scan
  everything); ``xtr-warp`` (xtr-warp-rs: a WARP index over the same vectors, its own
  approximate search at k = 10, full corpus, at the budgets of ``--xtr-budgets``; needs
  ``--xtr-python``, see engines.py).

All scorers see the same values: the corpus as stored in float16, upcast to fp32
candidate-major blocks for the peers (the upcast is not timed; peers get it
free). Peers score the full matrix, then ``torch.topk`` picks 10 (timed). Every
method's top-10 is compared with a float32 exact reference computed from the
original fp32 data. Latency is the median over repetitions for one batch of 16
queries; slow methods get fewer repetitions (reported), never silently none.

    python -m benchmarks.scoring            # full run: N=100k at D=128, N=20k at D=2048 (long)
    python -m benchmarks.scoring --quick    # seconds: a smoke run on tiny sizes

The output files are named after the CPU class and the kernel's instruction set
(``scoring-zen3-avx2.md`` ...), so runs on different machines sit side by side.
"""

from __future__ import annotations

import argparse
import json
import os
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

from benchmarks import engines, peers
from benchmarks.data import SyntheticCorpus
from benchmarks.measure import K, Blocks, Method, blockwise, einsum_reference, index_runner, measure_gemm_peak, overlap, round_robin
from benchmarks.report import check_targets, markdown_report
from metaembed import native
from metaembed.budget import DEFAULT_LADDER, Budget, parse_ladder
from metaembed.index import MultiVectorIndex
from metaembed.index.codecs import embedding_bytes
from metaembed.scoring import maxsim, maxsim_flops

NUM_QUERIES = 16
QUERY_VECTORS = 16
SHORTLIST = 1000
#: libxsmm JIT-compiles GEMMs up to (M*N*K)^(1/3) = 64; past that, maxsim-cpu 0.1.0 (which links no
#: BLAS) crashes with a segmentation fault: seen at (16,64) with D = 2048, twice on the Zen 3 machine.
MAXSIM_CPU_MAX_MNK = 64 ** 3


@dataclass(frozen=True)
class Size:
    name: str
    num_candidates: int
    dim: int
    # Candidates each exact engine holds: Qdrant takes its vectors as Python lists and its local mode
    # and LanceDB scan in seconds per batch, so they get a prefix where the whole corpus would not fit.
    engine_candidates: dict


FULL_SIZES = (
    Size("N=100k D=128", 100_000, 128, {"qdrant-edge": 20_000, "qdrant-client local": 3_000, "lancedb": 20_000}),
    Size("N=20k D=2048", 20_000, 2048, {"qdrant-edge": 2_000, "qdrant-client local": 500, "lancedb": 2_000}),
)
QUICK_SIZES = (
    Size("N=400 D=64", 400, 64, {"qdrant-edge": 400, "qdrant-client local": 50, "lancedb": 400}),
    Size("N=200 D=128", 200, 128, {"qdrant-edge": 100, "qdrant-client local": 50, "lancedb": 100}),
)


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


def run_size(size: Size, args: argparse.Namespace, work: Path, peak: float, log: Callable[[str], None],
             checkpoint: Callable[[list[dict]], object] = lambda rows: None) -> list[dict]:
    """Every budget's rows at ``size``; ``checkpoint(rows so far)`` runs after each budget (a long run keeps them)."""
    corpus = SyntheticCorpus(size.num_candidates, size.dim)
    queries, _ = corpus.queries(NUM_QUERIES, QUERY_VECTORS)
    ladder = DEFAULT_LADDER
    built = build_indexes(corpus, work / size.name.replace(" ", "_").replace("=", ""), queries, ladder)
    fp16, int8 = built["indexes"]["float16"], built["indexes"]["int8"]
    log(f"[{size.name}] built float16 + int8 indexes in {built['build_s']}")
    built_engines = build_engines(size, fp16, ladder, work, args, log)
    rows: list[dict] = []
    for budget in ladder:
        methods = budget_methods(size, corpus, budget, fp16, int8, built, built_engines, queries, args)
        round_robin(methods, args.reps)
        methods += warp_methods(size, budget, built_engines, queries, built["reference"], args)
        for method in methods:
            rows.append(result_row(size, budget, method, peak, args.reps))
            row = rows[-1]
            row.update(method.extra)
            log(f"[{size.name}] {str(budget):>5} {method.name:<22} {row['latency_s'] * 1e3:10.1f} ms "
                f"(min {row['min_latency_s'] * 1e3:.1f})  {row['gflops_per_s']:7.1f} GFLOP/s  "
                f"overlap {row['top10_overlap_vs_fp32_exact']:.3f}  reps {row['reps']}")
        checkpoint(rows)
    for engine, _, _ in built_engines.values():
        engine.close()
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


def budget_methods(size, corpus, budget, fp16, int8, built, built_engines, queries, args) -> list[Method]:
    """Every scorer to compare at ``budget``, on the same queries and (stored) candidate values."""
    n, dim = size.num_candidates, size.dim
    exact_flops = maxsim_flops(budget, dim, n, NUM_QUERIES)
    ref = built["reference"][budget]
    cap, peer_cap = args.time_cap, args.peer_time_cap
    stored = {index: {"build_s": built["build_s"][index.dtype], "stored_bytes": engines.folder_bytes(index.path)}
              for index in (fp16, int8)}
    methods = [
        Method("ours exact", index_runner(fp16, queries, budget=budget), exact_flops, fp16.memory_bytes(budget),
               "float16 storage, fp32 compute, top-10 included", cap, n, ref, extra=stored[fp16]),
        Method("ours int8", index_runner(int8, queries, budget=budget), exact_flops, int8.memory_bytes(budget),
               "int8 storage + fp32 scale per 64 values", cap, n, ref, extra=stored[int8]),
    ]
    if budget != Budget(1, 1):
        coarse_flops = maxsim_flops((1, 1), dim, n, NUM_QUERIES) + maxsim_flops(budget, dim, min(SHORTLIST, n), NUM_QUERIES)
        methods.append(Method("ours coarse", index_runner(fp16, queries, budget=budget, mode="coarse", shortlist=SHORTLIST),
                              coarse_flops, fp16.memory_bytes(budget), f"(1,1) first stage, shortlist {SHORTLIST}",
                              cap, n, ref, extra=stored[fp16]))
        if args.ann and dim <= 128:
            start = time.perf_counter()
            fp16.search(queries[:1], k=1, budget=budget, mode="ann", shortlist=SHORTLIST)  # builds the graph once
            build = time.perf_counter() - start
            methods.append(Method("ours ann", index_runner(fp16, queries, budget=budget, mode="ann", shortlist=SHORTLIST),
                                  maxsim_flops(budget, dim, SHORTLIST, NUM_QUERIES), fp16.memory_bytes(budget),
                                  f"FAISS HNSW first stage over first vectors (first call {build:.1f} s incl. build), "
                                  f"shortlist {SHORTLIST}", cap, n, ref, extra=stored[fp16]))
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
    if found["maxsim_cpu"] and budget.r_q * budget.r_c * dim > MAXSIM_CPU_MAX_MNK:
        print(f"[{size.name}] {budget} maxsim-cpu skipped: {budget.r_q}x{budget.r_c}x{dim} is past libxsmm's small-GEMM "
              "limit, where the maxsim-cpu wheel falls back to a BLAS sgemm it does not link and crashes the process", flush=True)
    elif found["maxsim_cpu"]:
        methods.append(Method("maxsim-cpu", blockwise(peers.maxsim_cpu_scores, blocks, q), exact_flops, peer_bytes,
                              note + "; one maxsim_scores call per query", peer_cap, n, ref))
    for name, (engine, subset, build_s) in built_engines.items():
        if not engine.exact:
            continue
        sub_ref = ref if subset == n else subset_reference(corpus, queries, budget, subset)

        def run(engine=engine) -> tuple[float, list[list[str]]]:
            start = time.perf_counter()
            found = engine.search(queries.numpy(), budget.r_q, budget.r_c, K)
            return time.perf_counter() - start, [[f"c{i}" for i in row] for row in found]

        where = "all candidates" if subset == n else (
            f"the first {subset} of {n} candidates (latency_s_at_full_n scales it linearly)")
        methods.append(Method(name, run, maxsim_flops(budget, dim, subset, NUM_QUERIES),
                              embedding_bytes(budget.r_c, dim, "float32", subset), f"exact MaxSim on {where}",
                              peer_cap, subset, sub_ref,
                              extra={"build_s": build_s, "stored_bytes": engines.folder_bytes(engine.folder)}))
    return methods


def warp_methods(size, budget, built_engines, queries, reference, args) -> list[Method]:
    """xtr-warp's rows at ``budget``, one per search setting, timed by its worker (not round-robin)."""
    if "xtr-warp" not in built_engines or budget.r_c not in built_engines["xtr-warp"][0].candidate_budgets:
        return []
    engine = built_engines["xtr-warp"][0]
    methods = []
    for result in engine.timed_search(queries.numpy(), budget.r_q, budget.r_c, K, args.reps):
        setting = ", ".join(f"{key}={value}" for key, value in result["setting"].items()) or "its tuned defaults"
        method = Method(f"xtr-warp ({setting})", lambda: (0.0, []), 0, engine.index_bytes[budget.r_c],
                        f"WARP index over the first {budget.r_c} vectors, approximate, {args.threads} threads",
                        args.peer_time_cap, size.num_candidates, reference[budget],
                        extra={"build_s": engine.build_seconds[budget.r_c],
                               "stored_bytes": engine.index_bytes[budget.r_c]})
        method.times, method.top = result["times"], [[f"c{i}" for i in row] for row in result["ids"]]
        methods.append(method)
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


def build_engines(size: Size, fp16: MultiVectorIndex, ladder, work: Path, args, log) -> dict:
    """Every available index-based peer, filled with the float16 index's stored values: name -> (engine, n, build s)."""
    found = peers.available()
    budgets = sorted({b.r_c for b in ladder})
    wanted: dict[str, tuple[object, int]] = {}
    for name, key, cls in (("qdrant-edge", "qdrant_edge", engines.QdrantEdge),
                           ("qdrant-client local", "qdrant_client", engines.QdrantLocal),
                           ("lancedb", "lancedb", engines.LanceFlat)):
        if found[key] and name not in args.skip_engines:
            folder = tempfile.mkdtemp(dir=work, prefix=f"{key}-")
            wanted[name] = (cls(folder, size.dim, budgets), min(size.engine_candidates[name], size.num_candidates))
    warp_budgets = sorted({b.r_c for b in args.xtr_budgets} & set(budgets))
    if args.xtr_python and size.dim <= args.xtr_max_dim and warp_budgets and "xtr-warp" not in args.skip_engines:
        folder = tempfile.mkdtemp(dir=work, prefix="xtr-")
        wanted["xtr-warp"] = (engines.XtrWarp(folder, size.dim, warp_budgets, args.xtr_python, args.threads,
                                              args.xtr_settings), size.num_candidates)
    seconds = dict.fromkeys(wanted, 0.0)
    done = 0
    for ids, block in fp16.export(r_c=64, batch=1024):
        values = block.numpy()
        for name, (engine, limit) in wanted.items():
            take = min(len(ids), limit - done)
            if take > 0:
                start = time.perf_counter()
                engine.add(done, values[:take])
                seconds[name] += time.perf_counter() - start
        done += len(ids)
    built = {}
    for name, (engine, limit) in wanted.items():
        start = time.perf_counter()
        engine.finish()
        seconds[name] += time.perf_counter() - start
        if name == "xtr-warp":  # its worker times the index build itself; the rest is writing .npy files
            log(f"[{size.name}] xtr-warp WARP indexes built in {engine.build_seconds} s ({engine.index_bytes} bytes)")
        log(f"[{size.name}] {name} holds {limit} candidates: {seconds[name]:.1f} s, "
            f"{engines.folder_bytes(engine.folder) / 2**20:,.1f} MiB on disk")
        built[name] = (engine, limit, seconds[name])
    return built


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
    parser.add_argument("--skip-engines", default="", help="comma-separated engines to leave out, e.g. 'lancedb,xtr-warp'")
    parser.add_argument("--xtr-python", default=engines.default_warp_python(),
                        help="interpreter with xtr-warp-rs and the torch its wheel links (default $METAEMBED_XTR_PYTHON)")
    parser.add_argument("--xtr-budgets", default="4,8", help="budgets at which to build WARP indexes, e.g. '4,8 8,16'")
    parser.add_argument("--xtr-settings", default='[{}, {"nprobe": 32}]',
                        help="JSON list of XTRWarp.search keyword sets to measure ({} = its tuned defaults)")
    parser.add_argument("--xtr-max-dim", type=int, default=128, help="build WARP indexes only up to this D")
    parser.add_argument("--name", default=None,
                        help="output file stem (default scoring-<cpu class>-<kernel ISA>, e.g. scoring-zen3-avx2)")
    parser.add_argument("--sizes", default=None, help="comma-separated subset of size names to run, e.g. 'N=100k D=128'")
    args = parser.parse_args(argv)
    args.skip_engines = {name.strip() for name in args.skip_engines.split(",") if name.strip()}
    args.xtr_budgets = parse_ladder(args.xtr_budgets)
    args.xtr_settings = json.loads(args.xtr_settings)
    args.threads = torch.get_num_threads()
    args.name = args.name or f"scoring-{cpu_class()}-{native.isa() or 'blas'}"
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.sizes:
        wanted = {s.strip() for s in args.sizes.split(",")}
        sizes = tuple(s for s in sizes if s.name in wanted)
    if args.quick:
        # Small cache: the small budgets use cached blocks, the large ones the streaming path.
        args.reps, args.time_cap, args.peer_time_cap, args.cache_bytes = 1, 5.0, 5.0, 1 << 20
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="metaembed-bench-", dir=args.work_dir))
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(f"CPU: {cpu_description()}; our kernel: {kernel_description()}; results -> {args.out / args.name}.*")
    log(f"load average at the start: {load_average()}")
    # The machine is shared: the peak is measured before each size and at the end,
    # and the best of these is the roofline (a lower one would flatter our % of peak).
    peaks = [measure_gemm_peak()]
    log(f"fp32 GEMM peak (2048^3, {torch.get_num_threads()} threads): {peaks[0]:.1f} GFLOP/s")
    rows: list[dict] = []
    try:
        for size in sizes:
            rows.extend(run_size(size, args, work, max(peaks), log,
                                 checkpoint=lambda partial: write_report(rows + partial, peaks, args)))
            log(f"load average after {size.name}: {load_average()}")
            peaks.append(measure_gemm_peak())
            report = write_report(rows, peaks, args)  # after every size: a long run keeps what it measured
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown_report(report))
    return report


def cpu_description() -> str:
    """CPU model, family and vector extensions, from /proc/cpuinfo where there is one."""
    fields = _cpu_fields()
    if not fields:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {vector}"


def _cpu_fields() -> dict[str, str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in info.split("\n\n")[0].splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in fields.items()}


# AMD family numbers of the Zen generations: 23 = Zen 1/2, 25 = Zen 3/4, 26 = Zen 5. Family 23 models
# below 0x30 are Zen 1 and Zen+ (two 128-bit FMA pipes: half Zen 2's fp32 rate; QEMU's "EPYC" model
# reports family 23 model 1), the rest Zen 2. Family 25 spans Zen 3 and Zen 4, which differ in AVX-512
# (a hypervisor may hide it: the shared development machine reports family 25 model 17 without it), so
# the class follows what the kernel can use.
_AMD_FAMILIES = {"23": "zen2", "25": "zen3", "26": "zen5"}


def cpu_class() -> str:
    """A short name of this CPU class for result files: ``zen1``, ``zen3``, ``zen5``, ``intel-6-143`` ..."""
    fields = _cpu_fields()
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    if fields.get("vendor_id") == "AuthenticAMD" and family in _AMD_FAMILIES:
        if family == "25" and "avx512f" in fields.get("flags", "").split():
            return "zen4"
        if family == "23" and model.isdigit() and int(model) < 0x30:
            return "zen1"
        return _AMD_FAMILIES[family]
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(fields.get("vendor_id", ""), platform.machine())
    return f"{vendor}-{family}-{model}"


def load_average() -> str:
    """The 1/5/15-minute load averages (the machine is shared: they say how disturbed a run was)."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def kernel_description() -> str:
    return f"fused C ({native.isa()})" if native.available() else "BLAS (torch.mm + max)"


def write_report(rows: list[dict], peaks: list[float], args: argparse.Namespace) -> dict:
    """Write scoring.json and scoring.md for ``rows``, every % of peak against the best measured peak."""
    peak = max(peaks)
    for row in rows:
        row["pct_of_gemm_peak"] = 100 * row["gflops_per_s"] / peak
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu": cpu_description(),
                    "our_kernel": kernel_description(), "cpu_class": cpu_class(),
                    "gemm_peak_gflops": peak, "gemm_peak_gflops_measurements": peaks,
                    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20},
        "setup": {"num_queries": NUM_QUERIES, "query_vectors": QUERY_VECTORS, "candidate_vectors": 64, "k": K,
                  "shortlist": SHORTLIST, "quick": args.quick, "peers": peers.available(),
                  "xtr_warp": bool(args.xtr_python) and "xtr-warp" not in args.skip_engines},
        "results": rows,
    }
    report["targets"] = check_targets(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown_report(report))
    return report


if __name__ == "__main__":
    main()
