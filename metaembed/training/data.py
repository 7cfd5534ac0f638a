"""Training examples and the loaders that read them from local files.

A training example is a query, its positive candidate and zero or more hard negatives; each side is
an :class:`~metaembed.model.items.Item` (text, image(s), or both, with an optional instruction).
Three on-disk layouts are read, all from local folders (nothing is downloaded):

* **pairs** (our own, JSONL or Parquet): one record per example with fields ``query``,
  ``positive`` and optional ``negatives`` (a list) or ``negative``; each value is a string (text)
  or an object with ``text`` / ``image`` / ``images`` / ``instruction``. Optional top-level
  ``instruction`` applies to the query. Image paths are relative to ``image_root`` (default: the
  file's folder).
* **MMEB-train / MoCa** (``TIGER-Lab/MMEB-train``, MoCa's release): one folder per subset holding
  Parquet or JSONL files with columns ``qry``, ``qry_image_path``, ``pos_text``,
  ``pos_image_path``, ``neg_text``, ``neg_image_path`` (embedded-image columns ``qry_image``,
  ``pos_image``, ``neg_image`` / ``neg_image_0`` as ``{bytes, path}`` are read too). The Phi-3-V
  placeholder ``<|image_1|>`` is stripped (the backbone's processor inserts its own image tokens)
  and the task instruction stays in the query text, as in the official code. Subsets are mixed
  with per-subset sampling weights and caps (:data:`MOCA_MIXTURE` is the paper's).
* **ViDoRe / ColPali train** (``vidore/colpali_train_set``): Parquet with ``query`` and the page
  ``image`` (embedded ``{bytes, path}``) or ``image_filename`` relative to ``image_root``; rows
  without a query are skipped.

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

IMAGE_PLACEHOLDER = "<|image_1|>"


@dataclass(frozen=True)
class TrainingExample:
    """One contrastive example: a query, its positive and its own hard negatives (maybe none)."""

    query: Item
    positive: Item
    negatives: tuple[Item, ...] = ()


@dataclass(frozen=True)
class SubsetSpec:
    """How much of one source enters the mixture: sampling ``weight`` and a cap on examples."""

    weight: float = 1.0
    max_samples: int | None = None


#: The paper's training mixture (official ``moca_data_ratios_v3_nommE5.yaml``): the 20 MMEB-train
#: subsets plus document sets; weights are normalised to sampling probabilities.
MOCA_MIXTURE: dict[str, SubsetSpec] = {
    **{
        name: SubsetSpec(1.0, 50_000)
        for name in (
            "A-OKVQA", "CIRR", "ChartQA", "DocVQA", "InfographicsVQA", "N24News", "VisDial",
            "Visual7W", "WebQA", "ArxivQA", "InfoSeek_it2it", "InfoSeek_it2t", "TAT-DQA",
        )
    },
    **{
        name: SubsetSpec(1.0, 100_000)
        for name in ("ImageNet_1K", "MSCOCO_i2t", "MSCOCO_t2i", "VisualNews_i2t", "VisualNews_t2i")
    },
    "MSCOCO": SubsetSpec(2.0, 100_000),
    "HatefulMemes": SubsetSpec(0.5, 10_000),
    "NIGHTS": SubsetSpec(0.5, 50_000),
    "OK-VQA": SubsetSpec(0.5, 10_000),
    "SUN397": SubsetSpec(0.5, 10_000),
    "VOC2007": SubsetSpec(0.5, 10_000),
    "tevatron_colpali": SubsetSpec(5.0, None),
    "visrag_ind": SubsetSpec(5.0, None),
}


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


class _ParquetRecords(Sequence[Mapping[str, Any]]):
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


def _has_data_files(folder: Path) -> bool:
    return any(p.suffix in (".parquet", ".jsonl", ".json") for p in folder.iterdir())


def _read_records(path: Path) -> Sequence[Mapping[str, Any]]:
    """Records of a ``.jsonl`` / ``.json`` (list) / ``.parquet`` file, or of all such files in a folder."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".jsonl", ".json"))
        if not files:
            raise InputError(f"no .parquet, .jsonl or .json files in {path}")
        parquet = [p for p in files if p.suffix == ".parquet"]
        if parquet:
            return _ParquetRecords(parquet)
        records: list[Mapping[str, Any]] = []
        for file in files:
            records.extend(_read_records(file))
        return records
    if not path.is_file():
        raise InputError(f"training data not found: {path}")
    if path.suffix == ".parquet":
        return _ParquetRecords([path])
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


def _image(value: Any, image_root: Path) -> Image.Image | Path | None:
    """An image from a relative path, an embedded ``{bytes, path}`` struct or raw bytes; ``None`` if empty."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        return _image(value.get("path"), image_root)
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
            spec["image"] = _image(spec["image"], image_root)
            if spec["image"] is None:
                del spec["image"]
        if "images" in spec:
            spec["images"] = [img for img in (_image(v, image_root) for v in spec["images"]) if img is not None]
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
    return _file_source(path, image_root, name, example_from_record, weight, max_samples, seed)


def _file_source(
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
        rows(_read_records(path)),
        lambda record: convert(record, root),
        weight=weight,
        max_samples=max_samples,
        seed=seed,
    )


def _mmeb_side(text: Any, image: Any, image_root: Path) -> Item | None:
    """One MMEB/MoCa side; ``None`` when it has neither text nor image (e.g. no hard negative)."""
    if isinstance(text, list):  # some releases store one-element lists
        text = text[0] if text else None
    if isinstance(image, list):
        image = image[0] if image else None
    if isinstance(text, str):
        text = text.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "").strip() or None
    picture = _image(image, image_root)
    if text is None and picture is None:
        return None
    return Item(text=text, images=(picture,) if picture is not None else ())


def example_from_mmeb(record: Mapping[str, Any], image_root: Path) -> TrainingExample:
    """A :class:`TrainingExample` from one MMEB-train / MoCa row."""

    def first(*keys: str) -> Any:
        for key in keys:
            if record.get(key) not in (None, ""):
                return record[key]
        return None

    query = _mmeb_side(first("qry", "qry_text"), first("qry_image", "qry_image_path", "qry_img_path"), image_root)
    positive = _mmeb_side(first("pos_text"), first("pos_image", "pos_image_path", "pos_img_path"), image_root)
    if query is None or positive is None:
        raise InputError("an MMEB row needs a query ('qry'/'qry_image_path') and a positive ('pos_text'/'pos_image_path')")
    negative = _mmeb_side(first("neg_text"), first("neg_image", "neg_image_0", "neg_image_path"), image_root)
    return TrainingExample(query, positive, (negative,) if negative is not None else ())


def load_mmeb_train(
    root: str | Path,
    subsets: Mapping[str, SubsetSpec | Mapping[str, Any]] | None = None,
    image_root: str | Path | None = None,
    seed: int = 0,
    default: SubsetSpec = SubsetSpec(),
) -> list[TrainingSource]:
    """Read MMEB-train / MoCa subsets from ``root/<Subset>/`` (Parquet or JSONL files).

    ``subsets`` maps subset names to :class:`SubsetSpec` (or ``{"weight", "max_samples"}``);
    ``None`` takes every subset folder under ``root`` with the ``default`` spec. Pass
    :data:`MOCA_MIXTURE` for the paper's mixture (subsets it names that are missing on disk raise).
    Image paths are relative to ``image_root`` (default ``root``).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"MMEB-train folder not found: {root}")
    images = Path(image_root) if image_root is not None else root
    if subsets is None:
        # subset folders are those holding data files (an image folder beside them is not one)
        subsets = {p.name: default for p in sorted(root.iterdir()) if p.is_dir() and _has_data_files(p)}
        if not subsets:
            raise InputError(f"no subset folders in {root}; expected {root}/<Subset>/*.parquet")
    sources = []
    for name, spec in subsets.items():
        spec = spec if isinstance(spec, SubsetSpec) else SubsetSpec(**spec)
        folder = root / name
        if not folder.exists():
            raise InputError(f"MMEB subset {name!r} not found: {folder} does not exist")
        sources.append(
            TrainingSource(
                name,
                _read_records(folder),
                lambda record: example_from_mmeb(record, images),
                weight=spec.weight,
                max_samples=spec.max_samples,
                seed=seed,
            )
        )
    return sources


class _QueriedRows(Sequence[Mapping[str, Any]]):
    """The rows of a table that carry a non-empty ``query`` (found once, without decoding images)."""

    def __init__(self, records: Sequence[Mapping[str, Any]]) -> None:
        self._records = records
        if isinstance(records, _ParquetRecords):
            queries = records._table.column("query").to_pylist()
        else:
            queries = [r.get("query") for r in records]
        self._keep = [i for i, q in enumerate(queries) if isinstance(q, str) and q.strip()]

    def __len__(self) -> int:
        return len(self._keep)

    def __getitem__(self, index):  # type: ignore[override]
        return self._records[self._keep[index]]


def example_from_colpali(record: Mapping[str, Any], image_root: Path) -> TrainingExample:
    """A :class:`TrainingExample` from one ColPali/ViDoRe training row: query text → page image."""
    page = _image(record.get("image"), image_root) or _image(record.get("image_filename"), image_root)
    if page is None:
        raise InputError("a ColPali training row needs an 'image' or an 'image_filename'")
    return TrainingExample(Item(text=record["query"]), Item(images=(page,)))


def load_colpali_train(
    path: str | Path,
    image_root: str | Path | None = None,
    name: str = "colpali_train",
    weight: float = 1.0,
    max_samples: int | None = None,
    seed: int = 0,
) -> TrainingSource:
    """Read a ViDoRe/ColPali training set (Parquet file or folder, or JSONL) as one source."""
    return _file_source(path, image_root, name, example_from_colpali, weight, max_samples, seed, rows=_QueriedRows)


@dataclass
class DataSpec:
    """One entry of the ``data`` list of a training config.

    ``format`` is ``"pairs"``, ``"mmeb"`` or ``"colpali"``; ``path`` the file or folder;
    ``image_root`` where relative image paths start; ``weight`` / ``max_samples`` the mixture
    weight and cap (for ``"mmeb"``: defaults of every subset unless ``subsets`` names them, or
    ``subsets: moca`` for the paper's mixture).
    """

    path: str
    format: str = "pairs"
    image_root: str | None = None
    name: str | None = None
    weight: float = 1.0
    max_samples: int | None = None
    subsets: Any = None

    def load(self, seed: int = 0) -> list[TrainingSource]:
        """The training sources this entry describes."""
        if self.format == "pairs":
            return [load_pairs(self.path, self.image_root, self.name, self.weight, self.max_samples, seed)]
        if self.format == "colpali":
            return [
                load_colpali_train(
                    self.path, self.image_root, self.name or "colpali_train", self.weight, self.max_samples, seed
                )
            ]
        if self.format == "mmeb":
            subsets = self.subsets
            if subsets == "moca":
                subsets = MOCA_MIXTURE
            elif isinstance(subsets, (list, tuple)):
                subsets = {name: SubsetSpec(self.weight, self.max_samples) for name in subsets}
            return load_mmeb_train(
                self.path, subsets, self.image_root, seed, default=SubsetSpec(self.weight, self.max_samples)
            )
        raise InputError(f"unknown data format {self.format!r}; expected 'pairs', 'mmeb' or 'colpali'")


__all__ = [
    "TrainingExample",
    "SubsetSpec",
    "MOCA_MIXTURE",
    "TrainingSource",
    "DataSpec",
    "example_from_record",
    "example_from_mmeb",
    "example_from_colpali",
    "load_pairs",
    "load_mmeb_train",
    "load_colpali_train",
]
