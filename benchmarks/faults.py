"""Bounded fault runs against the index: kills, damage, concurrent processes, a full disk.

Each scenario is tried a fixed number of times with seeded randomness and counts its failures
(a failure is the index doing something it promises not to: losing or tearing a commit,
returning damaged data without an error, an unexpected exception, leftover files):

* ``kill-writer``      SIGKILL a process adding / deleting / compacting at a random moment; the index
                       must reopen at exactly one committed state and ``check`` clean.
* ``kill-create``      SIGKILL a process inside ``MultiVectorIndex.create``; the path must be absent
                       or a valid empty index, and creating there again must work.
* ``damage-segment``   a flipped byte, 4 KiB of random bytes, NaN in ``.vec`` or NaN/inf in an int8
                       ``.scale`` at a random place; must raise ``IndexCorruptError`` naming the file
                       (on a full-budget search and in ``check``).
* ``damage-catalog``   random bytes over written parts of ``catalog.sqlite``; must raise an
                       ``IndexStateError`` or give exactly the undamaged results.
* ``reader-opens``     opens (with a search) while another process adds, deletes and compacts;
                       every open must succeed and see whole commits only.
* ``two-writers``      two processes writing one index with compaction; no errors, nothing lost.
* ``disk-full``        fill a private tmpfs while adding; ``StorageFullError`` only, what was
                       acknowledged is exactly what reopens, no temporary files left, writes work
                       again once space is freed (skipped where no tmpfs can be mounted).

    python -m benchmarks.faults                     # the table in docs/results/reliability.md
    python -m benchmarks.faults --tries 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from metaembed.errors import IndexCorruptError, IndexStateError
from metaembed.index import MultiVectorIndex

DIM, R = 16, 4
ROOT = Path(__file__).resolve().parents[1]


def vectors(n: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, R, DIM, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=-1, keepdim=True)


def fork(body: Callable[[int], None]) -> tuple[int, int]:
    """Run ``body(write_fd)`` in a forked child; return ``(pid, read_fd)`` (one byte per step it reports)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            body(write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def wait_steps(read_fd: int, steps: int, timeout: float = 60) -> int:
    """Read ``steps`` step reports; the number read before ``timeout``."""
    got = 0
    while got < steps and select.select([read_fd], [], [], timeout)[0]:
        if not os.read(read_fd, 1):
            break
        got += 1
    return got


def kill(pid: int, read_fd: int) -> int:
    """SIGKILL the child; the number of steps it reported before dying."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    done = 0
    while select.select([read_fd], [], [], 0)[0]:
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        done += len(chunk)
    os.close(read_fd)
    return done


# ----------------------------------------------------------------------------- scenarios
def kill_writer(work: Path, rng: random.Random) -> str | None:
    path = work / "idx"
    MultiVectorIndex.create(path, dim=DIM, num_vectors=R, dtype=rng.choice(["float16", "int8", "float32"])).close()

    def loop(report: int) -> None:
        index = MultiVectorIndex.open(path)
        for n in range(10_000):
            index.add([f"b{n}-{j}" for j in range(5)], vectors(5, n))
            index.delete([f"b{n}-0"])
            if n % 4 == 3:
                index.compact()
            os.write(report, b".")

    pid, read_fd = fork(loop)
    wait_steps(read_fd, 2)
    time.sleep(rng.uniform(0, 0.4))
    steps = 2 + kill(pid, read_fd)
    with MultiVectorIndex.open(path) as index:
        present = set(index.ids)
    states = []
    for done in (steps, steps + 1):  # the kill may land after the next, unreported step's commits
        ids = {f"b{n}-{j}" for n in range(done) for j in range(1, 5)}
        states += [ids, ids | {f"b{done}-{j}" for j in range(5)}]
    if present not in states:
        return f"state after kill matches no committed state ({len(present)} items)"
    if MultiVectorIndex.check(path):
        return "check found damage after a kill"
    return None


def kill_create(work: Path, rng: random.Random) -> str | None:
    def loop(report: int) -> None:
        for n in range(100_000):
            MultiVectorIndex.create(work / f"idx{n}", dim=DIM, num_vectors=R).close()
            os.write(report, b".")

    pid, read_fd = fork(loop)
    started = time.monotonic()
    wait_steps(read_fd, 2)
    time.sleep(rng.uniform(0, (time.monotonic() - started) * 0.75))
    made = 2 + kill(pid, read_fd)
    for n in range(made + 2):
        path = work / f"idx{n}"
        if path.exists():
            with MultiVectorIndex.open(path) as index:
                if len(index):
                    return f"{path.name} is not empty"
        else:
            MultiVectorIndex.create(path, dim=DIM, num_vectors=R).close()
    if [p for p in work.iterdir() if not p.name.startswith("idx")]:
        return "staging folders left after creating again"
    return None


def _two_segments(path: Path, dtype: str) -> list[list[tuple[str, float]]]:
    with MultiVectorIndex.create(path, dim=DIM, num_vectors=R, dtype=dtype) as index:
        index.add([f"d{i}" for i in range(40)], vectors(40, 1), payloads=[{"i": i} for i in range(40)])
        index.add([f"d{i}" for i in range(40, 80)], vectors(40, 2), payloads=[{"i": i} for i in range(40, 80)])
        return _results(index)


def _results(index: MultiVectorIndex) -> list:
    return [[(h.id, round(h.score, 5), json.dumps(h.payload)) for h in row] for row in index.search(vectors(3, 9), k=5)]


def damage_segment(work: Path, rng: random.Random) -> str | None:
    kind = rng.choice(["flip", "4kib", "nan-vec", "scale"])
    dtype = "int8" if kind == "scale" else rng.choice(["float16", "float32", "bfloat16", "int8"])
    path = work / "idx"
    _two_segments(path, dtype)
    target = rng.choice(sorted(path.glob("seg-*.scale" if kind == "scale" else "seg-*.vec")))
    data = bytearray(target.read_bytes())
    if kind == "flip":
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "4kib":
        start = rng.randrange(max(1, len(data) - 4096))
        data[start : start + 4096] = rng.randbytes(min(4096, len(data) - start))
    else:
        dtype_of = {"float16": np.float16, "float32": np.float32, "bfloat16": np.uint16, "int8": np.float32}
        values = np.frombuffer(bytes(data), dtype=dtype_of[dtype] if kind == "nan-vec" else np.float32).copy()
        if kind == "nan-vec" and dtype == "int8":
            return None  # int8 codes have no NaN: covered by "scale"
        position = rng.randrange(len(values))
        values[position] = 0x7FC0 if values.dtype == np.uint16 else rng.choice([np.nan, np.inf, -np.inf])
        data = bytearray(values.tobytes())
    target.write_bytes(bytes(data))
    try:
        with MultiVectorIndex.open(path) as index:
            _results(index)
        return f"{kind} in {dtype} {target.suffix} read without an error"
    except IndexCorruptError as error:
        if target.name not in str(error):
            return f"error does not name {target.name}: {error}"
    found = MultiVectorIndex.check(path)
    if not found or not any(target.name in d.file or target.name in d.message for d in found):
        return f"check missed {kind} in {target.name}"
    return None


def damage_catalog(work: Path, rng: random.Random) -> str | None:
    path = work / "idx"
    reference = _two_segments(path, "float16")
    catalog = path / "catalog.sqlite"
    data = bytearray(catalog.read_bytes())
    used = [i for i in range(100, len(data) - 64) if data[i]]
    start = rng.choice(used)
    for offset in range(start, start + rng.choice([1, 8, 64])):
        data[offset] = rng.randrange(256)
    catalog.write_bytes(bytes(data))
    try:
        with MultiVectorIndex.open(path) as index:
            got = _results(index)
    except IndexStateError:
        return None
    return None if got == reference else f"damage at byte {start} changed results silently"


WRITER = """
import sys, torch
from metaembed.index import MultiVectorIndex
index = MultiVectorIndex.open(sys.argv[1], lock_timeout=60)
prefix, steps = sys.argv[2], int(sys.argv[3])
for n in range(steps):
    v = torch.randn(10, 4, 16, generator=torch.Generator().manual_seed(n))
    index.add([f"{prefix}{n}-{j}" for j in range(10)], v / v.norm(dim=-1, keepdim=True))
    if n >= 2:
        index.delete([f"{prefix}{n - 2}-{j}" for j in range(10)])
    if n % 3 == 2:
        index.compact()
    print("DONE", n, flush=True)
"""


def _writer(path: Path, prefix: str, steps: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), prefix, str(steps)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _final(prefix: str, steps: int) -> set[str]:
    return {f"{prefix}{n}-{j}" for n in range(max(0, steps - 2), steps) for j in range(10)}


def reader_opens(work: Path, rng: random.Random, opens: int = 200) -> list[str]:
    """``opens`` tries in one run (one per open); the failures, one message each."""
    path = work / "idx"
    MultiVectorIndex.create(path, dim=DIM, num_vectors=R, dtype="int8").close()
    child = _writer(path, "w", 100_000)
    child.stdout.readline()  # type: ignore[union-attr]
    failures = []
    for _ in range(opens):
        try:
            with MultiVectorIndex.open(path) as index:
                counts: dict[str, int] = {}
                for item_id in index.ids:
                    counts[item_id.split("-")[0]] = counts.get(item_id.split("-")[0], 0) + 1
                if any(c != 10 for c in counts.values()) or not 1 <= len(counts) <= 3:
                    failures.append(f"torn snapshot {counts}")
                index.search(vectors(1, 3), k=3)
        except Exception as error:  # counted, not raised: this is what is measured
            failures.append(f"{type(error).__name__}: {error}")
    child.kill()
    child.wait()
    return failures


def two_writers(work: Path, rng: random.Random) -> str | None:
    path = work / "idx"
    MultiVectorIndex.create(path, dim=DIM, num_vectors=R).close()
    steps = rng.randrange(10, 25)
    children = [_writer(path, prefix, steps) for prefix in ("x", "y")]
    errors = [child.communicate(timeout=300)[1] for child in children]
    if any(child.returncode for child in children):
        return "a writer failed: " + " | ".join(e.strip().split("\n")[-1] for e in errors if e.strip())
    with MultiVectorIndex.open(path) as index:
        if set(index.ids) != _final("x", steps) | _final("y", steps):
            return f"final state differs: {len(index)} items"
    return None if not MultiVectorIndex.check(path) else "check found damage"


DISK_FULL = """
import json, random, subprocess, sys, pathlib, torch
from metaembed.errors import StorageFullError
from metaembed.index import MultiVectorIndex
tries, seed, folder = int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
rng = random.Random(seed)
out = []
for attempt in range(tries):
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={rng.randrange(1024, 4096)}k", "tmpfs", str(folder)], check=True)
    problem = None
    try:
        (folder / "filler").write_bytes(b"x" * (256 << 10))
        dtype = rng.choice(["float16", "int8", "float32"])
        index = MultiVectorIndex.create(folder / "idx", dim=64, num_vectors=8, dtype=dtype)
        acknowledged, fulls, step = [], 0, 0
        while fulls < 3 and step < 2000:
            ids = [f"s{step}-{j}" for j in range(rng.randrange(1, 60))]
            v = torch.randn(len(ids), 8, 64, generator=torch.Generator().manual_seed(step))
            try:
                if step % 7 == 6 and acknowledged:
                    gone = acknowledged[: rng.randrange(1, 10)]
                    index.delete(gone)
                    acknowledged = acknowledged[len(gone):]
                else:
                    index.add(ids, v / v.norm(dim=-1, keepdim=True))
                    acknowledged += ids
            except StorageFullError:
                fulls += 1
            step += 1
        index.close()
        leftovers = [p.name for p in (folder / "idx").iterdir() if p.suffix in (".tmp", ".stmp")]
        with MultiVectorIndex.open(folder / "idx") as index:
            if sorted(index.ids) != sorted(acknowledged):
                problem = f"reopened {len(index)} items, acknowledged {len(acknowledged)}"
            elif leftovers:
                problem = f"temporary files left: {leftovers}"
            else:
                (folder / "filler").unlink()
                index.add(["after"], torch.ones(1, 8, 64))
        if problem is None and MultiVectorIndex.check(folder / "idx"):
            problem = "check found damage"
    except Exception as error:
        problem = f"{type(error).__name__}: {error}"
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # memory maps may outlive close()
    out.append(problem)
print(json.dumps(out))
"""


def disk_full(tries: int, seed: int) -> list[str | None] | None:
    """All tries in one child in a private mount namespace; ``None`` where no tmpfs can be mounted."""
    unshare = shutil.which("unshare")
    if not unshare:
        return None
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        for flags in (["--mount", "--propagation", "private"], ["--mount", "--map-root-user", "--propagation", "private"]):
            done = subprocess.run([unshare, *flags, sys.executable, "-c", DISK_FULL, str(tries), str(seed), folder],
                                  capture_output=True, text=True, env=env, timeout=1200)
            if done.returncode == 0:
                return json.loads(done.stdout.strip().split("\n")[-1])
    return None


# ----------------------------------------------------------------------------- driver
def run(tries: int, seed: int) -> list[dict]:
    rows = []

    def tally(name: str, problems: list[str | None], what: str) -> None:
        failures = [p for p in problems if p]
        rows.append({"scenario": name, "what": what, "tries": len(problems), "failures": len(failures),
                     "examples": sorted(set(failures))[:3]})
        print(f"{name:16} {len(problems):5} tries {len(failures):4} failures  {what}", flush=True)

    per_try = {
        "kill-writer": (kill_writer, "SIGKILL during add/delete/compact; reopens at one committed state"),
        "kill-create": (kill_create, "SIGKILL during create; path absent or valid, create again works"),
        "damage-segment": (damage_segment, "flipped byte / 4 KiB / NaN in .vec / NaN-inf in .scale: named error"),
        "damage-catalog": (damage_catalog, "random bytes in catalog.sqlite: IndexStateError or identical results"),
        "two-writers": (two_writers, "two writer processes with compaction: no error, nothing lost"),
    }
    for name, (scenario, what) in per_try.items():
        rng = random.Random(seed)
        problems = []
        count = max(2, tries // 5) if name == "two-writers" else tries
        for _ in range(count):
            with tempfile.TemporaryDirectory() as work:
                try:
                    problems.append(scenario(Path(work), rng))
                except Exception as error:  # an unexpected exception is a failure of the scenario
                    problems.append(f"{type(error).__name__}: {error}")
        tally(name, problems, what)
    with tempfile.TemporaryDirectory() as work:
        failures = reader_opens(Path(work), random.Random(seed), opens=10 * tries)
    tally("reader-opens", failures + [None] * (10 * tries - len(failures)),
          "opens + search while another process adds/deletes/compacts: succeed, whole commits")
    full = disk_full(max(3, tries // 2), seed)
    if full is None:
        print("disk-full        skipped: no tmpfs can be mounted here (needs root or user namespaces)")
    else:
        tally("disk-full", full, "fill a tmpfs while adding/deleting: StorageFullError, acknowledged == reopened, "
              "no temp files, writes work after freeing space")
    return rows


def markdown(report: dict) -> str:
    """The runs as a Markdown table (scenario, tries, failures, what a try checks)."""
    lines = ["| scenario | tries | failures | a try checks |", "|---|---:|---:|---|"]
    for row in report["results"]:
        lines.append(f"| {row['scenario']} | {row['tries']} | {row['failures']} | {row['what']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tries", type=int, default=20, help="tries per scenario (reader opens: 10x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/faults.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # children are forked: no OpenMP pool may exist in the parent
    started = time.time()
    rows = run(args.tries, args.seed)
    report = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
              "seconds": round(time.time() - started, 1), "tries": args.tries, "seed": args.seed, "results": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    args.json.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.json} and {args.json.with_suffix('.md')} in {report['seconds']} s")


if __name__ == "__main__":
    main()
