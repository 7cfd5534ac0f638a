"""Several processes on one index: one writer at a time, readers that always open a whole commit.

A child process writes continuously (adds a batch of 10, deletes the batch
before last in one commit, compacts every third step) while this process opens
the index 200 times and, as a second writer, adds and deletes its own items.
Every open must succeed and show whole batches only (never a torn snapshot);
both writers must finish without an error, and the final index must hold
exactly what both acknowledged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from metaembed.errors import IndexBusyError
from metaembed.index import MultiVectorIndex

from .conftest import unit_vectors

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys, pathlib, torch
    from metaembed.index import MultiVectorIndex
    path, stop = sys.argv[1], pathlib.Path(sys.argv[2])
    index = MultiVectorIndex.open(path, lock_timeout=60)
    n = 0
    while not stop.exists() or n < 6:
        g = torch.Generator().manual_seed(n)
        v = torch.randn(10, 4, 8, generator=g)
        index.add([f"w{n}-{j}" for j in range(10)], v / v.norm(dim=-1, keepdim=True))
        if n >= 2:
            index.delete([f"w{n - 2}-{j}" for j in range(10)])
        if n % 3 == 2:
            index.compact()
        print("DONE", n, flush=True)
        n += 1
    index.close()
    """
)


@pytest.fixture
def writer(tmp_path):
    """An index with a child process writing into it until ``stop`` is created; yields (path, stop, child)."""
    path = tmp_path / "idx"
    with MultiVectorIndex.create(path, dim=8, num_vectors=4, dtype="int8") as index:
        index.add(["base"], unit_vectors(0, 1, 4, 8))
    stop = tmp_path / "stop"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert child.stdout.readline().startswith("DONE 0"), child.stderr.read()  # type: ignore[union-attr]
    yield path, stop, child
    if child.poll() is None:
        child.kill()
        child.wait()


def finish(stop: Path, child: subprocess.Popen) -> int:
    """Stop the child writer; the number of steps it acknowledged."""
    stop.touch()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    return int([line for line in out.split("\n") if line.startswith("DONE")][-1].split()[1]) + 1


def child_batches(ids: list[str]) -> Counter:
    return Counter(i.split("-")[0] for i in ids if i.startswith("w"))


def test_200_reader_opens_during_compaction_all_succeed_and_see_whole_commits(writer) -> None:
    path, stop, child = writer
    query = unit_vectors(1, 1, 2, 8)
    generations = set()
    for _ in range(200):
        with MultiVectorIndex.open(path) as index:
            ids = index.ids
            batches = child_batches(ids)
            # whole batches only, and at most the three a step can leave (n-2 is deleted after n is added)
            assert all(count == 10 for count in batches.values()), batches
            assert 1 <= len(batches) <= 3 and "base" in ids
            hits = index.search(query, k=3)[0]
            assert len(hits) == 3 and {h.id for h in hits} <= set(ids)
            generations.add(index._store.generation)
    steps = finish(stop, child)
    assert len(generations) > 1, "the writer never committed while the readers opened"
    with MultiVectorIndex.open(path) as index:
        assert sorted(index.ids) == sorted(["base"] + [f"w{n}-{j}" for n in (steps - 2, steps - 1) for j in range(10)])


def test_a_second_writer_process_waits_its_turn_and_nothing_is_lost(writer) -> None:
    path, stop, child = writer
    mine = []
    with MultiVectorIndex.open(path, lock_timeout=60) as index:
        for m in range(15):
            batch = [f"p{m}-{j}" for j in range(4)]
            index.add(batch, unit_vectors(100 + m, 4, 4, 8), payloads=[{"m": m}] * 4)
            index.delete([batch[0]])
            mine += batch[1:]
            if m % 5 == 4:
                index.save()
    steps = finish(stop, child)
    with MultiVectorIndex.open(path) as index:
        expected = ["base"] + mine + [f"w{n}-{j}" for n in (steps - 2, steps - 1) for j in range(10)]
        assert sorted(index.ids) == sorted(expected)
        assert index.search(unit_vectors(100, 4, 4, 8)[1:2], k=1)[0][0].payload == {"m": 0}
        assert MultiVectorIndex.check(path) == []
    leftovers = [p.name for p in path.iterdir() if p.suffix in (".tmp", ".stmp")]
    assert leftovers == []


def test_a_writer_that_cannot_get_the_lock_in_time_is_refused_with_the_holder_named(tmp_path) -> None:
    path = tmp_path / "idx"
    vectors = unit_vectors(0, 2, 4, 8)
    with MultiVectorIndex.create(path, dim=8, num_vectors=4) as first:
        first.add(["a"], vectors[:1])
        with MultiVectorIndex.open(path, lock_timeout=0.2) as second:
            with first._store.lock.held():  # first is in the middle of a commit
                started = time.monotonic()
                with pytest.raises(IndexBusyError, match=rf"process {os.getpid()}.*writer.lock"):
                    second.add(["b"], vectors[1:])
                assert 0.2 <= time.monotonic() - started < 5
                assert second.search(vectors[:1], k=1)[0][0].id == "a"  # readers never wait for the lock
            second.add(["b"], vectors[1:])  # free again
            assert sorted(second.ids) == ["a", "b"]
        assert first.refresh() and sorted(first.ids) == ["a", "b"]  # sees the other writer's commit
        assert not first.refresh()
        first.add(["c"], torch.zeros(1, 4, 8) + 0.5)  # catches up before writing: no duplicate-id clash
        assert sorted(first.ids) == ["a", "b", "c"]
