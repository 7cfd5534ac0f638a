"""Storage codecs on real embeddings: bytes per vector against top-10 overlap with exact fp32, per budget.

The shipped model (``metaembed-minilm``: 384-d, 16 page vectors) encodes once, cached under
``runs/codecs/`` (``--cache``):

* the packaged held-out collection (500 pages of ten Python libraries' manuals, 1,098 queries
  with qrels: :mod:`metaembed.quickstart.collection`), and
* ``--extra-pages`` pages of the *training* manual python3.11-doc
  (:mod:`metaembed.quickstart.docpages`), added to the held-out pages as a larger corpus
  (distractors: the held-out qrels still score nDCG@10 on it).

For each corpus, codec and budget it prints bytes per vector (and the ratio to float16), the
top-10 overlap with exact fp32 search (the fraction of fp32's top 10 a codec's top 10 holds,
averaged over queries), nDCG@10 beside fp32's, the codec's training time and the search
latency relative to float16 on the same index sizes. Every search goes through
:class:`~metaembed.index.MultiVectorIndex` (the codec's own scoring path)::

    nice -n 19 python -m benchmarks.codecs                      # encodes once, then measures
    nice -n 19 python -m benchmarks.codecs --out benchmarks/results/codecs-zen3-avx2

Latency is taken on whatever machine runs it; the committed file says if that machine was shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODEL = "metaembed-minilm"
BUDGETS = ("1,1", "2,4", "4,8", "8,16")
K = 10


def _pages_text(collection: dict[str, Any]) -> list[str]:
    return [page["text"] for page in collection["corpus"]]


def encode_all(cache: Path, extra_pages: int) -> None:
    """Encode the held-out pages and queries and ``extra_pages`` python3.11-doc pages into ``cache`` (once)."""
    from metaembed.model import MetaEmbedModel
    from metaembed.quickstart import docpages
    from metaembed.quickstart.collection import load_collection

    cache.mkdir(parents=True, exist_ok=True)
    model = None
    collection = load_collection()
    jobs = {
        "heldout_pages": lambda m: m.encode_candidates(_pages_text(collection), batch_size=16),
        "heldout_queries": lambda m: m.encode_queries([q["text"] for q in collection["queries"]], batch_size=64),
    }
    if extra_pages:
        manual = {"python3.11-doc": docpages.TRAIN_MANUALS["python3.11-doc"]}
        pages = docpages.collect(manual, extra_pages, seed=0)
        jobs[f"python_pages_{extra_pages}"] = lambda m: m.encode_candidates([p.text for p in pages], batch_size=16)
    for name, job in jobs.items():
        path = cache / f"{name}.npy"
        if path.exists():
            continue
        if model is None:
            model = MetaEmbedModel.from_pretrained(MODEL)
        started = time.perf_counter()
        vectors = job(model)
        np.save(path, vectors.numpy().astype(np.float32))
        print(f"encoded {name}: {tuple(vectors.shape)} in {time.perf_counter() - started:.0f}s", flush=True)
