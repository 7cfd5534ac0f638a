"""xtr-warp-rs, run in its own interpreter for benchmarks/engines.py (its wheel links the torch it was built for).

    python warp_worker.py build VECTORS.npy INDEX_FOLDER
        VECTORS: (N, R_c, D) fp32; builds a WARP index (its defaults: 4-bit residuals,
        k-means centroids) on the CPU. Prints {"seconds": build time, "bytes": index bytes}.
    python warp_worker.py search INDEX_FOLDER QUERIES.npy K REPS THREADS SETTINGS_JSON [BATCH]
        QUERIES: (Q, R_q, D) fp32. For each setting (a dict of XTRWarp.search keywords,
        e.g. {"nprobe": 32}; {} = its own tuned defaults) runs one untimed search of the first
        batch, then REPS timed passes over the queries, one search call per BATCH queries
        (default: all Q in one call). Prints {"results": [{"setting", "times", "ids"}]}: the
        seconds of every call of every pass, and the last pass's ids.

The last line of stdout is the JSON answer; everything else goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> dict:
    import numpy as np
    import torch

    with contextlib.redirect_stdout(sys.stderr):
        from xtr_warp import XTRWarp

        command = argv[0]
        if command == "build":
            vectors, folder = np.load(argv[1]), argv[2]
            start = time.perf_counter()
            XTRWarp(folder).create(torch.from_numpy(vectors), device="cpu", show_progress=False)
            seconds = time.perf_counter() - start
            size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
            return {"seconds": seconds, "bytes": size}
        if command == "search":
            folder, queries = argv[1], torch.from_numpy(np.load(argv[2]))
            k, reps, threads, settings = int(argv[3]), int(argv[4]), int(argv[5]), json.loads(argv[6])
            batch = int(argv[7]) if len(argv) > 7 else len(queries)
            torch.set_num_threads(threads)
            index = XTRWarp(folder).load(device="cpu")
            results = []
            for setting in settings:
                def run(part):
                    return index.search(part, top_k=k, num_threads=threads, show_progress=False, **setting)

                run(queries[:batch])
                times, found = [], []
                for _ in range(reps):
                    found = []
                    for first in range(0, len(queries), batch):
                        start = time.perf_counter()
                        found += run(queries[first:first + batch])
                        times.append(time.perf_counter() - start)
                results.append({"setting": setting, "times": times,
                                "ids": [[int(pid) for pid, _ in row] for row in found]})
            return {"results": results}
        raise SystemExit(f"unknown command {command!r}: expected build or search")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
