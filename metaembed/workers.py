"""Dedicated compute threads for the MaxSim kernel, each running torch single-threaded.

Why not torch's own intra-op threads: the kernel issues many medium-sized ops
(one GEMM and one max per candidate position and chunk). Each op is an OpenMP
parallel region ending in a barrier; on a busy machine one descheduled thread
stalls every barrier, and the kernel loses most of its speed (docs/results/lab-notes.md
has the measurement). Giving each worker whole chunks of candidates
instead (one worker per configured torch thread, chunks handed out dynamically)
removes the per-op barriers: a slow worker only delays its own chunk.

Each worker thread sets its own torch/OpenMP/MKL thread count to 1 once, when
it starts; the caller's setting is restored right after, so other threads of
the process keep theirs.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Iterable, TypeVar

import torch

T = TypeVar("T")

_lock = threading.Lock()
_pool: "_Pool | None" = None


class _Pool:
    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()  # threads do not survive fork(): a child process builds its own pool
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        ready = threading.Barrier(size + 1)
        caller_threads = torch.get_num_threads()
        for number in range(size):
            threading.Thread(target=self._serve, args=(ready,), name=f"metaembed-maxsim-{number}", daemon=True).start()
        ready.wait()
        # torch.set_num_threads(1) in the workers also changed the default that
        # threads started later inherit; put the caller's value back.
        torch.set_num_threads(caller_threads)

    def _serve(self, ready: threading.Barrier) -> None:
        torch.set_num_threads(1)
        ready.wait()
        while True:
            job = self._tasks.get()
            job()

    def submit(self, job: Callable[[], None]) -> None:
        self._tasks.put(job)


def pool_size() -> int:
    """Number of compute workers: torch's intra-op thread count when the pool is first used."""
    return _pool.size if _pool is not None and _pool.pid == os.getpid() else torch.get_num_threads()


def _get_pool() -> _Pool:
    global _pool
    with _lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = _Pool(max(1, torch.get_num_threads()))
        return _pool


def run_parallel(work: Callable[[T], None], items: Iterable[T], workers: int) -> None:
    """Call ``work(item)`` for every item on up to ``workers`` pool threads; items are taken dynamically.

    Returns when all are done; the first exception raised by ``work`` is re-raised here.
    """
    pool = _get_pool()
    workers = max(1, min(workers, pool.size))
    source = iter(items)
    take = threading.Lock()
    errors: list[BaseException] = []
    finished = threading.Semaphore(0)

    def loop() -> None:
        try:
            while not errors:
                with take:
                    item = next(source, _END)
                if item is _END:
                    break
                work(item)  # type: ignore[arg-type]
        except BaseException as error:  # handed to the caller below
            errors.append(error)
        finally:
            finished.release()

    for _ in range(workers):
        pool.submit(loop)
    for _ in range(workers):
        finished.acquire()
    if errors:
        raise errors[0]


_END = object()

__all__ = ["run_parallel", "pool_size"]
