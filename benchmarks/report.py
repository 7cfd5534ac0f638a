"""Turn the scoring benchmark's rows into the issue's targets (met or not) and a Markdown table."""

from __future__ import annotations

from collections import defaultdict

# Exact peers (the speed target's comparison); approximate ones are compared at equal top-10 overlap instead.
PEERS = ("einsum", "colpali", "pylate", "maxsim-cpu", "qdrant-edge", "qdrant-client local", "lancedb")
APPROXIMATE_PEER_PREFIX = "xtr-warp"
OURS = "ours exact"
OURS_APPROXIMATE = ("ours coarse", "ours ann", "ours int8")


def _needs(budget: str) -> float:
    """The speedup the issue asks of exact search: 2x at every budget >= (4,8), 1x below."""
    r_q, r_c = (int(v) for v in budget.split(","))
    return 2.0 if r_q >= 4 and r_c >= 8 else 1.0


def _latency(row: dict) -> float:
    # An engine measured on a subset is compared at the full size by linear scaling (it scans everything).
    return row.get("latency_s_at_full_n", row["latency_s"])


def _min_latency(row: dict) -> float:
    return row["min_latency_s"] * _latency(row) / row["latency_s"]


def _by_cell(results: list[dict]) -> dict[tuple[str, str], dict[str, dict]]:
    cells: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for row in results:
        cells[(row["size"], row["budget"])][row["method"]] = row
    return cells


def check_targets(report: dict) -> dict:
    """Evaluate the issue's four targets on the measured rows; each entry says ``met`` and the numbers behind it."""
    cells = _by_cell(report["results"])
    speed = []
    for (size, budget), methods in cells.items():
        peers = {m: _latency(r) for m, r in methods.items() if m in PEERS}
        if OURS not in methods or not peers:
            continue
        fastest = min(peers, key=peers.get)
        ratio = peers[fastest] / methods[OURS]["latency_s"]
        # Best-case latencies too: on a shared machine the minimum is the least disturbed measurement.
        best_peer = min(_min_latency(r) for m, r in methods.items() if m in PEERS)
        need = _needs(budget)
        # The most any exact fp32 kernel could gain: all of the FLOPs at the measured GEMM peak.
        ours = methods[OURS]
        fastest_possible = ours["flops"] / (report["machine"]["gemm_peak_gflops"] * 1e9)
        speed.append({"size": size, "budget": budget, "fastest_peer": fastest, "speedup": ratio,
                      "speedup_of_minima": best_peer / ours["min_latency_s"],
                      "speedup_at_100pct_of_peak": peers[fastest] / fastest_possible,
                      "required": need, "met": ratio >= need})
    peak = []
    for (size, budget), methods in cells.items():
        if budget == "16,64" and OURS in methods and methods[OURS]["dim"] >= 2048:
            peak.append({"size": size, "pct_of_gemm_peak": methods[OURS]["pct_of_gemm_peak"],
                         "maxsim_pct_of_gemm_peak": methods.get("ours maxsim", {}).get("pct_of_gemm_peak"),
                         "met": methods[OURS]["pct_of_gemm_peak"] >= 70.0})
    int8_rows = [r for r in report["results"] if r["method"] == "ours int8"]
    fp16_rows = [r for r in report["results"] if r["method"] == OURS]
    ratio_bytes = max((r["index_bytes"] / cells[(r["size"], r["budget"])][OURS]["index_bytes"] for r in int8_rows),
                      default=None)
    min_int8 = min((r["top10_overlap_vs_fp32_exact"] for r in int8_rows), default=None)
    min_fp16 = min((r["top10_overlap_vs_fp32_exact"] for r in fp16_rows), default=None)
    storage = {"int8_bytes_over_fp16": ratio_bytes, "int8_min_top10_overlap": min_int8,
               "fp16_min_top10_overlap": min_fp16,
               "met": ratio_bytes is not None and ratio_bytes <= 0.55 and min_int8 >= 0.98}
    coarse = []
    for (size, budget), methods in cells.items():
        if budget == "16,64" and "ours coarse" in methods and OURS in methods:
            factor = methods[OURS]["latency_s"] / methods["ours coarse"]["latency_s"]
            coarse.append({"size": size, "num_candidates": methods[OURS]["num_candidates"], "speedup": factor,
                           "top10_overlap_vs_exact_fp32": methods["ours coarse"]["top10_overlap_vs_fp32_exact"],
                           "met": factor >= 10.0 if methods[OURS]["num_candidates"] >= 100_000 else None})
    approximate = []
    for (size, budget), methods in cells.items():
        for name, peer in methods.items():
            if not name.startswith(APPROXIMATE_PEER_PREFIX):
                continue
            ours = [methods[m] for m in OURS_APPROXIMATE + (OURS,) if m in methods]
            better = [r for r in ours if r["latency_s"] <= peer["latency_s"]
                      and r["top10_overlap_vs_fp32_exact"] >= peer["top10_overlap_vs_fp32_exact"]]
            best = min(better, key=lambda r: r["latency_s"]) if better else None
            approximate.append({"size": size, "budget": budget, "peer": name, "peer_latency_s": peer["latency_s"],
                                "peer_overlap": peer["top10_overlap_vs_fp32_exact"],
                                "ours": best["method"] if best else None,
                                "ours_latency_s": best["latency_s"] if best else None,
                                "ours_overlap": best["top10_overlap_vs_fp32_exact"] if best else None,
                                "met": best is not None})
    return {
        "exact_faster_than_every_peer": {"cells": speed, "met": bool(speed) and all(c["met"] for c in speed)},
        "as_fast_at_equal_overlap_vs_approximate_peers": {
            "cells": approximate, "met": all(c["met"] for c in approximate) if approximate else None},
        "pct_of_gemm_peak_at_16_64_d2048": {"cells": peak, "met": bool(peak) and all(c["met"] for c in peak)},
        "int8_storage": storage,
        "coarse_to_fine_10x_at_100k": {"cells": coarse,
                                       "met": any(c["met"] for c in coarse) if coarse else False},
    }


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value / 2**20:,.1f} MiB"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"


def _tradeoff_table(results: list[dict]) -> list[str]:
    """Latency against top-10 overlap for every approximate method (ours and peers) beside exact search."""
    chosen = [r for r in results if r["method"].startswith(APPROXIMATE_PEER_PREFIX) or r["method"] in OURS_APPROXIMATE
              or r["method"] == OURS]
    cells = [key for key in dict.fromkeys((r["size"], r["budget"]) for r in chosen)
             if any(r["method"].startswith(APPROXIMATE_PEER_PREFIX) for r in chosen if (r["size"], r["budget"]) == key)]
    if not cells:
        return []
    lines = ["## Latency vs top-10 overlap (approximate search)", "",
             "| size | budget | method | latency ms | overlap | on disk |", "|---|---|---|---:|---:|---:|"]
    for size, budget in cells:
        rows = sorted((r for r in chosen if (r["size"], r["budget"]) == (size, budget)), key=lambda r: r["latency_s"])
        lines += [f"| {size} | {budget} | {r['method']} | {_fmt_ms(r['latency_s'])} | "
                  f"{r['top10_overlap_vs_fp32_exact']:.3f} | {_mib(r.get('stored_bytes'))} |" for r in rows]
    return lines + [""]


def markdown_report(report: dict) -> str:
    """The benchmark as Markdown: machine, one table per corpus size, and the targets."""
    machine = report["machine"]
    lines = [
        "# Budgeted MaxSim search: metaembed vs peers",
        "",
        f"{machine.get('cpu', 'CPU not recorded')}; {machine['threads']} threads, torch {machine['torch']}; our kernel: "
        f"{machine.get('our_kernel', 'BLAS (torch.mm + max)')}; measured fp32 GEMM peak "
        f"{machine['gemm_peak_gflops']:.0f} GFLOP/s (best of "
        f"{', '.join(f'{p:.0f}' for p in machine['gemm_peak_gflops_measurements'])}; 2048^3 `torch.mm`, "
        f"measured before each size and at the end); peak RSS {machine['peak_rss_gib']:.1f} GiB. "
        f"{report['setup']['num_queries']} queries x {report['setup']['query_vectors']} vectors per batch, "
        f"candidates store 64 vectors, top-{report['setup']['k']}. Latency = median per batch of queries. "
        "Overlap = top-10 overlap with the fp32 exact reference. Synthetic clustered unit vectors "
        "(benchmarks/data.py): coarse-to-fine overlap on them says little about real embeddings.",
        "",
    ]
    sizes = list(dict.fromkeys(r["size"] for r in report["results"]))
    for size in sizes:
        rows = [r for r in report["results"] if r["size"] == size]
        lines += [f"## {size}", "", "| budget | method | latency ms | min ms | queries/s | GFLOP/s | % peak | "
                  "bytes read | on disk | build s | overlap | reps | note |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in rows:
            latency = _fmt_ms(row["latency_s"])
            if "latency_s_at_full_n" in row and row["num_candidates"] != rows[0]["num_candidates"]:
                latency += f" (x{rows[0]['num_candidates'] // row['num_candidates']}: {_fmt_ms(row['latency_s_at_full_n'])})"
            lines.append(
                f"| {row['budget']} | {row['method']} | {latency} | {_fmt_ms(row['min_latency_s'])} | "
                f"{row['queries_per_s']:,.1f} | "
                f"{row['gflops_per_s']:.1f} | {row['pct_of_gemm_peak']:.0f}% | {row['index_bytes'] / 2**20:,.1f} MiB | "
                f"{_mib(row.get('stored_bytes'))} | {_seconds(row.get('build_s'))} | "
                f"{row['top10_overlap_vs_fp32_exact']:.3f} | {row['reps']}{'*' if row['reps_capped'] else ''} | "
                f"{row['note']} |"
            )
        lines.append("")
    lines += ["`*` = repetitions capped by the time limit.", ""]
    lines += _tradeoff_table(report["results"])
    if "avx512" in machine.get("our_kernel", ""):
        lines += ["The peak is what `torch.mm` reaches on this CPU. On AMD CPUs the MKL sgemm it calls may take an "
                  "AVX2 path (on the Zen 5 machine `MKL_ENABLE_INSTRUCTIONS=AVX512` left it at 166-176 GFLOP/s), "
                  "while our kernel runs AVX-512: it can exceed 100% of that peak, and the ceiling speedups below "
                  "(all FLOPs at that peak) bound the peers' code paths, not ours.", ""]
    lines += ["## Targets", ""]
    targets = report["targets"]
    for cell in targets["exact_faster_than_every_peer"]["cells"]:
        lines.append(f"- exact vs fastest peer, {cell['size']} ({cell['budget']}): {cell['speedup']:.2f}x faster "
                     f"than {cell['fastest_peer']} (need {cell['required']:g}x): {'met' if cell['met'] else 'NOT met'} "
                     f"(ratio of best-case latencies {cell['speedup_of_minima']:.2f}x; the ceiling, all FLOPs at "
                     f"100% of the measured peak, is {cell['speedup_at_100pct_of_peak']:.2f}x)")
    for cell in targets["pct_of_gemm_peak_at_16_64_d2048"]["cells"]:
        lines.append(f"- (16,64) at {cell['size']}: {cell['pct_of_gemm_peak']:.0f}% of measured fp32 GEMM peak "
                     f"(need 70%): {'met' if cell['met'] else 'NOT met'}")
    storage = targets["int8_storage"]
    if storage["int8_bytes_over_fp16"] is not None:
        lines.append(f"- int8 bytes = {100 * storage['int8_bytes_over_fp16']:.1f}% of float16 (need <= 55%), "
                     f"min top-10 overlap vs fp32 exact {storage['int8_min_top10_overlap']:.3f} (need >= 0.98): "
                     f"{'met' if storage['met'] else 'NOT met'}; float16 min overlap {storage['fp16_min_top10_overlap']:.3f}")
    for cell in targets["as_fast_at_equal_overlap_vs_approximate_peers"]["cells"]:
        ours = (f"{cell['ours']} {_fmt_ms(cell['ours_latency_s'])} ms at overlap {cell['ours_overlap']:.3f}: met"
                if cell["met"] else "none of ours is as fast at equal or better overlap: NOT met")
        lines.append(f"- vs {cell['peer']}, {cell['size']} ({cell['budget']}): it takes "
                     f"{_fmt_ms(cell['peer_latency_s'])} ms at overlap {cell['peer_overlap']:.3f}; {ours}")
    for cell in targets["coarse_to_fine_10x_at_100k"]["cells"]:
        verdict = {True: "met", False: "NOT met", None: "n/a below N=100k"}[cell["met"]]
        lines.append(f"- coarse-to-fine (16,64) at {cell['size']}: {cell['speedup']:.1f}x faster than exact "
                     f"(need 10x at N=100k): {verdict}; top-10 overlap {cell['top10_overlap_vs_exact_fp32']:.3f}")
    return "\n".join(lines) + "\n"


__all__ = ["check_targets", "markdown_report"]
