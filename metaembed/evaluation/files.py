"""Reading the published Parquet and JSON-lines files with errors that name the file.

Hugging Face data set repositories store each split as ``<config>/<split>-00000-of-0000N.parquet``
(or ``data/<split>-*.parquet``). Images are embedded as ``{"bytes", "path"}``
structs; :func:`extract_images` writes them once to a folder named by content
hash so that items can refer to them by path (lazily opened at encode time).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from metaembed.errors import InputError
from metaembed.jsonl import iter_jsonl


#: Published layouts put Parquet files at most this deep below a data set folder
#: (``<set>/test-*.parquet``, ``<set>/data/test-*.parquet``, ``<set>/<config>/test/*.parquet``).
#: Searching no deeper keeps listing fast next to an unpacked folder of 100,000 images.
PARQUET_DEPTH = 3


def parquet_files_below(folder: Path, depth: int = PARQUET_DEPTH) -> list[Path]:
    """Every ``*.parquet`` file at most ``depth`` levels below ``folder``, sorted."""
    files: list[Path] = []
    for level in range(1, depth + 1):
        files.extend(p for p in folder.glob("/".join(["*"] * (level - 1) + ["*.parquet"])) if p.is_file())
    return sorted(files)


def find_parquet_files(folder: Path, split: str = "test") -> list[Path]:
    """The Parquet files of ``split`` under ``folder`` (see :data:`PARQUET_DEPTH`), sorted.

    Files named ``<split>-*.parquet`` / ``<split>.parquet`` or lying in a folder
    named ``<split>`` are preferred; when there are none, every ``*.parquet`` is
    taken (a folder holding one split only). Raises :class:`InputError` naming
    the folder when it is missing or holds no Parquet file.
    """
    if not folder.is_dir():
        raise InputError(f"data folder not found: {folder}")
    files = parquet_files_below(folder)
    if not files:
        raise InputError(f"no .parquet file under {folder}")
    of_split = [
        p
        for p in files
        if p.name == f"{split}.parquet" or p.name.startswith(f"{split}-") or p.parent.name == split
    ]
    return of_split or files


def parquet_schema(path: Path) -> pa.Schema:
    """The schema of one Parquet file; :class:`InputError` naming it if unreadable."""
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"cannot read Parquet file {path}: {error}") from None


def read_columns(
    files: Sequence[Path],
    required: Sequence[str],
    optional: Sequence[str] = (),
) -> dict[str, list[Any]]:
    """Read columns of one table split over ``files`` into Python lists.

    Raises :class:`InputError` naming the file when it is unreadable or lacks a
    required column (and listing the columns it has).
    """
    out: dict[str, list[Any]] = {name: [] for name in [*required, *optional]}
    for path in files:
        schema = parquet_schema(path)
        missing = [name for name in required if name not in schema.names]
        if missing:
            raise InputError(
                f"{path} lacks column(s) {missing}; it has {schema.names}"
            )
        present = [name for name in [*required, *optional] if name in schema.names]
        try:
            table = pq.read_table(path, columns=present)
        except (OSError, pa.ArrowException) as error:
            raise InputError(f"cannot read Parquet file {path}: {error}") from None
        for name in out:
            if name in present:
                out[name].extend(table.column(name).to_pylist())
            else:
                out[name].extend([None] * table.num_rows)
    return out


def iter_column(files: Sequence[Path], column: str, batch_rows: int = 64) -> Iterator[Any]:
    """Yield the values of one (large, e.g. image) column row by row.

    Reads record batches so that a table of page images never sits in memory
    at once.
    """
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
            if column not in parquet.schema_arrow.names:
                raise InputError(
                    f"{path} lacks column {column!r}; it has {parquet.schema_arrow.names}"
                )
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=[column]):
                yield from batch.column(0).to_pylist()
        except (OSError, pa.ArrowException) as error:
            raise InputError(f"cannot read Parquet file {path}: {error}") from None


_IMAGE_SUFFIXES = {
    b"\x89PNG": ".png",
    b"\xff\xd8\xff": ".jpg",
    b"GIF8": ".gif",
    b"RIFF": ".webp",
    b"BM": ".bmp",
}


def _suffix_for(data: bytes, name: str | None) -> str:
    if name:
        suffix = Path(name).suffix.lower()
        if suffix:
            return suffix
    for magic, suffix in _IMAGE_SUFFIXES.items():
        if data.startswith(magic):
            return suffix
    return ".img"


def extract_image(value: Any, image_dir: Path, base_dir: Path, where: str) -> Path:
    """Turn one image cell of a Hugging Face Parquet file into a file path.

    ``value`` is the ``{"bytes", "path"}`` struct Hugging Face writes. Embedded
    bytes are written to ``image_dir/<sha256><suffix>`` (once: an existing file
    of that name already holds them); a struct without bytes names a file
    relative to ``base_dir``. ``where`` names the file and row in errors.
    """
    if value is None:
        raise InputError(f"{where}: the image cell is empty")
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, name = bytes(value), None
    else:
        raise InputError(
            f"{where}: expected an image struct {{bytes, path}}, got {type(value).__name__}"
        )
    if data:
        target = image_dir / (hashlib.sha256(data).hexdigest() + _suffix_for(data, name))
        if not target.is_file():
            image_dir.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(target.suffix + ".partial")
            partial.write_bytes(data)
            partial.replace(target)  # atomic: an interrupted write never leaves a half image
        return target
    if name:
        path = Path(name)
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise InputError(f"{where}: image file not found: {path}")
        return path
    raise InputError(f"{where}: the image cell has neither bytes nor a path")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file; :class:`InputError` naming the file and line on bad JSON."""
    return [row for _, row in iter_jsonl(path)]


__all__ = [
    "PARQUET_DEPTH",
    "parquet_files_below",
    "find_parquet_files",
    "parquet_schema",
    "read_columns",
    "iter_column",
    "extract_image",
    "read_jsonl",
]
