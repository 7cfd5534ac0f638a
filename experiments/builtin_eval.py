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
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from metaembed.quickstart.recipe import Recipe

#: Rows of the token-level baseline (d): word pieces per query (99% of the held-out queries fit)
#: and per page (MiniLM's 256).
TOKEN_ROWS = (64, 256)


def heldout_folder(out: Path, max_pages: int | None = None, collection: Path | None = None) -> Path:
    """The packaged held-out collection (or its ``max_pages`` subset) as a BEIR folder under ``out``.

    ``collection`` names another collection file of the same shape instead (the validation pages
    of the training manuals that ``docpages`` writes); its folder is named after the file.
    """
    from metaembed.quickstart.collection import COLLECTION_FILE, load_collection, subset, write_beir_folder

    source = collection or COLLECTION_FILE
    folder = out / ("heldout" if collection is None else source.name.split(".")[0])
    if not (folder / "corpus.jsonl").is_file():
        write_beir_folder(subset(load_collection(source), max_pages), folder)
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


def evaluate_all(out: Path, seeds: Sequence[int], variants: Sequence[str], wait_s: float = 0.0,
                 max_pages: int | None = None, models: Path | None = None,
                 collection: Path | None = None, recipe: "Recipe | None" = None) -> None:
    """Evaluate what is trained; with ``wait_s``, wait up to that long for runs still training.

    On the held-out manuals by default (results in ``<out>/eval``); with ``collection`` (the
    validation pages) in ``<out>/eval-<its name>``, with baseline (a) only.
    """
    from metaembed.model import MetaEmbedModel
    from metaembed.model.backbones.encoder import FrozenStateCache
    from metaembed.quickstart.baselines import MeanPooledStates, TokenLevelStates
    from metaembed.quickstart.recipe import Recipe, build_model

    started = time.time()
    folder = heldout_folder(out, max_pages, collection)
    results = out / ("eval" if collection is None else f"eval-{folder.name}")
    models = models or out / "models"
    recipe = recipe or Recipe()
    ladder = recipe.ladder
    cache = FrozenStateCache(torch.float32)
    untrained = build_model(recipe, "mmr")
    untrained.adapter.state_cache = cache
    if collection is None:
        _sweep(untrained, folder, results / "untrained", ladder, "untrained")
    _sweep(MeanPooledStates(untrained), folder, results / "sentence-transformers", "1,1", "sentence-transformers")
    names = [f"{variant}-seed{seed}" for seed in seeds for variant in variants]
    trained = lambda name: (models / name / "training.json").is_file()  # noqa: E731
    # (d) is the most expensive to score (64 x 256 vectors per query-page pair): after the models
    # trained so far, before waiting for the others
    tokens = TokenLevelStates(untrained, query_vectors=TOKEN_ROWS[0], candidate_vectors=TOKEN_ROWS[1])
    token_level = ["token-level"] if collection is None else []
    pending = [n for n in names if trained(n)] + token_level + [n for n in names if not trained(n)]
    for name in pending:
        if name == "token-level":
            _sweep(tokens, folder, results / name, f"{TOKEN_ROWS[0]},{TOKEN_ROWS[1]}", name)
            continue
        while not trained(name) and wait_s > 0 and time.time() < started + wait_s:
            time.sleep(20)
        if not trained(name):
            print(f"{name}: not trained, skipped", flush=True)
            continue
        model = MetaEmbedModel.from_pretrained(models / name)
        model.adapter.state_cache = cache
        _sweep(model, folder, results / name, "1,1" if name.startswith("single_vector") else ladder, name)
    lengths = results / "token-level" / "lengths.json"
    if collection is None and not lengths.is_file():
        corpus = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
        tokenizer = untrained.tokenizer
        counts = [min(TOKEN_ROWS[1], len(tokenizer(row["text"])["input_ids"])) for row in corpus]
        lengths.write_text(json.dumps({"mean_vectors_per_page": sum(counts) / len(counts), "pages": len(counts)}))


__all__ = ["evaluate_all", "heldout_folder", "TOKEN_ROWS"]
