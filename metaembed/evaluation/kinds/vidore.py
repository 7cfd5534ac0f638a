"""ViDoRe v1 (question/page tables) and v2 (BEIR configs) from local copies.

**v1** — one folder per data set (a snapshot of e.g. ``vidore/docvqa_test_subsampled``)
holding ``test-*.parquet`` with columns ``query`` (str or null), ``image``
(``{bytes, path}``) and ``image_filename``. We follow the reference evaluator
(vidore-benchmark ``ViDoReEvaluatorQA``): the corpus is every row's page, keyed
by ``image_filename``, and a file name met on several rows scores the maximum
over them; queries are the non-null ``query`` values with duplicates removed
(first occurrence kept); a query is relevant (grade 1) to the ``image_filename``
of the *last* row that carries it (the reference builds that map with a dict).
colpali-engine's older evaluator did not deduplicate; scores differ slightly.

**v2** — one folder per data set with the configs ``corpus/``, ``queries/`` and
``qrels/`` (each ``test-*.parquet``): ``corpus-id``, ``image``; ``query-id``,
``query``, ``language``; ``query-id``, ``corpus-id``, ``score`` (graded, used as
gain). Ids are integers in the files and compared as strings. A data set whose
queries are in several languages gives two tasks: ``<name>`` (English queries
only) and ``<name>_multilingual`` (all), as in the paper's table. The ``_beir``
copies of the v1 sets use the same layout and load here too.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Sequence

from metaembed.errors import InputError
from metaembed.evaluation.files import (
    extract_image,
    find_parquet_files,
    iter_column,
    parquet_files_below,
    parquet_schema,
    read_columns,
)
from metaembed.evaluation.kinds import BENCHMARK_KINDS, BenchmarkKind
from metaembed.evaluation.tasks import RetrievalTask
from metaembed.model.items import Item

VIDORE_V1_DATASETS: tuple[str, ...] = (
    "arxivqa_test_subsampled",
    "docvqa_test_subsampled",
    "infovqa_test_subsampled",
    "tabfquad_test_subsampled",
    "tatdqa_test",
    "shiftproject_test",
    "syntheticDocQA_artificial_intelligence_test",
    "syntheticDocQA_energy_test",
    "syntheticDocQA_government_reports_test",
    "syntheticDocQA_healthcare_industry_test",
)

#: The seven columns of the paper's ViDoRe v2 table.
VIDORE_V2_DATASETS: tuple[str, ...] = (
    "esg_reports_human_labeled_v2",
    "esg_reports_v2",
    "esg_reports_v2_multilingual",
    "biomedical_lectures_v2",
    "biomedical_lectures_v2_multilingual",
    "economics_reports_v2",
    "economics_reports_v2_multilingual",
)

#: Average nDCG@5 (percent) the paper reports (budget (16,64)); per-budget values are not published.
VIDORE_V2_PAPER_AVERAGE: dict[str, dict[str, float]] = {
    "MetaEmbed-3B": {"16,64": 60.3},
    "MetaEmbed-7B": {"16,64": 61.3},
}

MULTILINGUAL_SUFFIX = "_multilingual"
_ENGLISH = {"english", "en", "eng", "eng-latn"}


def _default_image_dir(folder: Path) -> Path:
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "metaembed-images" / f"{folder.name}-{tag}"


def _page_items(files: list[Path], image_dir: Path, where: str) -> list[Item]:
    pages: list[Item] = []
    row = 0
    for path in files:
        for value in iter_column([path], "image"):
            image = extract_image(value, image_dir, path.parent, f"{where} ({path}, row {row})")
            pages.append(Item(images=(image,)))
            row += 1
    return pages


def is_vidore_v1_table(columns: list[str]) -> bool:
    """Whether a Parquet schema is a ViDoRe v1 question/page table."""
    return {"query", "image", "image_filename"} <= set(columns)


def list_v1_datasets(root: str | Path) -> list[str]:
    """ViDoRe v1 data sets under ``root``: the published ones first, then others, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"ViDoRe folder not found: {root}")
    present = set()
    for folder in root.iterdir():
        files = parquet_files_below(folder) if folder.is_dir() else []
        if files and is_vidore_v1_table(parquet_schema(files[0]).names):
            present.add(folder.name)
    return [n for n in VIDORE_V1_DATASETS if n in present] + sorted(present - set(VIDORE_V1_DATASETS))


def load_v1_dataset(
    root: str | Path,
    name: str,
    *,
    image_dir: str | Path | None = None,
    split: str = "test",
) -> RetrievalTask:
    """Load one ViDoRe v1 data set as a :class:`RetrievalTask` (protocol in the module doc).

    Page images are written once to ``image_dir`` (default: a folder under the
    system's temporary directory named after the data folder) and referred to
    by path.
    """
    folder = Path(root) / name
    files = find_parquet_files(folder, split)
    columns = read_columns(files, required=("query", "image_filename"))
    where = f"ViDoRe v1 data set {name!r}"
    filenames = [str(f) if f is not None else None for f in columns["image_filename"]]
    for row, filename in enumerate(filenames):
        if not filename:
            raise InputError(f"{where}: row {row} has no image_filename")
    pages = _page_items(files, Path(image_dir) if image_dir else _default_image_dir(folder), where)

    query_texts: list[str] = []
    relevant: dict[str, str] = {}
    for query, filename in zip(columns["query"], filenames):
        if query is None:
            continue
        if query not in relevant:
            query_texts.append(query)
        relevant[query] = filename  # the last row wins, as in the reference evaluator
    if not query_texts:
        raise InputError(f"{where}: every 'query' is null; there is nothing to evaluate")
    query_ids = [f"q{i}" for i in range(len(query_texts))]
    qrels = {qid: {relevant[text]: 1} for qid, text in zip(query_ids, query_texts)}
    return RetrievalTask(
        name=name,
        query_ids=query_ids,
        queries=[Item(text=t) for t in query_texts],
        doc_ids=filenames,  # type: ignore[arg-type]  # checked non-empty above
        corpus=pages,
        qrels=qrels,
    )


def _v2_config_files(folder: Path, config: str, split: str) -> list[Path]:
    config_folder = folder / config
    if not config_folder.is_dir():
        raise InputError(f"ViDoRe v2 data set {folder} lacks its '{config}' folder ({config_folder})")
    return find_parquet_files(config_folder, split)


def is_v2_folder(folder: Path) -> bool:
    return all((folder / config).is_dir() for config in ("corpus", "queries", "qrels"))


def _languages(folder: Path, split: str) -> set[str]:
    files = _v2_config_files(folder, "queries", split)
    languages = read_columns(files, required=("query-id",), optional=("language",))["language"]
    return {str(lang).lower() for lang in languages if lang is not None}


def list_v2_datasets(root: str | Path, split: str = "test") -> list[str]:
    """ViDoRe v2 tasks under ``root`` (``root`` itself may be one data set folder).

    A folder with non-English queries lists as ``<name>`` (English) and
    ``<name>_multilingual``; a folder already named ``..._multilingual`` keeps
    all its queries under its own name.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"ViDoRe folder not found: {root}")
    folders = [root] if is_v2_folder(root) else sorted(p for p in root.iterdir() if is_v2_folder(p))
    names: list[str] = []
    for folder in folders:
        names.append(folder.name)
        if not folder.name.endswith(MULTILINGUAL_SUFFIX) and _languages(folder, split) - _ENGLISH:
            names.append(folder.name + MULTILINGUAL_SUFFIX)
    order = {name: position for position, name in enumerate(VIDORE_V2_DATASETS)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def _v2_folder(root: Path, name: str) -> tuple[Path, bool]:
    """The folder of task ``name`` and whether to keep only English queries."""
    if is_v2_folder(root) and name in (root.name, root.name + MULTILINGUAL_SUFFIX):
        base = root
    else:
        base = root / name
    if is_v2_folder(base):
        return base, not name.endswith(MULTILINGUAL_SUFFIX)
    if name.endswith(MULTILINGUAL_SUFFIX):
        stem = name[: -len(MULTILINGUAL_SUFFIX)]
        base = root if root.name == stem else root / stem
        if is_v2_folder(base):
            return base, False
    raise InputError(
        f"ViDoRe v2 data set {name!r} not found under {root}: expected a folder with "
        "corpus/, queries/ and qrels/"
    )


def load_v2_dataset(
    root: str | Path,
    name: str,
    *,
    image_dir: str | Path | None = None,
    split: str = "test",
) -> RetrievalTask:
    """Load one ViDoRe v2 task (BEIR configs in Parquet) as a :class:`RetrievalTask`.

    ``name`` is a folder name, or ``<folder>_multilingual`` for all languages of
    a folder whose plain name keeps only English queries (see
    :func:`list_v2_datasets`). Graded qrels are kept as grades.
    """
    folder, english_only = _v2_folder(Path(root), name)
    where = f"ViDoRe v2 data set {name!r}"
    corpus_files = _v2_config_files(folder, "corpus", split)
    doc_ids = [str(i) for i in read_columns(corpus_files, required=("corpus-id",))["corpus-id"]]
    pages = _page_items(corpus_files, Path(image_dir) if image_dir else _default_image_dir(folder), where)

    queries = read_columns(
        _v2_config_files(folder, "queries", split), required=("query-id", "query"), optional=("language",)
    )
    query_ids: list[str] = []
    texts: list[str] = []
    for qid, text, language in zip(queries["query-id"], queries["query"], queries["language"]):
        if english_only and language is not None and str(language).lower() not in _ENGLISH:
            continue
        if text is None:
            continue
        query_ids.append(str(qid))
        texts.append(text)

    qrel_columns = read_columns(
        _v2_config_files(folder, "qrels", split), required=("query-id", "corpus-id", "score")
    )
    kept = set(query_ids)
    qrels: dict[str, dict[str, int]] = {}
    for qid, doc_id, score in zip(
        qrel_columns["query-id"], qrel_columns["corpus-id"], qrel_columns["score"]
    ):
        if str(qid) in kept:
            qrels.setdefault(str(qid), {})[str(doc_id)] = int(score)
    unknown = {d for judged in qrels.values() for d in judged} - set(doc_ids)
    if unknown:
        raise InputError(
            f"{where}: qrels name corpus ids absent from the corpus, e.g. {sorted(unknown)[:3]}"
        )
    return RetrievalTask(
        name=name,
        query_ids=query_ids,
        queries=[Item(text=t) for t in texts],
        doc_ids=doc_ids,
        corpus=pages,
        qrels=qrels,
    )


class ViDoReV1Kind(BenchmarkKind):
    """ViDoRe v1: one Parquet table of questions and pages per data set; nDCG@5."""

    name = "vidore-v1"
    aliases = ("vidore", "vidore1", "vidore-v1")

    def holds_table(self, columns: Sequence[str]) -> bool:
        return is_vidore_v1_table(list(columns))

    def dataset_names(self, root: Path) -> list[str]:
        return list_v1_datasets(root)

    def load(self, root: Path, name: str, *, image_root: Path | None = None, image_dir: Path | None = None):
        # Extracted pages are named by content hash: one folder serves every data set.
        return load_v1_dataset(root, name, image_dir=image_dir)


class ViDoReV2Kind(BenchmarkKind):
    """ViDoRe v2: ``corpus/ queries/ qrels/`` folders per data set; nDCG@5 beside the paper's average."""

    name = "vidore-v2"
    aliases = ("vidore2", "vidore-v2")
    paper = VIDORE_V2_PAPER_AVERAGE

    def holds(self, root: Path) -> bool:
        return is_v2_folder(root) or any(is_v2_folder(p) for p in root.iterdir() if p.is_dir())

    def dataset_names(self, root: Path) -> list[str]:
        return list_v2_datasets(root)

    def load(self, root: Path, name: str, *, image_root: Path | None = None, image_dir: Path | None = None):
        return load_v2_dataset(root, name, image_dir=image_dir)


BENCHMARK_KINDS.register(ViDoReV1Kind())
BENCHMARK_KINDS.register(ViDoReV2Kind())

__all__ = [
    "ViDoReV1Kind",
    "ViDoReV2Kind",
    "VIDORE_V1_DATASETS",
    "VIDORE_V2_DATASETS",
    "VIDORE_V2_PAPER_AVERAGE",
    "list_v1_datasets",
    "load_v1_dataset",
    "list_v2_datasets",
    "load_v2_dataset",
    "is_vidore_v1_table",
]
