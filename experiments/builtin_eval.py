"""Evaluate the trained variants and the baselines on the held-out manuals, every budget, per query.

Every model goes through :func:`metaembed.evaluation.run_sweep` (``per_query=True``) on the BEIR
folder unpacked from the packaged held-out collection; results land in
``<out>/eval/<name>/results.json``. The MetaEmbed models share one float32 cache of MiniLM's
frozen page states (one-way attention leaves them untouched), so each page is run through the
encoder once for all of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

#: Rows of the token-level baseline (d): word pieces per query (99% of the held-out queries fit)
#: and per page (MiniLM's 256).
TOKEN_ROWS = (64, 256)


def heldout_folder(out: Path) -> Path:
    from metaembed.quickstart.collection import load_collection, write_beir_folder

    folder = out / "heldout"
    if not (folder / "corpus.jsonl").is_file():
        write_beir_folder(load_collection(), folder)
    return folder


def _sweep(model, folder: Path, target: Path, ladder: str, name: str):
    from metaembed.evaluation import run_sweep

    if (target / "results.json").is_file():
        print(f"{name}: evaluated before", flush=True)
        return
    result = run_sweep(model, folder, out_dir=target, kind="beir", ladder=ladder, batch_size=32,
                       model_name=name, per_query=True, show_progress=False)
    average = result.groups.get("Average", {})
    print(f"{name}: " + ", ".join(f"{b} {v:.3f}" for b, v in average.items()), flush=True)


def evaluate_all(out: Path, seeds: Sequence[int], variants: Sequence[str], wait_s: float = 0.0) -> None:
    """Evaluate what is trained; with ``wait_s``, wait up to that long for runs still training."""
    from metaembed.model import MetaEmbedModel
    from metaembed.model.backbones.encoder import FrozenStateCache
    from metaembed.quickstart.baselines import MeanPooledStates, TokenLevelStates
    from metaembed.quickstart.recipe import Recipe, build_model

    started = time.time()
    folder = heldout_folder(out)
    ladder = Recipe().ladder
    cache = FrozenStateCache(torch.float32)
    untrained = build_model(Recipe(), "mmr")
    untrained.adapter.state_cache = cache
    _sweep(untrained, folder, out / "eval" / "untrained", ladder, "untrained")
    _sweep(MeanPooledStates(untrained), folder, out / "eval" / "sentence-transformers", "1,1", "sentence-transformers")
    names = [f"{variant}-seed{seed}" for seed in seeds for variant in variants]
    trained = lambda name: (out / "models" / name / "training.json").is_file()  # noqa: E731
    # (d) is the most expensive to score (64 x 256 vectors per query-page pair): after the models
    # trained so far, before waiting for the others
    tokens = TokenLevelStates(untrained, query_vectors=TOKEN_ROWS[0], candidate_vectors=TOKEN_ROWS[1])
    pending = [n for n in names if trained(n)] + ["token-level"] + [n for n in names if not trained(n)]
    for name in pending:
        if name == "token-level":
            _sweep(tokens, folder, out / "eval" / name, f"{TOKEN_ROWS[0]},{TOKEN_ROWS[1]}", name)
            continue
        while not trained(name) and wait_s > 0 and time.time() < started + wait_s:
            time.sleep(20)
        if not trained(name):
            print(f"{name}: not trained, skipped", flush=True)
            continue
        model = MetaEmbedModel.from_pretrained(out / "models" / name)
        model.adapter.state_cache = cache
        _sweep(model, folder, out / "eval" / name, "1,1" if name.startswith("single_vector") else ladder, name)
    lengths = out / "eval" / "token-level" / "lengths.json"
    if not lengths.is_file():
        corpus = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
        tokenizer = untrained.tokenizer
        counts = [min(TOKEN_ROWS[1], len(tokenizer(row["text"])["input_ids"])) for row in corpus]
        lengths.write_text(json.dumps({"mean_vectors_per_page": sum(counts) / len(counts), "pages": len(counts)}))


__all__ = ["evaluate_all", "heldout_folder", "TOKEN_ROWS"]
