"""The distributed benchmark's in-process part on a tiny collection, and the scaling plan built from its report."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.distributed import main
from benchmarks.scaling_plan import plan


def test_benchmark_reports_every_method_and_the_plan_scales_with_the_pages(tmp_path):
    report = main(["--no-ray", "--num-candidates", "600", "--num-vectors", "16", "--dim", "32", "--dtypes", "float16",
                   "--shards", "2", "--reps", "1", "--batch", "4", "--shortlist", "50", "--out", str(tmp_path)])
    methods = {(r["budget"], r["mode"], r["method"]) for r in report["search"]}
    assert methods == {(b, m, n) for b, m in [("1,1", "exact"), ("4,8", "exact"), ("4,8", "coarse"), ("8,16", "exact"),
                                               ("8,16", "coarse")] for n in ("one index", "2 shards, in-process")}
    assert all(r["latency_ms_best"] > 0 and r["queries_per_s"] > 0 for r in report["search"])
    assert json.loads((tmp_path / "distributed.json").read_text())["search"] == report["search"]

    small, large = (plan(report, pages, 3584, "float16", 128.0, 16, 2)[0] for pages in (10**7, 10**8))
    assert small["stored_gib"] == pytest.approx(10**7 * 64 * 3584 * 2 / 2**30)  # r_c = 64 vectors of 3584 fp16 values
    assert small["shards"] == math.ceil(small["stored_gib"] / 128) and large["shards"] >= 10 * small["shards"] - 9
    for a, b in zip(small["rows"], large["rows"]):  # ten times the pages on ten times the shards: about the same latency
        assert b["read_gib"] == pytest.approx(10 * a["read_gib"]) and b["exact_s"] == pytest.approx(a["exact_s"], rel=0.05)
    first, last = small["rows"][0], small["rows"][-1]  # (1,1) and (16,64): 1,024 times the FLOPs
    assert last["exact_s"] > first["exact_s"] and last["coarse_s"] < last["exact_s"]
