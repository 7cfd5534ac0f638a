"""Training examples, training sources, and the *pairs* file format.

A training example is a query, its positive candidate and zero or more hard negatives; each side is
an :class:`~metaembed.model.items.Item` (text, image(s), or both, with an optional instruction).
A :class:`TrainingSource` is a named, weighted sequence of examples read from local files (nothing
is downloaded); :mod:`metaembed.training.public_sets` adds the public training sets' layouts.

The *pairs* layout (our own, JSONL or Parquet): one record per example with fields ``query``,
``positive`` and optional ``negatives`` (a list) or ``negative``; each value is a string (text) or
an object with ``text`` / ``image`` / ``images`` / ``instruction`` (in Parquet, a struct column).
Optional top-level ``instruction`` applies to the query. Image paths are relative to
``image_root`` (default: the file's folder); embedded ``{bytes, path}`` images are read too.

Rows are converted to examples lazily, when the data loader asks for them, so a Parquet file with
embedded page images is not decoded up front.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from metaembed.errors import InputError
from metaembed.model.items import Item, to_item


@dataclass(frozen=True)
class TrainingExample:
    """One contrastive example: a query, its positive and its own hard negatives (maybe none)."""

    query: Item
    positive: Item
    negatives: tuple[Item, ...] = ()


class TrainingSource:
    """A named, weighted, optionally capped sequence of :class:`TrainingExample`.

    ``records`` is any sequence of raw rows (dicts); ``convert`` turns one row into an example
    when it is accessed. ``max_samples`` keeps a seeded random subset of that size.
    """

    def __init__(
        self,
        name: str,
        records: Sequence[Mapping[str, Any]],
        convert: Callable[[Mapping[str, Any]], TrainingExample],
        weight: float = 1.0,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if not weight > 0:
            raise InputError(f"source {name!r}: weight must be > 0, got {weight!r}")
        self.name = name
        self.weight = float(weight)
        self._records = records
        self._convert = convert
        indices = list(range(len(records)))
        if max_samples is not None:
            if max_samples < 1:
                raise InputError(f"source {name!r}: max_samples must be >= 1, got {max_samples}")
            if max_samples < len(indices):
                indices = sorted(random.Random(seed).sample(indices, max_samples))
        self._indices = indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, position: int) -> TrainingExample:
        record = self._records[self._indices[position]]
        try:
            return self._convert(record)
        except InputError as error:
            raise InputError(f"source {self.name!r}, example {position}: {error}") from None

    def __repr__(self) -> str:
        return f"TrainingSource({self.name!r}, {len(self)} examples, weight={self.weight})"


class ParquetRecords(Sequence[Mapping[str, Any]]):
    """Rows of one or more Parquet files, memory-mapped and turned into dicts one at a time."""

    def __init__(self, files: Sequence[Path], columns: Sequence[str] | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for path in files:
            table = pq.read_table(path, memory_map=True)
            if columns is not None:
                table = table.select([c for c in columns if c in table.column_names])
            tables.append(table)
        self._table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._table.slice(index, 1).to_pylist()[0]


def has_data_files(folder: Path) -> bool:
    """Whether ``folder`` directly holds .parquet, .jsonl or .json files."""
    return any(p.suffix in (".parquet", ".jsonl", ".json") for p in folder.iterdir())


def read_records(path: Path) -> Sequence[Mapping[str, Any]]:
    """Records of a ``.jsonl`` / ``.json`` (list) / ``.parquet`` file, or of all such files in a folder."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".jsonl", ".json"))
        if not files:
            raise InputError(f"no .parquet, .jsonl or .json files in {path}")
        parquet = [p for p in files if p.suffix == ".parquet"]
        if parquet:
            return ParquetRecords(parquet)
        records: list[Mapping[str, Any]] = []
        for file in files:
            records.extend(read_records(file))
        return records
    if not path.is_file():
        raise InputError(f"training data not found: {path}")
    if path.suffix == ".parquet":
        return ParquetRecords([path])
    if path.suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise InputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        return records
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    raise InputError(f"cannot read training data {path}: expected .jsonl, .json or .parquet")


def read_image(value: Any, image_root: Path) -> Image.Image | Path | None:
    """An image from a relative path, an embedded ``{bytes, path}`` struct or raw bytes; ``None`` if empty."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        return read_image(value.get("path"), image_root)
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, (str, Path)):
        return image_root / value
    raise InputError(f"cannot read an image from a value of type {type(value).__name__}")


def _side(value: Any, image_root: Path, instruction: str | None = None) -> Item:
    """One side of a *pairs* record: a string (text) or an item object with relative image paths."""
    if isinstance(value, str):
        return to_item(value, instruction=instruction)
    if isinstance(value, Mapping):
        spec = {k: v for k, v in value.items() if v is not None}
        if "image" in spec:
            spec["image"] = read_image(spec["image"], image_root)
            if spec["image"] is None:
                del spec["image"]
        if "images" in spec:
            spec["images"] = [img for img in (read_image(v, image_root) for v in spec["images"]) if img is not None]
        return to_item(spec, instruction=instruction)
    raise InputError(f"expected a string or an object with 'text'/'image', got {type(value).__name__}")


def example_from_record(record: Mapping[str, Any], image_root: Path) -> TrainingExample:
    """A :class:`TrainingExample` from one *pairs* record (see the module docstring)."""
    for key in ("query", "positive"):
        if record.get(key) is None:
            raise InputError(f"record has no {key!r}; a pairs record needs 'query' and 'positive'")
    negatives = record.get("negatives")
    if negatives is None:
        negatives = [] if record.get("negative") is None else [record["negative"]]
    return TrainingExample(
        query=_side(record["query"], image_root, record.get("instruction")),
        positive=_side(record["positive"], image_root),
        negatives=tuple(_side(n, image_root) for n in negatives),
    )


def load_pairs(
    path: str | Path,
    image_root: str | Path | None = None,
    name: str | None = None,
    weight: float = 1.0,
    max_samples: int | None = None,
    seed: int = 0,
) -> TrainingSource:
    """Read a *pairs* file (``.jsonl``/``.parquet``) or folder of them as one training source."""
    return file_source(path, image_root, name, example_from_record, weight, max_samples, seed)


def file_source(
    path: str | Path,
    image_root: str | Path | None,
    name: str | None,
    convert: Callable[[Mapping[str, Any], Path], TrainingExample],
    weight: float,
    max_samples: int | None,
    seed: int,
    rows: Callable[[Sequence[Mapping[str, Any]]], Sequence[Mapping[str, Any]]] = lambda records: records,
) -> TrainingSource:
    """A source over the records of a file or folder; images relative to ``image_root`` or the data's folder."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent)
    return TrainingSource(
        name or path.stem,
        rows(read_records(path)),
        lambda record: convert(record, root),
        weight=weight,
        max_samples=max_samples,
        seed=seed,
    )


__all__ = [
    "TrainingExample",
    "TrainingSource",
    "ParquetRecords",
    "example_from_record",
    "load_pairs",
    "file_source",
    "read_records",
    "read_image",
    "has_data_files",
]
