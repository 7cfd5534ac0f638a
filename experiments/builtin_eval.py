"""Evaluate the trained variants and the baselines on the held-out manuals, every budget, per query.

Every model goes through :func:`metaembed.evaluation.run_sweep` (``per_query=True``) on the BEIR
folder unpacked from the packaged held-out collection; results land in
``<out>/eval/<name>/results.json``. The MetaEmbed models share one float32 cache of MiniLM's
frozen page states (one-way attention leaves them untouched), so each page is run through the
encoder once for all of them.
"""

from __future__ import annotations

import json
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


def evaluate_all(out: Path, seeds: Sequence[int], variants: Sequence[str]) -> None:
    from metaembed.model import MetaEmbedModel
    from metaembed.model.backbones.encoder import FrozenStateCache
    from metaembed.quickstart.baselines import SentenceTransformerEncoder, TokenLevelEncoder
    from metaembed.quickstart.recipe import Recipe, build_model

    folder = heldout_folder(out)
    ladder = Recipe().ladder
    cache = FrozenStateCache(torch.float32)
    untrained = build_model(Recipe(), "mmr")
    untrained.adapter.state_cache = cache
    _sweep(untrained, folder, out / "eval" / "untrained", ladder, "untrained")
    for seed in seeds:
        for variant in variants:
            name = f"{variant}-seed{seed}"
            model = MetaEmbedModel.from_pretrained(out / "models" / name)
            model.adapter.state_cache = cache
            _sweep(model, folder, out / "eval" / name, "1,1" if variant == "single_vector" else ladder, name)
    _sweep(SentenceTransformerEncoder(), folder, out / "eval" / "sentence-transformers", "1,1", "sentence-transformers")
    tokens = TokenLevelEncoder(query_vectors=TOKEN_ROWS[0], candidate_vectors=TOKEN_ROWS[1])
    _sweep(tokens, folder, out / "eval" / "token-level", f"{TOKEN_ROWS[0]},{TOKEN_ROWS[1]}", "token-level")
    lengths = out / "eval" / "token-level" / "lengths.json"
    if not lengths.is_file():
        corpus = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
        tokenizer = tokens.model.tokenizer
        counts = [min(TOKEN_ROWS[1], len(tokenizer(row["text"])["input_ids"])) for row in corpus]
        lengths.write_text(json.dumps({"mean_vectors_per_page": sum(counts) / len(counts), "pages": len(counts)}))


__all__ = ["evaluate_all", "heldout_folder", "TOKEN_ROWS"]
