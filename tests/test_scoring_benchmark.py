"""The scoring benchmark's --quick smoke run: every scorer runs, agrees with the fp32 reference, reports targets."""

from __future__ import annotations

import json

import pytest

from benchmarks import peers
from benchmarks import scoring
from benchmarks.scoring import main


def test_quick_benchmark_runs_every_scorer_and_they_agree(tmp_path) -> None:
    # A --work-dir that does not exist yet is created (a fresh scratch path must not fail after the imports).
    report = main(["--quick", "--out", str(tmp_path), "--work-dir", str(tmp_path / "scratch" / "bench"), "--name", "scoring"])
    saved = json.loads((tmp_path / "scoring.json").read_text())
    assert saved["targets"] == json.loads(json.dumps(report["targets"]))
    assert "| 16,64 | ours exact |" in (tmp_path / "scoring.md").read_text()

    found = peers.available()
    expected = {"ours exact", "ours int8", "ours maxsim", "einsum"}
    expected |= {name for name, key in (("colpali", "colpali"), ("pylate", "pylate"), ("maxsim-cpu", "maxsim_cpu"),
                                        ("qdrant-edge", "qdrant_edge"), ("qdrant-client local", "qdrant_client"),
                                        ("lancedb", "lancedb")) if found[key]}
    rows = report["results"]
    for size in {r["size"] for r in rows}:
        for budget in ("1,1", "2,4", "4,8", "8,16", "16,64"):
            methods = {r["method"]: r for r in rows if r["size"] == size and r["budget"] == budget}
            assert expected <= set(methods), (size, budget, set(methods))
            # Same stored values in, same top-10 out: any disagreement is a scoring bug.
            for name in expected - {"ours int8"}:
                assert methods[name]["top10_overlap_vs_fp32_exact"] >= 0.99, (size, budget, name)
            assert methods["ours int8"]["top10_overlap_vs_fp32_exact"] >= 0.9
            assert methods["ours exact"]["flops"] == 2 * int(budget.split(",")[0]) * int(budget.split(",")[1]) * (
                methods["ours exact"]["dim"] * methods["ours exact"]["num_candidates"] * 16)
            assert all(r["latency_s"] > 0 and r["reps"] >= 1 for r in methods.values())
    assert report["targets"]["int8_storage"]["int8_bytes_over_fp16"] <= 0.55
    assert report["machine"]["gemm_peak_gflops"] == max(report["machine"]["gemm_peak_gflops_measurements"]) > 0
    # The ceiling: the fastest peer's latency over the time all FLOPs would take at the measured peak.
    peak = report["machine"]["gemm_peak_gflops"] * 1e9
    for cell in report["targets"]["exact_faster_than_every_peer"]["cells"]:
        ours = next(r for r in rows if (r["size"], r["budget"], r["method"]) == (cell["size"], cell["budget"], "ours exact"))
        peer = next(r for r in rows if (r["size"], r["budget"], r["method"]) == (cell["size"], cell["budget"], cell["fastest_peer"]))
        peer_latency = peer.get("latency_s_at_full_n", peer["latency_s"])
        assert abs(cell["speedup_at_100pct_of_peak"] - peer_latency * peak / ours["flops"]) < 1e-9 * peak


@pytest.mark.parametrize(("vendor", "family", "model", "flags", "expected"), [
    ("AuthenticAMD", "23", "1", "fma avx2", "zen1"),        # QEMU's "EPYC" model (Naples)
    ("AuthenticAMD", "23", "8", "fma avx2", "zen1"),        # Zen+
    ("AuthenticAMD", "23", "49", "fma avx2", "zen2"),       # Rome, model 0x31
    ("AuthenticAMD", "25", "17", "fma avx2", "zen3"),       # the development machine: AVX-512 hidden
    ("AuthenticAMD", "25", "17", "avx2 avx512f", "zen4"),
    ("AuthenticAMD", "26", "2", "avx2 avx512f", "zen5"),
    ("GenuineIntel", "6", "167", "avx2 avx512f amx_bf16", "intel-6-167"),
])
def test_result_files_are_named_by_cpu_class(monkeypatch, vendor, family, model, flags, expected) -> None:
    fields = {"vendor_id": vendor, "cpu family": family, "model": model, "flags": flags}
    monkeypatch.setattr(scoring, "_cpu_fields", lambda: fields)
    assert scoring.cpu_class() == expected
