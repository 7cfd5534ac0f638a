"""File-system steps every durable write of an index shares: fsync, disk-full errors, staged folders.

* :func:`storage_errors` turns "no room left" (``ENOSPC``, ``EDQUOT``, a file-size
  limit's ``EFBIG``, SQLite's ``SQLITE_FULL``) into :class:`~metaembed.errors.StorageFullError`,
  so a full disk is an error the caller can report (HTTP 507), never a crash.
* :func:`staged_folder` builds a folder under a temporary name beside its target and
  renames it into place, so the target holds a complete index or nothing.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from metaembed.errors import IndexStateError, StorageFullError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_STAGING_MARK = ".staging-"
_LOW_SPACE = 1 << 20


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (new, renamed or removed files) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_room(folder: Path) -> bool:
    """Whether writes to ``folder`` are likely failing for want of room: under 1 MiB free, or a file-size limit."""
    try:
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < _LOW_SPACE:
            return True
    except OSError:
        pass
    return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY


def is_storage_full(error: BaseException, folder: Path) -> bool:
    """Whether ``error`` means the file system has no room (or the process may write no more bytes).

    SQLite reports ``ENOSPC`` as ``SQLITE_FULL`` but a file-size limit (``EFBIG``) only as a write
    I/O error, so a write I/O error counts as "full" when the folder has almost no room left.
    """
    if isinstance(error, OSError):
        return error.errno in _FULL_ERRNOS
    if isinstance(error, sqlite3.OperationalError):
        name = getattr(error, "sqlite_errorname", "")
        if name == "SQLITE_FULL" or "disk is full" in str(error):
            return True
        return name.startswith("SQLITE_IOERR") and _no_room(folder)
    return False


@contextmanager
def storage_errors(folder: Path, action: str) -> Iterator[None]:
    """Re-raise "no room left" errors inside the block as :class:`StorageFullError` naming ``folder``."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as error:
        if is_storage_full(error, folder):
            raise StorageFullError(
                f"no space left to {action} in index {str(folder)!r} ({error}); "
                "the index keeps its last committed state: free some space and retry"
            ) from None
        raise


def _staging_owner_alive(path: Path) -> bool:
    try:
        pid = int(path.name.rsplit(_STAGING_MARK, 1)[1].split("-")[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_staging(target: Path) -> None:
    """Delete staging folders of ``target`` left by processes that were killed while building them."""
    if not target.parent.is_dir():
        return
    for path in target.parent.glob(f".{target.name}{_STAGING_MARK}*"):
        if path.is_dir() and not _staging_owner_alive(path):
            shutil.rmtree(path, ignore_errors=True)


def new_staging_folder(target: Path) -> Path:
    """An empty folder beside ``target``, named after this process so a later run can tell it is stale."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = target.parent / f".{target.name}{_STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def publish_folder(staging: Path, target: Path) -> None:
    """Rename the complete ``staging`` folder to ``target`` (absent or an empty folder), durably.

    ``rename`` replaces an empty directory atomically; if ``target`` gained files
    meanwhile it fails and ``target`` is left as it was.
    """
    fsync_dir(staging)
    try:
        os.rename(staging, target)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise IndexStateError(f"cannot write the index at {str(target)!r}: it exists and is not empty") from None
        raise
    fsync_dir(target.parent)


__all__ = [
    "fsync_dir",
    "is_storage_full",
    "storage_errors",
    "new_staging_folder",
    "publish_folder",
    "remove_stale_staging",
]
