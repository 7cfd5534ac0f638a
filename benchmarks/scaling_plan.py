"""Shards, memory and expected latency for 10M and 100M pages, from the measured per-shard costs.

Reads the JSON of ``python -m benchmarks.distributed`` and extrapolates linearly: a shard is a
MultiVectorIndex, whose exact search at budget ``(r_q, r_c)`` was measured at an effective rate
``F = 2 N r_q r_c D / latency`` (FLOP/s, overheads included) on this machine's cores; the fan-out
overhead of Ray actors is the measured difference between one shard behind an actor and one
index in-process. Prints the markdown tables of docs/scaling.md.

    python -m benchmarks.scaling_plan benchmarks/results/distributed.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from metaembed.index.codecs import embedding_bytes

LADDER = [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64)]
# Budgets not measured use the rate of a measured one (the kernel's efficiency grows with r_q r_c,
# so using a smaller budget's rate for (16, 64) overestimates its latency).
RATE_OF = {(1, 1): "1,1", (2, 4): "4,8", (4, 8): "4,8", (8, 16): "8,16", (16, 64): "8,16"}
STORED = 64  # candidates keep every Meta Token so that every budget stays available
SHORTLIST = 1000


def rates(report: dict[str, Any], dtype: str) -> tuple[dict[str, float], float]:
    """Effective FLOP/s of one index per measured budget, and the Ray fan-out overhead (s) at (1,1)."""
    n, dim = report["num_candidates"], report["dim"]
    rows = {(r["budget"], r["mode"], r["method"]): r for r in report["search"] if r["dtype"] == dtype}
    out = {}
    for budget in ("1,1", "4,8", "8,16"):
        r_q, r_c = map(int, budget.split(","))
        out[budget] = 2 * n * r_q * r_c * dim / (rows[(budget, "exact", "one index")]["latency_ms_best"] / 1e3)
    ray = rows.get(("1,1", "exact", "1 shards, Ray actors"))
    overhead = 0.0
    if ray is not None:
        overhead = max(0.0, ray["latency_ms_median"] - rows[("1,1", "exact", "one index")]["latency_ms_median"]) / 1e3
    return out, overhead


def plan(report: dict[str, Any], pages: int, dim: int, dtype: str, shard_ram_gib: float, shard_cores: int,
         measured_cores: int) -> list[dict[str, Any]]:
    measured, overhead = rates(report, dtype)
    speedup = shard_cores / measured_cores  # assumes the kernel scales with cores (it is parallel over rows)
    stored = embedding_bytes(STORED, dim, dtype, num_candidates=pages)
    shards = math.ceil(stored / (shard_ram_gib * 2**30))
    per_shard = pages / shards
    rows = []
    for r_q, r_c in LADDER:
        rate = measured[RATE_OF[(r_q, r_c)]] * speedup
        exact = 2 * per_shard * r_q * r_c * dim / rate + overhead
        first = 2 * per_shard * dim / (measured["1,1"] * speedup)
        rerank = 2 * SHORTLIST * r_q * r_c * dim / rate
        rows.append({
            "budget": f"{r_q},{r_c}", "read_gib": embedding_bytes(r_c, dim, dtype, num_candidates=pages) / 2**30,
            "exact_s": exact, "coarse_s": first + rerank + 2 * overhead,
        })
    return [{"pages": pages, "dim": dim, "dtype": dtype, "stored_gib": stored / 2**30, "shards": shards,
             "rows": rows}]


def markdown(plans: list[dict[str, Any]]) -> str:
    lines = []
    for p in plans:
        lines += [f"**{p['pages'] / 1e6:.0f}M pages, D={p['dim']}, {p['dtype']}**: {p['stored_gib']:,.0f} GiB stored "
                  f"(r_c={STORED}), **{p['shards']} shards**", "",
                  "| budget | GiB read per search | exact latency | coarse-to-fine latency |", "|---|---|---|---|"]
        for r in p["rows"]:
            lines.append(f"| {r['budget']} | {r['read_gib']:,.0f} | {_seconds(r['exact_s'])} | {_seconds(r['coarse_s'])} |")
        lines.append("")
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value * 1e3:,.0f} ms" if value < 1 else f"{value:,.1f} s"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--shard-ram-gib", type=float, default=128.0, help="RAM a shard keeps its vectors in.")
    parser.add_argument("--shard-cores", type=int, default=16)
    parser.add_argument("--measured-cores", type=int, default=2, help="Cores of the machine the report was measured on.")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    plans = [p for pages in (10_000_000, 100_000_000) for dim in (3584, 128) for dtype in ("float16", "int8")
             for p in plan(report, pages, dim, dtype, args.shard_ram_gib, args.shard_cores, args.measured_cores)]
    text = markdown(plans)
    print(text)
    return text


if __name__ == "__main__":
    main()
