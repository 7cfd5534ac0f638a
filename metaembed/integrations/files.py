"""An index as one plain file: ids, the vectors at a budget ``r_c``, and the payloads.

Two formats, chosen by the suffix or ``format``:

``.safetensors``
    tensor ``vectors`` ``(N, r_c, D)``; the header's metadata holds ``ids`` and ``payloads``
    (JSON lists in the order of the rows) and ``r_c``, ``dim``, ``model``.
``.npz``
    arrays ``ids`` ``(N,)`` str, ``vectors`` ``(N, r_c, D)``, ``payloads`` ``(N,)`` str (one
    JSON text per row, ``"null"`` for none); readable with ``numpy.load`` without pickle.

>>> import tempfile, torch
>>> from pathlib import Path
>>> from metaembed.index import MultiVectorIndex
>>> index = MultiVectorIndex.create(None, dim=4, num_vectors=2, dtype="float32")
>>> index.add(["a", "b"], torch.eye(4)[None, :2].repeat(2, 1, 1), payloads=[{"page": 1}, None])
>>> path = Path(tempfile.mkdtemp()) / "index.npz"
>>> write_file(index, path, r_c=1)
2
>>> ids, vectors, payloads = read_file(path)
>>> ids, tuple(vectors.shape), payloads
(['a', 'b'], (2, 1, 4), [{'page': 1}, None])
>>> index.close()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaembed.errors import InputError
from metaembed.index import MultiVectorIndex

FORMATS = ("safetensors", "npz")
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def file_format(path: str | Path, format: str | None = None) -> str:
    """``format``, or the one ``path``'s suffix names; :class:`InputError` for anything else."""
    chosen = format or Path(path).suffix.lstrip(".")
    if chosen not in FORMATS:
        raise InputError(f"unknown export format {chosen!r} for {path}; use one of {', '.join(FORMATS)}")
    return chosen


def write_file(
    index: MultiVectorIndex,
    path: str | Path,
    r_c: int | None = None,
    format: str | None = None,
    dtype: str = "float32",
) -> int:
    """Write every live candidate of ``index`` at ``r_c`` (default: all stored vectors) to ``path``; the row count.

    ``dtype`` is ``"float32"`` or ``"float16"``. The file is written beside ``path`` and
    renamed into place, so ``path`` is never left half-written.
    """
    path = Path(path)
    chosen = file_format(path, format)
    if dtype not in DTYPES:
        raise InputError(f"unknown export dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name ending in .{chosen}")
    ids: list[str] = []
    payloads: list[Any] = []
    blocks: list[torch.Tensor] = []
    for batch_ids, vectors, batch_payloads in index.export(r_c=r_c, payloads=True):
        ids.extend(batch_ids)
        payloads.extend(batch_payloads)
        blocks.append(vectors.to(DTYPES[dtype]))
    kept = r_c or index.num_vectors
    vectors = torch.cat(blocks) if blocks else torch.empty(0, kept, index.dim, dtype=DTYPES[dtype])
    staging = path.with_name(f".{path.name}.partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    if chosen == "safetensors":
        from safetensors.torch import save_file

        metadata = {"ids": json.dumps(ids), "payloads": json.dumps(payloads), "r_c": str(kept),
                    "dim": str(index.dim), "model": str(index.metadata.get("model", ""))}
        save_file({"vectors": vectors.contiguous()}, str(staging), metadata=metadata)
    else:
        with staging.open("wb") as handle:
            np.savez(handle, ids=np.array(ids, dtype=str), vectors=vectors.numpy(),
                     payloads=np.array([json.dumps(p) for p in payloads], dtype=str))
    staging.replace(path)
    return len(ids)


def read_file(path: str | Path) -> tuple[list[str], torch.Tensor, list[Any]]:
    """``(ids, vectors (N, r_c, D), payloads)`` from a file written by :func:`write_file`."""
    path = Path(path)
    chosen = file_format(path)
    if not path.is_file():
        raise InputError(f"export file not found: {path}")
    if chosen == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "ids" not in metadata or "vectors" not in handle.keys():
                raise InputError(f"{path} is not a metaembed export (no 'ids' metadata or 'vectors' tensor)")
            return json.loads(metadata["ids"]), handle.get_tensor("vectors"), json.loads(metadata.get("payloads", "[]"))
    with np.load(path, allow_pickle=False) as data:
        missing = {"ids", "vectors", "payloads"} - set(data.files)
        if missing:
            raise InputError(f"{path} is not a metaembed export (no {', '.join(sorted(missing))})")
        return [str(i) for i in data["ids"]], torch.from_numpy(data["vectors"]), [json.loads(p) for p in data["payloads"]]


__all__ = ["FORMATS", "file_format", "read_file", "write_file"]
