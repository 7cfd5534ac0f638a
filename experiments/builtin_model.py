"""Train the built-in model and its comparison variants; evaluate them on held-out manuals.

Phases (each resumes: a finished run or evaluation is skipped):

* ``train`` — every variant of :data:`metaembed.quickstart.recipe.VARIANTS` for every seed, through
  the public trainer (:func:`metaembed.quickstart.recipe.train_variant`), in one process that
  shares MiniLM's frozen page states between the runs; each trained model is saved without its
  backbone under ``<out>/models/<variant>-seed<k>/``;
* ``eval`` — each trained model, and the baselines (a) MiniLM as sentence-transformers ships it
  and (d) token-level late interaction over MiniLM's token states, on the held-out collection at
  every budget (:func:`metaembed.evaluation.run_sweep`, per-query metrics kept);
* ``report`` — ``docs/results/builtin-model.{json,md}`` from the saved numbers
  (:mod:`experiments.builtin_report`);
* ``ship`` — copy the seed-0 MMR model into ``metaembed/pretrained/metaembed-minilm/``.

Usage::

    make builtin-model          # data, train, eval, report, ship
    python experiments/builtin_model.py --phases train --seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if __package__ in (None, ""):  # run as a script: make `experiments` and `metaembed` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

if TYPE_CHECKING:
    from metaembed.quickstart.recipe import Recipe

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "metaembed" / "pretrained" / "metaembed-minilm"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def train_all(out: Path, data: Path, seeds: Sequence[int], variants: Sequence[str], recipe: "Recipe") -> None:
    from metaembed.model.backbones.encoder import FrozenStateCache
    from metaembed.quickstart.recipe import train_variant

    cache = FrozenStateCache(torch.float16)  # MiniLM's states of each training text, computed once
    for seed in seeds:
        for variant in variants:
            name = f"{variant}-seed{seed}"
            target = out / "models" / name
            if (target / "training.json").is_file():
                print(f"{name}: trained before", flush=True)
                continue
            run_dir = out / "runs" / name
            shutil.rmtree(run_dir, ignore_errors=True)
            model, info = train_variant(dataclasses.replace(recipe, seed=seed), variant, data, run_dir, state_cache=cache)
            model.adapter.state_cache = None
            model.save_pretrained(target, with_backbone=False)
            info.update(threads=torch.get_num_threads(), cpu=_cpu())
            (target / "training.json").write_text(json.dumps(info, indent=2))
            print(f"{name}: {info['seconds']:.0f}s, final loss {info['final_loss']}", flush=True)


def ship(source: Path) -> None:
    """Copy a trained model into the package (its model card ``README.md`` there is kept)."""
    card = SHIPPED / "README.md"
    kept = card.read_text() if card.is_file() else None
    shutil.rmtree(SHIPPED, ignore_errors=True)
    shutil.copytree(source, SHIPPED, ignore=shutil.ignore_patterns("README.md"))  # peft's generic card too
    if kept is not None:
        card.write_text(kept)
    print(f"shipped {source} -> {SHIPPED}")


def recipe_from(settings: Sequence[str]) -> "Recipe":
    """The default :class:`Recipe` with ``field=value`` overrides (``steps=300``, ``normalize_scores=true``)."""
    from metaembed.quickstart.recipe import Recipe

    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    changes = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        if key not in fields or not value:
            raise SystemExit(f"--set {setting!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        default = getattr(Recipe(), key)
        if isinstance(default, bool):
            changes[key] = value.lower() in ("1", "true", "yes")
        else:
            changes[key] = type(default)(value)
    return dataclasses.replace(Recipe(), **changes)


def main(argv: Sequence[str] | None = None) -> None:
    from metaembed.quickstart.recipe import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/builtin")
    parser.add_argument("--data", default="runs/docpages/train.jsonl")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--phases", default="train,eval,report,ship")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-pages", type=int, default=None, help="eval: a subset of the held-out pages")
    parser.add_argument("--models", default=None, help="eval: where the trained models are (default <out>/models)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="recipe overrides (the fields of metaembed.quickstart.recipe.Recipe)")
    parser.add_argument("--collection", default=None,
                        help="eval: this collection file instead of the held-out manuals (e.g. runs/docpages/validation.json.gz)")
    parser.add_argument("--wait-minutes", type=float, default=0.0,
                        help="eval: wait this long for variants another process is still training")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out, phases = Path(args.out), args.phases.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    recipe = recipe_from(args.set)
    started = time.perf_counter()
    if "train" in phases:
        train_all(out, Path(args.data), seeds, variants, recipe)
    if "eval" in phases:
        from experiments.builtin_eval import evaluate_all

        evaluate_all(out, seeds, variants, wait_s=args.wait_minutes * 60, max_pages=args.max_pages,
                     models=Path(args.models) if args.models else None,
                     collection=Path(args.collection) if args.collection else None, recipe=recipe)
    if "report" in phases:
        from experiments.builtin_report import write_report

        write_report(out, REPO / "docs" / "results")
    if "ship" in phases:
        ship(out / "models" / "mmr-seed0")
    print(f"done in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
