"""The two shapes an evaluation data set takes once loaded.

* :class:`CandidateListTask` (MMEB): every query ranks *its own* short list of
  candidates and the positive is the first one; the metric is Precision@1.
* :class:`RetrievalTask` (ViDoRe, BEIR): every query ranks one shared corpus and
  graded relevance judgments (qrels) say which documents are relevant; the
  metrics are nDCG@k, recall@k and MRR.

Loaders return these; the budget sweep encodes their items once and scores them
at every budget. Images stay paths so that loading a data set costs no memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from metaembed.errors import InputError
from metaembed.model.items import Item


@dataclass(frozen=True)
class CandidateListTask:
    """Queries that each rank their own candidate list (MMEB layout).

    ``candidates`` holds every distinct candidate of the data set once (so it is
    encoded once); ``candidate_lists[i]`` lists, for query ``i``, indices into
    ``candidates`` in the published order, the positive first.
    ``meta_task`` and ``split`` ("IND" / "OOD") place the data set in the
    benchmark's averages; ``None`` for a data set outside the published list.
    """

    name: str
    queries: list[Item]
    candidates: list[Item]
    candidate_lists: list[list[int]]
    meta_task: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if len(self.candidate_lists) != len(self.queries):
            raise InputError(
                f"data set {self.name!r}: {len(self.queries)} queries but "
                f"{len(self.candidate_lists)} candidate lists"
            )
        for position, candidate_list in enumerate(self.candidate_lists):
            if not candidate_list:
                raise InputError(f"data set {self.name!r}: query {position} has no candidates")


@dataclass(frozen=True)
class RetrievalTask:
    """Queries ranking one shared corpus, judged by graded qrels (BEIR layout).

    ``doc_ids[j]`` is the id of corpus row ``j``. Several rows may share an id
    (ViDoRe v1 pages that appear twice); a document's score is then the maximum
    over its rows. ``qrels[query_id][doc_id]`` is an integer grade (0 = judged
    not relevant). Ids are strings. ``ignore_identical_ids`` drops a document
    whose id equals the query's id from that query's ranking (BEIR's convention
    for corpora that contain the queries).
    """

    name: str
    query_ids: list[str]
    queries: list[Item]
    doc_ids: list[str]
    corpus: list[Item]
    qrels: dict[str, dict[str, int]]
    ignore_identical_ids: bool = False

    def __post_init__(self) -> None:
        if len(self.query_ids) != len(self.queries):
            raise InputError(
                f"data set {self.name!r}: {len(self.query_ids)} query ids for {len(self.queries)} queries"
            )
        if len(self.doc_ids) != len(self.corpus):
            raise InputError(
                f"data set {self.name!r}: {len(self.doc_ids)} document ids for {len(self.corpus)} documents"
            )
        if not self.queries:
            raise InputError(f"data set {self.name!r} has no queries")
        if not self.corpus:
            raise InputError(f"data set {self.name!r} has an empty corpus")


Task = CandidateListTask | RetrievalTask


def _item_key(item: Item) -> list[object]:
    images: list[str] = []
    for image in item.images:
        if isinstance(image, Image.Image):
            # In-memory images have no name: their pixels are their identity.
            images.append(hashlib.sha256(image.tobytes()).hexdigest())
        else:
            images.append(os.fspath(image))
    return [item.text, images, item.instruction]


def fingerprint_items(items: Sequence[Item]) -> str:
    """A SHA-256 of the items' texts, image paths and instructions, in order.

    Used as the cache key of a side of a data set: if a data file changes, its
    cached embeddings no longer match and are encoded again.
    """
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(_item_key(item), ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def check_image_files(items: Sequence[Item], where: str) -> None:
    """Raise :class:`InputError` naming the first image path that is not a file.

    Checking up front turns an encode that would fail an hour in (on the
    900th batch) into an error at load time.
    """
    missing: list[str] = []
    seen: set[str] = set()
    for item in items:
        for image in item.images:
            if isinstance(image, Image.Image):
                continue
            key = os.fspath(image)
            if key in seen:
                continue
            seen.add(key)
            if not Path(key).is_file():
                missing.append(key)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{where}: image file not found: {missing[0]}{more}")


__all__ = [
    "CandidateListTask",
    "RetrievalTask",
    "Task",
    "fingerprint_items",
    "check_image_files",
]
