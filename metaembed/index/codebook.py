"""The learnt state of a trained storage codec (its codebooks), kept durably with the index.

A trained codec (:attr:`~metaembed.index.codecs.Codec.trained`) learns its parameters from the
vectors of the index's first add. They are written to ``codec-<uuid>.npz`` (named arrays, no
pickles) and fsynced *before* the catalog commit that references them: the first segment and
the config value ``codec_state`` = ``{"file", "bytes", "crc"}`` (CRC-32C of the whole file) land
in one transaction, so an index either has no codebook and no vectors, or both. The file is read
and checked against its checksum when the index opens; a damaged or missing one is an
:class:`~metaembed.errors.IndexCorruptError` naming it (the codes cannot be read without it:
rebuild the index).
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from metaembed.errors import IndexCorruptError
from metaembed.index.checksum import crc
from metaembed.index.codecs import Codec
from metaembed.index.files import fsync_dir

#: config key of the codec state's file entry
STATE_KEY = "codec_state"
STATE_PREFIX = "codec-"
STATE_SUFFIX = ".npz"


def write_state(folder: Path, codec: Codec) -> dict[str, Any]:
    """Write ``codec``'s state into a new file in ``folder`` (fsynced); return its catalog entry."""
    buffer = io.BytesIO()
    np.savez(buffer, **codec.state())
    data = buffer.getvalue()
    name = f"{STATE_PREFIX}{uuid.uuid4().hex}{STATE_SUFFIX}"
    path, partial = folder / name, folder / (name + ".tmp")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        fsync_dir(folder)
    except BaseException:
        partial.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise
    return {"file": name, "bytes": len(data), "crc": crc(data)}


def read_state(folder: Path, entry: Any, codec: Codec) -> Codec:
    """The trained copy of ``codec`` whose state the catalog ``entry`` names; checked against its checksum."""
    try:
        name, size, check = entry["file"], int(entry["bytes"]), int(entry["crc"])
        if not (isinstance(name, str) and name.startswith(STATE_PREFIX) and "/" not in name):
            raise ValueError(f"file name {name!r}")
    except (TypeError, KeyError, ValueError) as error:
        raise IndexCorruptError(f"index {str(folder)!r}: the codebook entry of the catalog is damaged ({error})") from None
    path = folder / name
    damaged = f"index {str(path)!r}: the {codec.name} codebook file"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IndexCorruptError(f"{damaged} is missing; rebuild the index with 'metaembed index build'") from None
    if len(data) != size or crc(data) != check:
        raise IndexCorruptError(
            f"{damaged} fails its checksum ({len(data)} bytes, {size} expected); rebuild the index with 'metaembed index build'"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return codec.with_state({key: arrays[key] for key in arrays.files})
    except (ValueError, OSError, KeyError) as error:
        raise IndexCorruptError(f"{damaged} does not fit the codec ({error}); rebuild the index") from None


def state_files(folder: Path) -> list[Path]:
    """Every codec state file in ``folder`` (a committed one and any a killed writer left)."""
    return sorted(folder.glob(f"{STATE_PREFIX}*{STATE_SUFFIX}*"))


__all__ = ["STATE_KEY", "write_state", "read_state", "state_files"]
