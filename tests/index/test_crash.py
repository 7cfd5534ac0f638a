"""Crash safety: a writer process killed with SIGKILL mid-add, mid-delete or mid-save.

A child process builds an index, then starts one operation with a hook that
announces a precise point inside it (writing the vector file, inside the open
SQLite transaction, just after the commit) and waits there; the parent kills it
with SIGKILL and checks that the index opens in its last committed state: the
same ids, the same stored vectors and payloads, correct search results, and
that it accepts new writes. A second test kills a busy writer at random moments.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest
import torch

from metaembed.index import MultiVectorIndex

from .conftest import brute_force, stored_values, unit_vectors

ROOT = Path(__file__).resolve().parents[2]
DIM, NUM_VECTORS, DTYPE = 8, 4, "int8"

CHILD = textwrap.dedent(
    """
    import contextlib, sys, time, zlib
    import torch
    from metaembed.index import MultiVectorIndex
    import metaembed.index.store as mv
    import metaembed.index.segments as segments
    from metaembed.index.catalog import Catalog

    path, operation, point = sys.argv[1], sys.argv[2], sys.argv[3]

    def vectors(ids):
        out = []
        for i in ids:
            g = torch.Generator().manual_seed(zlib.crc32(i.encode()))
            v = torch.randn(1, 4, 8, generator=g)
            out.append(v / v.norm(dim=-1, keepdim=True))
        return torch.cat(out)

    def payloads(ids):
        return [{"id": i} for i in ids]

    def stop_here():
        print("POINT", flush=True)
        time.sleep(60)

    def write(index, ids):
        index.add(ids, vectors(ids), payloads(ids))

    index = MultiVectorIndex.create(path, dim=8, num_vectors=4, dtype="int8", metadata={"v": 1})
    write(index, [f"a{i}" for i in range(20)])
    write(index, [f"a{i}" for i in range(20, 40)])
    index.delete([f"a{i}" for i in range(10)])
    print("READY", flush=True)

    if point == "writing":  # between two blocks of the new vector file
        segments._WRITE_ROWS = 3
        def slow(blocks):
            for n, block in enumerate(blocks):
                if n == 2:
                    stop_here()
                yield block
        original_encoded, original_merged = mv.encoded_blocks, mv.merged_blocks
        mv.encoded_blocks = lambda *a: slow(original_encoded(*a))
        mv.merged_blocks = lambda *a: slow(original_merged(*a))
    elif point == "in-transaction":  # statements executed, COMMIT not yet
        original = Catalog.transaction
        @contextlib.contextmanager
        def hooked(self):
            with original(self) as db:
                yield db
                if db.execute("SELECT changes()").fetchone()[0]:
                    stop_here()
        Catalog.transaction = hooked
    elif point == "after-commit":  # committed; old files not yet removed
        for name in ("commit_add", "commit_delete", "commit_merge"):
            def after(self, *a, _original=getattr(Catalog, name)):
                _original(self, *a)
                stop_here()
            setattr(Catalog, name, after)

    if operation == "add":
        write(index, [f"b{i}" for i in range(12)])
    elif operation == "delete":
        index.delete([f"a{i}" for i in range(10, 20)])
    elif operation == "save":
        index.save()
    elif operation == "loop":
        n = 0
        while True:
            write(index, [f"c{n}-{j}" for j in range(5)])
            index.delete([f"c{n}-0"])
            if n % 3 == 2:
                index.save()
            print("DONE", n, flush=True)
            n += 1
    print("FINISHED", flush=True)
    """
)


def expected_vectors(ids: list[str]) -> torch.Tensor:
    out = []
    for item_id in ids:
        out.append(unit_vectors(zlib.crc32(item_id.encode()), 1, NUM_VECTORS, DIM))
    return torch.cat(out)


def start_child(path: Path, operation: str, point: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), operation, point],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def wait_for(child: subprocess.Popen, word: str) -> list[str]:
    lines = []
    for line in child.stdout:  # type: ignore[union-attr]
        lines.append(line.strip())
        if line.strip() == word:
            return lines
    child.kill()
    raise AssertionError(f"child ended before {word!r}: {lines} {child.stderr.read()}")  # type: ignore[union-attr]


def check_index(path: Path, expected_ids: list[str]) -> None:
    """The index opens, holds exactly ``expected_ids`` with their vectors and payloads, searches right, accepts writes."""
    with MultiVectorIndex.open(path) as index:
        assert sorted(index.ids) == sorted(expected_ids)
        assert index.metadata == {"v": 1}
        want = stored_values(expected_vectors(expected_ids), DTYPE)
        torch.testing.assert_close(index.vectors(expected_ids), want)
        queries = unit_vectors(7, 3, 2, DIM)
        got = index.search(queries, k=5, budget="2,4")
        reference = brute_force(queries, want, expected_ids, 2, 4, 5)
        for row, ref in zip(got, reference):
            assert [round(r.score, 4) for r in row] == [round(s, 4) for _, s in ref]
            assert all(r.payload == {"id": r.id} for r in row)
        fresh = ["after-crash"]
        index.add(fresh, expected_vectors(fresh), payloads=[{"id": "after-crash"}])
        # files a killed writer left behind are gone after opening and one commit (no save needed)
        referenced = {view.segment.name for view in index._store.views}
    leftovers = [p.name for p in path.iterdir() if p.name.startswith("seg-") and p.name.split(".")[0] not in referenced]
    assert leftovers == [] and not list(path.glob("*.tmp"))
    with MultiVectorIndex.open(path) as index:
        assert sorted(index.ids) == sorted(expected_ids + fresh)
        assert MultiVectorIndex.check(path) == []


BEFORE = [f"a{i}" for i in range(10, 40)]
CASES = {
    ("add", "writing"): BEFORE,
    ("add", "in-transaction"): BEFORE,
    ("add", "after-commit"): BEFORE + [f"b{i}" for i in range(12)],
    ("delete", "in-transaction"): BEFORE,
    ("delete", "after-commit"): [f"a{i}" for i in range(20, 40)],
    ("save", "writing"): BEFORE,
    ("save", "in-transaction"): BEFORE,
    ("save", "after-commit"): BEFORE,
}


@pytest.mark.parametrize(("operation", "point"), list(CASES), ids=["-".join(case) for case in CASES])
def test_writer_killed_at_a_precise_point(tmp_path, operation: str, point: str) -> None:
    path = tmp_path / "idx"
    child = start_child(path, operation, point)
    wait_for(child, "READY")
    wait_for(child, "POINT")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    check_index(path, CASES[(operation, point)])


def test_busy_writer_killed_at_random_moments(tmp_path) -> None:
    rng = random.Random(0)
    for attempt in range(2):
        path = tmp_path / f"idx{attempt}"
        child = start_child(path, "loop", "none")
        wait_for(child, "READY")
        time.sleep(rng.uniform(0.3, 1.2))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        done = [int(line.split()[1]) for line in child.stdout.read().split("\n") if line.startswith("DONE")]  # type: ignore[union-attr]
        finished = done[-1] + 1 if done else 0
        # The kill may land before or after the commits of the next, unreported step.
        with MultiVectorIndex.open(path) as index:
            present = set(index.ids)
        candidates = []
        for steps in (finished, finished + 1):
            ids = BEFORE + [f"c{n}-{j}" for n in range(steps) for j in range(1, 5)]
            candidates.append(ids)
            candidates.append(ids + [f"c{steps}-{j}" for j in range(5)])  # added, delete not yet
        matching = [ids for ids in candidates if set(ids) == present]
        assert matching, f"state after kill matches no committed state: {sorted(present)}"
        check_index(path, matching[0])


def test_create_killed_at_random_moments_leaves_a_usable_path(tmp_path) -> None:
    """SIGKILL a process that is creating indexes: each path is absent or a valid empty index, and creating again works."""
    rng = random.Random(2)
    mid_create = 0
    for attempt in range(8):
        base = tmp_path / f"run{attempt}"
        base.mkdir()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child creates index after index until it is killed, reporting each
            try:
                os.close(done_r)
                for n in range(100_000):
                    MultiVectorIndex.create(base / f"idx{n}", dim=8, num_vectors=4, dtype="int8").close()
                    os.write(done_w, b".")
            finally:
                os._exit(0)
        os.close(done_w)
        ready, _, _ = select.select([done_r], [], [], 60)
        assert ready, "the child made no index in 60 s"
        started = time.monotonic()
        os.read(done_r, 1)
        select.select([done_r], [], [], 60)  # the second create: how long one takes here
        one = time.monotonic() - started
        time.sleep(rng.uniform(0, 1.5 * one))  # most kills land inside a create
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(done_r)
        made = sorted((p for p in base.iterdir() if p.name.startswith("idx")), key=lambda p: int(p.name[3:]))
        assert made, "the child was killed before its first create"
        for path in made:  # every folder that exists is a complete index
            with MultiVectorIndex.open(path) as index:
                assert len(index) == 0 and index.dim == 8
        mid_create += any(p.name.startswith(".idx") for p in base.iterdir())  # killed inside a create
        nxt = base / f"idx{len(made)}"
        assert not nxt.exists() and [p.name for p in made] == [f"idx{i}" for i in range(len(made))]
        with MultiVectorIndex.create(nxt, dim=8, num_vectors=4) as index:  # the killed create's path works
            index.add(["x"], unit_vectors(0, 1, 4, 8))
        assert not [p.name for p in base.iterdir() if not p.name.startswith("idx")]  # its staging folder is gone
    assert mid_create >= 2, f"only {mid_create} of 8 kills landed inside a create"


def test_orphans_of_killed_writers_are_removed_on_open(tmp_path) -> None:
    path = tmp_path / "idx"
    with MultiVectorIndex.create(path, dim=8, num_vectors=4) as index:
        index.add(["a"], unit_vectors(0, 1, 4, 8))
        kept = sorted(p.name for p in path.glob("seg-*"))
    orphans = ["seg-0123.vec", "seg-0123.scale", "seg-4567.tmp", "seg-89ab.stmp"]
    for name in orphans:
        (path / name).write_bytes(b"\0" * 4096)
    (tmp_path / ".idx.staging-999999999-dead").mkdir()  # a killed save/create (no such pid)
    with MultiVectorIndex.open(path) as index:
        assert index.ids == ["a"]
        assert sorted(p.name for p in path.glob("seg-*")) == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
