"""The public training sets' layouts: MMEB-train / MoCa and ViDoRe / ColPali, and the config's data entries.

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

Image paths are relative to an image root on the local disk; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from metaembed.errors import InputError
from metaembed.model.items import Item
from metaembed.registry import Registry
from metaembed.training.examples import (
    file_source,
    has_data_files,
    load_pairs,
    ParquetRecords,
    read_image,
    read_records,
    TrainingExample,
    TrainingSource,
)

IMAGE_PLACEHOLDER = "<|image_1|>"


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


def _mmeb_side(text: Any, image: Any, image_root: Path) -> Item | None:
    """One MMEB/MoCa side; ``None`` when it has neither text nor image (e.g. no hard negative)."""
    if isinstance(text, list):  # some releases store one-element lists
        text = text[0] if text else None
    if isinstance(image, list):
        image = image[0] if image else None
    if isinstance(text, str):
        text = text.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "").strip() or None
    picture = read_image(image, image_root)
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
        subsets = {p.name: default for p in sorted(root.iterdir()) if p.is_dir() and has_data_files(p)}
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
                read_records(folder),
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
        if isinstance(records, ParquetRecords):
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
    page = read_image(record.get("image"), image_root) or read_image(record.get("image_filename"), image_root)
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
    return file_source(path, image_root, name, example_from_colpali, weight, max_samples, seed, rows=_QueriedRows)


class DataFormat:
    """A format of the ``data`` entries of a training config: how a :class:`DataSpec` becomes sources.

    A format is a small object with a ``name`` (the entry's ``format``) and ``load(spec, seed)``
    returning the entry's :class:`TrainingSource` list; registering one in :data:`DATA_FORMATS`
    makes its name a valid ``format``.
    """

    name: str = ""

    def load(self, spec: "DataSpec", seed: int) -> list[TrainingSource]:
        raise NotImplementedError


#: The training data formats by name: ``pairs``, ``mmeb`` and ``colpali``, and any registered plug-in.
DATA_FORMATS: Registry[DataFormat] = Registry("training data format")


class PairsFormat(DataFormat):
    """Our own ``pairs`` JSONL (:func:`~metaembed.training.examples.load_pairs`)."""

    name = "pairs"

    def load(self, spec: "DataSpec", seed: int) -> list[TrainingSource]:
        return [load_pairs(spec.path, spec.image_root, spec.name, spec.weight, spec.max_samples, seed)]


class ColPaliFormat(DataFormat):
    """The ColPali training set (:func:`load_colpali_train`)."""

    name = "colpali"

    def load(self, spec: "DataSpec", seed: int) -> list[TrainingSource]:
        return [load_colpali_train(spec.path, spec.image_root, spec.name or "colpali_train", spec.weight,
                                   spec.max_samples, seed)]


class MmebFormat(DataFormat):
    """MMEB-train / MoCa subsets (:func:`load_mmeb_train`); ``subsets: moca`` is the paper's mixture."""

    name = "mmeb"

    def load(self, spec: "DataSpec", seed: int) -> list[TrainingSource]:
        subsets = spec.subsets
        if subsets == "moca":
            subsets = MOCA_MIXTURE
        elif isinstance(subsets, (list, tuple)):
            subsets = {name: SubsetSpec(spec.weight, spec.max_samples) for name in subsets}
        return load_mmeb_train(spec.path, subsets, spec.image_root, seed, default=SubsetSpec(spec.weight, spec.max_samples))


for _format in (PairsFormat(), MmebFormat(), ColPaliFormat()):
    DATA_FORMATS.register(_format)


@dataclass
class DataSpec:
    """One entry of the ``data`` list of a training config.

    ``format`` names a :data:`DATA_FORMATS` member (``"pairs"``, ``"mmeb"`` or ``"colpali"``);
    ``path`` the file or folder; ``image_root`` where relative image paths start; ``weight`` /
    ``max_samples`` the mixture weight and cap (for ``"mmeb"``: defaults of every subset unless
    ``subsets`` names them, or ``subsets: moca`` for the paper's mixture).
    """

    path: str
    format: str = "pairs"
    image_root: str | None = None
    name: str | None = None
    weight: float = 1.0
    max_samples: int | None = None
    subsets: Any = None

    def load(self, seed: int = 0) -> list[TrainingSource]:
        """The training sources this entry describes (:class:`InputError` naming the formats for an unknown one)."""
        return DATA_FORMATS.get(self.format).load(self, seed)


__all__ = [
    "DataFormat",
    "DATA_FORMATS",
    "SubsetSpec",
    "MOCA_MIXTURE",
    "DataSpec",
    "example_from_mmeb",
    "example_from_colpali",
    "load_mmeb_train",
    "load_colpali_train",
]
