"""metaembed.workers: every item runs once, errors reach the caller, a forked child gets a working pool."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import torch

from metaembed.scoring import maxsim
from metaembed.workers import run_parallel


def test_every_item_runs_exactly_once_on_worker_threads() -> None:
    seen: list[int] = []
    threads: set[str] = set()
    lock = threading.Lock()

    def work(item: int) -> None:
        with lock:
            seen.append(item)
            threads.add(threading.current_thread().name)

    run_parallel(work, range(100), workers=2)
    assert sorted(seen) == list(range(100))
    assert threading.current_thread().name not in threads


def test_worker_errors_are_raised_in_the_caller() -> None:
    def work(item: int) -> None:
        if item == 7:
            raise ValueError("item 7 failed")

    with pytest.raises(ValueError, match="item 7 failed"):
        run_parallel(work, range(20), workers=2)
    run_parallel(lambda item: None, range(4), workers=2)  # the pool still serves


def test_the_callers_torch_thread_count_is_kept() -> None:
    before = torch.get_num_threads()
    run_parallel(lambda item: None, range(4), workers=2)
    assert torch.get_num_threads() == before


def _score_in_child(queue) -> None:
    generator = torch.Generator().manual_seed(0)
    q, c = torch.randn(2, 2, 8, generator=generator), torch.randn(5000, 2, 8, generator=generator)
    queue.put(maxsim(q, c).sum().item())


def test_a_forked_child_builds_its_own_pool() -> None:
    generator = torch.Generator().manual_seed(0)
    q, c = torch.randn(2, 2, 8, generator=generator), torch.randn(5000, 2, 8, generator=generator)
    expected = maxsim(q, c).sum().item()  # creates the parent's pool before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_score_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == pytest.approx(expected, rel=1e-5)
