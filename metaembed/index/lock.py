"""One writer at a time across processes: an ``flock`` on ``writer.lock`` in the index folder.

Every commit (add, upsert, delete, merge, metadata) holds the lock from before
its vector file is written until after its catalog transaction, so two
processes writing one index take turns instead of clobbering each other; the
second waits up to ``timeout`` seconds, then gets
:class:`~metaembed.errors.IndexBusyError` naming the process that holds it.
Readers (open, search) never take the lock. The kernel drops an ``flock`` when
its holder dies, so a killed writer never leaves the index locked.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from metaembed.errors import IndexBusyError

LOCK_NAME = "writer.lock"
#: Seconds a second writer waits for the lock by default (a commit holds it for
#: one segment write; a compaction of a large index may hold it longer).
DEFAULT_TIMEOUT = 10.0
_POLL_SECONDS = 0.02


class WriterLock:
    """The writer lock of one index folder, re-entrant within the owning object (nested commits)."""

    def __init__(self, folder: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = folder / LOCK_NAME
        self.timeout = float(timeout)
        self._fd: int | None = None
        self._depth = 0
        self._mutex = threading.RLock()  # threads of this process queue here, not on the file

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return "another process"
        return f"process {pid}" if pid.isdigit() else "another process"

    def acquire(self) -> None:
        """Take the lock, waiting up to :attr:`timeout` seconds; :class:`IndexBusyError` after that."""
        self._mutex.acquire()
        if self._depth:
            self._depth += 1
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except BaseException:
            self._mutex.release()
            raise
        deadline = time.monotonic() + self.timeout
        while not self._try_lock(fd):
            if time.monotonic() >= deadline:
                holder = self._holder()
                os.close(fd)
                self._mutex.release()
                raise IndexBusyError(
                    f"index {str(self.path.parent)!r} is being written by {holder}; "
                    f"waited {self.timeout:g} s for its writer lock ({LOCK_NAME}): retry when it finishes"
                )
            time.sleep(_POLL_SECONDS)
        try:  # who holds it, for the message a waiting writer prints (advisory; the flock is the lock)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:  # a full disk: the lock holds all the same
            pass
        self._fd, self._depth = fd, 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._mutex.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block (nested blocks in the same thread share one acquisition)."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def try_hold(self) -> bool:
        """Take the lock only if it is free right now (housekeeping on open); ``False`` if busy or read-only."""
        if not self._mutex.acquire(blocking=False):
            return False
        if self._depth:
            self._depth += 1
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            self._mutex.release()
            return False
        if not self._try_lock(fd):
            os.close(fd)
            self._mutex.release()
            return False
        self._fd, self._depth = fd, 1
        return True


__all__ = ["WriterLock", "LOCK_NAME", "DEFAULT_TIMEOUT"]
