"""The library entry point: ``train(config) -> path`` (what ``metaembed train CONFIG.yaml`` calls).

A run writes into ``config.output_dir``:

* ``config.yaml`` — the resolved configuration, every default explicit;
* ``metrics.jsonl`` — one JSON object per logged step: ``step``, ``loss``, ``learning_rate``,
  ``grad_norm``, ``loss/<r_q>,<r_c>`` and ``accuracy/<r_q>,<r_c>`` per budget, ``temperature``;
* ``checkpoints/checkpoint-<step>/`` — trainable tensors + optimiser, scheduler, RNG and trainer
  state (resume with ``resume_from_checkpoint: true`` or a folder);
* ``model/`` — the final model, loadable with ``MetaEmbedModel.from_pretrained``.

Multi-process: launch the same call under ``torchrun --nproc_per_node N`` or ``accelerate launch``
(DDP by default; FSDP through ``trainer_args: {fsdp: ..., fsdp_config: ...}``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from metaembed.budget import Budget
from metaembed.errors import InputError
from metaembed.training.collator import ContrastiveCollator
from metaembed.training.config import LoraSpec, TrainingConfig
from metaembed.training.losses import InfoNCELoss, MMRGroup, MMRLoss, parse_groups
from metaembed.training.sampling import TrainingMixture
from metaembed.training.trainer import ContrastiveModule, JsonlMetricsCallback, MetaEmbedTrainer


def groups_for_mode(mode: str, groups: Any, model: Any) -> tuple[MMRGroup, ...]:
    """The loss groups a training ``mode`` uses with ``model`` (see :mod:`metaembed.training.config`).

    Raises :class:`~metaembed.errors.InputError` when the mode does not fit the model's pooling and
    :class:`~metaembed.errors.BudgetError` when a group exceeds the model's vector counts.
    """
    pooling = model.config.pooling
    r_q, r_c = model.num_query_tokens, model.num_candidate_tokens
    if mode == "mmr":
        if pooling != "meta_tokens":
            raise InputError(f"mode 'mmr' trains nested Meta Token prefixes; the model's pooling is {pooling!r}")
        chosen = parse_groups(groups)
    elif mode == "nommr":
        if pooling != "meta_tokens":
            raise InputError(f"mode 'nommr' needs a Meta Token model; the model's pooling is {pooling!r}")
        largest = parse_groups(groups)[-1].budget if groups is not None else Budget(r_q, r_c)
        chosen = (MMRGroup(largest),)
    elif mode == "single_vector":
        if pooling == "chunks":
            raise InputError("mode 'single_vector' needs pooling 'last_token', 'mean' or 'meta_tokens', not 'chunks'")
        chosen = (MMRGroup(Budget(1, 1)),)
    elif mode == "naive_multi_vector":
        if pooling != "chunks":
            raise InputError(f"mode 'naive_multi_vector' needs a model with pooling 'chunks', got {pooling!r}")
        chosen = (MMRGroup(Budget(r_q, r_c)),)
    else:
        raise InputError(f"unknown training mode {mode!r}")
    chosen[-1].budget.check_within(r_q, r_c, where="the model (set `groups` to fit its vector counts)")
    return chosen


def prepare_parameters(model: Any, lora: LoraSpec | None, trainable_modules: str | None = None) -> None:
    """Choose what trains: LoRA adapters (added here unless present), the backbone parameters whose
    names match the regular expression ``trainable_modules`` (fully), nothing else of the backbone;
    the Meta Token table and projection always train.

    Raises :class:`~metaembed.errors.InputError` when ``trainable_modules`` matches no parameter
    (a typo would otherwise silently train less than asked).
    """
    if lora is not None and model.peft_model is None:
        model.add_lora(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    pattern = re.compile(trainable_modules) if trainable_modules is not None else None
    matched = 0
    for name, parameter in model.backbone.named_parameters():
        full = pattern is not None and "lora_" not in name and pattern.search(name) is not None
        matched += full
        parameter.requires_grad = full or (lora is not None and "lora_" in name)
    if pattern is not None and not matched:
        raise InputError(f"trainable_modules {trainable_modules!r} matches no backbone parameter")
    for module in (model.meta_tokens, model.projection):
        if module is not None:
            module.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError(
            "nothing to train: the model has no Meta Tokens or projection and LoRA is off; set `lora`"
        )


def training_arguments(config: TrainingConfig) -> TrainingArguments:
    """The ``transformers.TrainingArguments`` of a run (``config.trainer_args`` override them)."""
    values: dict[str, Any] = dict(
        output_dir=str(Path(config.output_dir) / "checkpoints"),
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        max_steps=config.max_steps,
        max_grad_norm=config.max_grad_norm,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        dataloader_num_workers=config.dataloader_num_workers,
        # our batches are dicts of chunk lists, not model kwargs: keep every key
        remove_unused_columns=False,
        # the sampler yields global one-source batches; each process takes its slice
        accelerator_config={"split_batches": True},
        # Meta Tokens of both sides and every LoRA layer are used at every step
        ddp_find_unused_parameters=False,
        report_to="none",
        # without a GPU, accelerate only sets up multi-process (gloo) training when told to use the CPU
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    values.update(config.trainer_args)
    return TrainingArguments(**values)


def build_trainer(config: TrainingConfig, model: Any = None) -> MetaEmbedTrainer:
    """Everything of a run but the loop: model parameters, loss, data, collator, trainer.

    ``model`` (a :class:`~metaembed.model.MetaEmbedModel`) overrides ``config.model``.
    """
    set_seed(config.seed)
    if model is None:
        if not config.model:
            raise InputError("the training config names no `model` (a MetaEmbed folder or a backbone id/folder)")
        from metaembed.model import MetaEmbedModel

        model = MetaEmbedModel.from_pretrained(config.model)
    if not config.data:
        raise InputError("the training config has no `data` entries")
    groups = groups_for_mode(config.mode, config.groups, model)
    prepare_parameters(model, config.lora, config.trainable_modules)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    loss = MMRLoss(InfoNCELoss(config.temperature, config.learnable_temperature, config.normalize_scores), groups, config.combination)
    mixture = TrainingMixture([source for spec in config.data for source in spec.load(seed=config.seed)])
    return MetaEmbedTrainer(
        model=ContrastiveModule(model, loss),
        args=training_arguments(config),
        train_dataset=mixture,
        data_collator=ContrastiveCollator(model, config.num_negatives, config.gradient_cache_chunk_size),
        callbacks=[JsonlMetricsCallback(Path(config.output_dir) / "metrics.jsonl")],
        gradient_cache_chunk_size=config.gradient_cache_chunk_size,
    )


def train(config: TrainingConfig | str | Path | dict, model: Any = None) -> Path:
    """Run a training and return the folder of the final model (``<output_dir>/model``).

    ``config`` is a :class:`TrainingConfig`, a YAML path or a dict; ``model`` optionally replaces
    ``config.model`` with an already built :class:`~metaembed.model.MetaEmbedModel`.
    """
    if isinstance(config, (str, Path)):
        config = TrainingConfig.from_yaml(config)
    elif isinstance(config, dict):
        config = TrainingConfig.from_dict(config)
    output = Path(config.output_dir)
    resume = _resume_point(config)
    trainer = build_trainer(config, model)
    if trainer.is_world_process_zero():
        output.mkdir(parents=True, exist_ok=True)
        config.to_yaml(output / "config.yaml")
    trainer.train(resume_from_checkpoint=resume)
    final = output / "model"
    if trainer.is_world_process_zero():
        trainer.accelerator.unwrap_model(trainer.model).model.save_pretrained(final)
    trainer.accelerator.wait_for_everyone()
    return final


def _resume_point(config: TrainingConfig) -> str | None:
    """The checkpoint to resume from; refuses to start a fresh run over an earlier one.

    ``resume_from_checkpoint: true`` takes the latest checkpoint of ``output_dir`` and starts fresh
    when there is none yet (so a pre-emptible job can always be relaunched with the same config).
    """
    output = Path(config.output_dir)
    checkpoints = output / "checkpoints"
    if config.resume_from_checkpoint is True:
        return get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if config.resume_from_checkpoint:
        if not Path(config.resume_from_checkpoint).is_dir():
            raise InputError(f"resume_from_checkpoint: {config.resume_from_checkpoint} is not a folder")
        return str(config.resume_from_checkpoint)
    earlier = [p for p in (output / "metrics.jsonl", checkpoints) if p.exists()]
    if earlier:
        raise InputError(
            f"{output} already holds a training run ({', '.join(p.name for p in earlier)}); "
            "set resume_from_checkpoint: true to continue it, or choose another output_dir"
        )
    return None


__all__ = ["train", "build_trainer", "training_arguments", "groups_for_mode", "prepare_parameters"]
