"""A BEIR-style folder: evaluate your own collection.

Layout (BEIR's, with optional images on either side)::

    <folder>/corpus.jsonl     {"_id": "d1", "title": "...", "text": "...", "image": "pages/1.png"}
    <folder>/queries.jsonl    {"_id": "q1", "text": "...", "image": "...", "instruction": "..."}
    <folder>/qrels/test.tsv   query-id<TAB>corpus-id<TAB>score   (a header line, graded scores)

``title`` and ``text`` are joined with a space (BEIR's convention); ``image``
names one image and ``images`` a list, relative to the folder; ``instruction``
is an optional per-item instruction. Every row needs text or an image. ``root``
may be one such folder or a folder of them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from metaembed.errors import InputError
from metaembed.evaluation.files import read_jsonl
from metaembed.evaluation.kinds import BENCHMARK_KINDS, BenchmarkKind
from metaembed.evaluation.tasks import RetrievalTask, check_image_files
from metaembed.model.items import Item


def is_beir_folder(folder: Path) -> bool:
    """Whether ``folder`` holds ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``."""
    return (folder / "corpus.jsonl").is_file() and (folder / "queries.jsonl").is_file() and (
        folder / "qrels"
    ).is_dir()


def list_datasets(root: str | Path) -> list[str]:
    """The BEIR folders under ``root`` (``root`` itself when it is one), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"BEIR folder not found: {root}")
    if is_beir_folder(root):
        return [root.name]
    return sorted(p.name for p in root.iterdir() if p.is_dir() and is_beir_folder(p))


def _row_item(row: dict[str, Any], folder: Path, where: str) -> Item:
    parts = [row.get("title"), row.get("text")]
    text = " ".join(str(p) for p in parts if p) or None
    images: list[Path] = []
    if row.get("image"):
        images.append(folder / str(row["image"]))
    extra = row.get("images") or []
    if not isinstance(extra, list):
        raise InputError(f"{where}: 'images' must be a list of paths, got {type(extra).__name__}")
    images.extend(folder / str(p) for p in extra)
    if text is None and not images:
        raise InputError(f"{where}: the row has neither text nor an image")
    return Item(text=text, images=tuple(images), instruction=row.get("instruction") or None)


def _read_side(path: Path, folder: Path) -> tuple[list[str], list[Item]]:
    ids: list[str] = []
    items: list[Item] = []
    seen: set[str] = set()
    for number, row in enumerate(read_jsonl(path), start=1):
        where = f"{path}, row {number}"
        if "_id" not in row:
            raise InputError(f"{where}: the row has no '_id'")
        row_id = str(row["_id"])
        if row_id in seen:
            raise InputError(f"{where}: duplicate _id {row_id!r}")
        seen.add(row_id)
        ids.append(row_id)
        items.append(_row_item(row, folder, where))
    if not ids:
        raise InputError(f"{path} is empty")
    return ids, items


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Read a BEIR ``qrels/<split>.tsv`` (header ``query-id corpus-id score``) into graded qrels."""
    if not path.is_file():
        raise InputError(f"qrels file not found: {path}")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for number, fields in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not fields or (number == 1 and fields[0] == "query-id"):
                continue
            if len(fields) < 3:
                raise InputError(f"{path}, line {number}: expected query-id, corpus-id, score")
            try:
                score = int(float(fields[2]))
            except ValueError:
                raise InputError(f"{path}, line {number}: score {fields[2]!r} is not a number") from None
            qrels.setdefault(fields[0], {})[fields[1]] = score
    return qrels


def load_dataset(
    root: str | Path,
    name: str | None = None,
    *,
    split: str = "test",
    ignore_identical_ids: bool = True,
) -> RetrievalTask:
    """Load a BEIR-style folder (``root``, or ``root/name``) as a :class:`RetrievalTask`.

    Queries absent from the qrels are dropped (they cannot be scored); qrels
    naming unknown ids raise :class:`InputError`. ``ignore_identical_ids``
    follows BEIR: a document whose id equals the query's id is not ranked.
    """
    root = Path(root)
    folder = root if name is None or (root.name == name and is_beir_folder(root)) else root / name
    if not is_beir_folder(folder):
        raise InputError(
            f"{folder} is not a BEIR folder: expected corpus.jsonl, queries.jsonl and qrels/{split}.tsv"
        )
    doc_ids, corpus = _read_side(folder / "corpus.jsonl", folder)
    all_query_ids, all_queries = _read_side(folder / "queries.jsonl", folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = read_qrels(qrels_path)
    unknown_queries = set(qrels) - set(all_query_ids)
    if unknown_queries:
        raise InputError(f"{qrels_path} names query ids absent from queries.jsonl, e.g. {sorted(unknown_queries)[:3]}")
    unknown_docs = {d for judged in qrels.values() for d in judged} - set(doc_ids)
    if unknown_docs:
        raise InputError(f"{qrels_path} names corpus ids absent from corpus.jsonl, e.g. {sorted(unknown_docs)[:3]}")
    kept = [(qid, item) for qid, item in zip(all_query_ids, all_queries) if qid in qrels]
    check_image_files(corpus, str(folder / "corpus.jsonl"))
    check_image_files([item for _, item in kept], str(folder / "queries.jsonl"))
    return RetrievalTask(
        name=folder.name,
        query_ids=[qid for qid, _ in kept],
        queries=[item for _, item in kept],
        doc_ids=doc_ids,
        corpus=corpus,
        qrels=qrels,
        ignore_identical_ids=ignore_identical_ids,
    )


class BEIRKind(BenchmarkKind):
    """A BEIR-layout folder (or a folder of them): a user's own collection; nDCG@5."""

    name = "beir"

    def holds(self, root: Path) -> bool:
        return bool(list_datasets(root))

    def dataset_names(self, root: Path) -> list[str]:
        return list_datasets(root)

    def load(self, root: Path, name: str, *, image_root: Path | None = None, image_dir: Path | None = None):
        return load_dataset(root, name)


BENCHMARK_KINDS.register(BEIRKind())

__all__ = ["BEIRKind", "is_beir_folder", "list_datasets", "load_dataset", "read_qrels"]
