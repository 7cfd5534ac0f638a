"""The held-out documentation collection that ships with the package.

``heldout_docs.json.gz`` holds pages of ten Python libraries' manuals (Flask, Werkzeug, Jinja,
Click, Requests, attrs, pytest, Python-Markdown, Babel, setuptools; the Debian ``python-*-doc``
packages, free software licences) that the built-in model never saw in training, and queries
that each target one part of a page: a sentence taken out of it, or one of its headings. It is
built by ``python -m metaembed.quickstart.docpages``; :func:`write_beir_folder` unpacks it into the BEIR layout
that :mod:`metaembed.evaluation.beir` reads.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

from metaembed.errors import InputError

COLLECTION_FILE = Path(__file__).resolve().parent / "heldout_docs.json.gz"


def load_collection(path: str | Path = COLLECTION_FILE) -> dict[str, Any]:
    """``{"corpus": [{_id, title, text}], "queries": [{_id, text, kind}], "qrels": [[qid, doc, grade]], "manuals": [...]}``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the collection {path} is missing; write it with `python -m metaembed.quickstart.docpages`")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def subset(collection: dict[str, Any], max_pages: int | None) -> dict[str, Any]:
    """The first ``max_pages`` pages (every ``len/max_pages``-th, to keep all manuals) and their queries."""
    if max_pages is None or max_pages >= len(collection["corpus"]):
        return collection
    if max_pages < 1:
        raise InputError(f"max_pages must be at least 1, got {max_pages}")
    step = len(collection["corpus"]) / max_pages
    corpus = [collection["corpus"][int(i * step)] for i in range(max_pages)]
    kept = {page["_id"] for page in corpus}
    qrels = [row for row in collection["qrels"] if row[1] in kept]
    asked = {row[0] for row in qrels}
    queries = [query for query in collection["queries"] if query["_id"] in asked]
    return {**collection, "corpus": corpus, "queries": queries, "qrels": qrels}


def write_beir_folder(collection: dict[str, Any], folder: str | Path) -> Path:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv`` into ``folder``."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus", "queries"):
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for row in collection[name]:
                handle.write(json.dumps(row) + "\n")
    with (folder / "qrels" / "test.tsv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["query-id", "corpus-id", "score"])
        writer.writerows(collection["qrels"])
    return folder


__all__ = ["COLLECTION_FILE", "load_collection", "subset", "write_beir_folder"]
