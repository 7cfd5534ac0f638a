"""MMEB (VLM2Vec's Massive Multimodal Embedding Benchmark, 36 data sets) from a local copy.

Expected layout (a snapshot of ``TIGER-Lab/MMEB-eval`` plus its unpacked
``images.zip``)::

    <root>/ImageNet-1K/test-00000-of-00001.parquet
    <root>/N24News/test-00000-of-00001.parquet
    ...
    <root>/eval_images/ImageNet-1K/...   (or <root>/images/..., or image_root=...)

Each Parquet row is one query and its own candidate list: ``qry_text``,
``qry_img_path`` (``""`` for none), ``tgt_text`` and ``tgt_img_path`` (lists of
equal length; the positive is the first). The re-release adds ``qry_inst`` /
``tgt_inst``. Texts carry Phi-3-V's ``<|image_1|>`` placeholder, which is
removed here: the model's own chat template places the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from metaembed.errors import InputError
from metaembed.evaluation.files import find_parquet_files, parquet_files_below, read_columns
from metaembed.evaluation.kinds import BENCHMARK_KINDS, BenchmarkKind
from metaembed.evaluation.tasks import CandidateListTask, check_image_files
from metaembed.model.items import Item

#: The paper's four meta-tasks, each split into in-distribution (IND) and
#: out-of-distribution (OOD) data sets (VLM2Vec's ``DATA_GROUP``).
MMEB_DATASETS: dict[str, dict[str, tuple[str, ...]]] = {
    "Classification": {
        "IND": ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397"),
        "OOD": ("Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211"),
    },
    "VQA": {
        "IND": ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W"),
        "OOD": ("ScienceQA", "VizWiz", "GQA", "TextVQA"),
    },
    "Retrieval": {
        "IND": (
            "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
            "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA",
        ),
        "OOD": ("OVEN", "FashionIQ", "EDIS", "Wiki-SS-NQ"),
    },
    "Visual Grounding": {
        "IND": ("MSCOCO",),
        "OOD": ("RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"),
    },
}

#: Data set name -> (meta-task, "IND" | "OOD").
MMEB_GROUPS: dict[str, tuple[str, str]] = {
    name: (meta_task, split)
    for meta_task, splits in MMEB_DATASETS.items()
    for split, names in splits.items()
    for name in names
}

#: Overall Precision@1 (percent) the paper reports, by model and budget "r_q,r_c".
MMEB_PAPER_OVERALL: dict[str, dict[str, float]] = {
    "MetaEmbed-3B": {"1,1": 65.4, "16,64": 69.1},
    "MetaEmbed-7B": {"1,1": 71.3, "8,16": 74.3, "16,64": 76.6},
    "MetaEmbed-32B": {"1,1": 72.4, "16,64": 78.7},
}

IMAGE_PLACEHOLDER = "<|image_1|>"
_IMAGE_ROOT_NAMES = ("eval_images", "images", "MMEB-eval-images", ".")


def clean_text(text: str | None) -> str | None:
    """Remove the Phi-3-V image placeholder and surrounding blanks; ``""`` becomes ``None``.

    >>> clean_text("<|image_1|>\\nRepresent the given image for classification")
    'Represent the given image for classification'
    >>> clean_text("<|image_1|>") is None
    True
    """
    if text is None:
        return None
    cleaned = text.replace(IMAGE_PLACEHOLDER, "").strip()
    return cleaned or None


def list_datasets(root: str | Path) -> list[str]:
    """Names of the MMEB data sets present under ``root``: the published ones in the
    paper's order, then any other sub-folder holding Parquet files, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"MMEB folder not found: {root}")
    present = {
        p.name for p in root.iterdir() if p.is_dir() and parquet_files_below(p)
    }
    known = [name for name in MMEB_GROUPS if name in present]
    return known + sorted(present - set(MMEB_GROUPS))


def is_mmeb_table(columns: Sequence[str]) -> bool:
    """Whether a Parquet schema is an MMEB evaluation table."""
    return "qry_text" in columns and "tgt_text" in columns


def _resolve_image_root(root: Path, image_root: Path | None, sample: str | None) -> Path:
    if image_root is not None:
        if not image_root.is_dir():
            raise InputError(f"MMEB image folder not found: {image_root}")
        return image_root
    candidates = [(root / name).resolve() for name in _IMAGE_ROOT_NAMES]
    if sample is None:  # a text-only data set: no image to look for
        return candidates[0] if candidates[0].is_dir() else root
    for candidate in candidates:
        if (candidate / sample).is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise InputError(
        f"cannot find MMEB image {sample!r} under any of {tried}; unpack images.zip there "
        "or pass image_root"
    )


def _item(text: str | None, image: str | None, instruction: str | None, image_root: Path) -> Item:
    images = (image_root / image,) if image else ()
    return Item(text=clean_text(text), images=images, instruction=clean_text(instruction))


def load_dataset(
    root: str | Path,
    name: str,
    *,
    image_root: str | Path | None = None,
    split: str = "test",
    check_images: bool = True,
) -> CandidateListTask:
    """Load one MMEB data set as a :class:`CandidateListTask`.

    Identical candidates (same text, image and instruction) are kept once and
    shared between the queries' lists. ``image_root`` defaults to the first of
    ``<root>/eval_images``, ``<root>/images``, ``<root>`` that holds the data
    set's first image. With ``check_images`` every image path is checked up
    front (an :class:`InputError` names the first missing file).
    """
    root = Path(root)
    folder = root / name
    files = find_parquet_files(folder, split)
    columns = read_columns(
        files,
        required=("qry_text", "qry_img_path", "tgt_text", "tgt_img_path"),
        optional=("qry_inst", "tgt_inst"),
    )
    where = f"MMEB data set {name!r} ({files[0]})"
    num_rows = len(columns["qry_text"])
    if num_rows == 0:
        raise InputError(f"{where} has no rows")

    sample = next((p for p in columns["qry_img_path"] if p), None)
    if sample is None:
        sample = next((p for paths in columns["tgt_img_path"] for p in (paths or []) if p), None)
    resolved_root = _resolve_image_root(
        root, Path(image_root) if image_root is not None else None, sample
    )

    queries: list[Item] = []
    candidates: list[Item] = []
    candidate_index: dict[tuple[Any, ...], int] = {}
    candidate_lists: list[list[int]] = []
    for row in range(num_rows):
        texts = columns["tgt_text"][row] or []
        paths = columns["tgt_img_path"][row] or []
        if len(texts) != len(paths):
            raise InputError(
                f"{where}, row {row}: tgt_text has {len(texts)} entries but tgt_img_path has {len(paths)}"
            )
        if not texts:
            raise InputError(f"{where}, row {row}: the candidate list is empty")
        try:
            queries.append(
                _item(columns["qry_text"][row], columns["qry_img_path"][row],
                      columns["qry_inst"][row], resolved_root)
            )
        except InputError as error:
            raise InputError(f"{where}, row {row}, query: {error}") from None
        instruction = columns["tgt_inst"][row]
        indices: list[int] = []
        for position, (text, path) in enumerate(zip(texts, paths)):
            key = (clean_text(text), path or None, clean_text(instruction))
            index = candidate_index.get(key)
            if index is None:
                try:
                    candidates.append(_item(text, path, instruction, resolved_root))
                except InputError as error:
                    raise InputError(f"{where}, row {row}, candidate {position}: {error}") from None
                index = candidate_index[key] = len(candidates) - 1
            indices.append(index)
        candidate_lists.append(indices)

    if check_images:
        check_image_files(queries, where)
        check_image_files(candidates, where)
    meta_task, group_split = MMEB_GROUPS.get(name, (None, None))
    return CandidateListTask(
        name=name,
        queries=queries,
        candidates=candidates,
        candidate_lists=candidate_lists,
        meta_task=meta_task,
        split=group_split,
    )


class MMEBKind(BenchmarkKind):
    """MMEB: Precision@1 per data set, averaged per meta-task, per IND / OOD split and overall."""

    name = "mmeb"
    headline_metric = "precision@1"
    headline_group = "Overall"
    paper = MMEB_PAPER_OVERALL

    def holds_table(self, columns: Sequence[str]) -> bool:
        return is_mmeb_table(columns)

    def dataset_names(self, root: Path) -> list[str]:
        return list_datasets(root)

    def load(self, root: Path, name: str, *, image_root: Path | None = None, image_dir: Path | None = None):
        return load_dataset(root, name, image_root=image_root)

    def groups(self, result: Any) -> dict[str, list[str]]:
        # Data sets outside the published list count only in Overall.
        groups: dict[str, list[str]] = {}
        for meta_task in MMEB_DATASETS:
            members = [n for n in result.datasets if result.info[n].get("meta_task") == meta_task]
            if members:
                groups[meta_task] = members
        for split in ("IND", "OOD"):
            members = [n for n in result.datasets if result.info[n].get("split") == split]
            if members:
                groups[split] = members
        groups[self.headline_group] = list(result.datasets)
        return groups

    def sections(self, result: Any) -> list[tuple[str | None, list[str]]]:
        sections: dict[str | None, list[str]] = {}
        for name in result.datasets:
            sections.setdefault(result.info[name].get("meta_task"), []).append(name)
        return list(sections.items())

    def notes(self, result: Any) -> list[str]:
        published = len(MMEB_GROUPS)
        if len(result.datasets) < published:
            return [f"Averages cover the {len(result.datasets)} of {published} MMEB data sets evaluated here."]
        return []


BENCHMARK_KINDS.register(MMEBKind())

__all__ = [
    "MMEBKind",
    "MMEB_DATASETS",
    "MMEB_GROUPS",
    "MMEB_PAPER_OVERALL",
    "clean_text",
    "list_datasets",
    "load_dataset",
    "is_mmeb_table",
]
