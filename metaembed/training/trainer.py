"""The Hugging Face ``Trainer`` subclass that trains MetaEmbed with a contrastive (MMR) loss.

Everything a training loop owns — optimiser, schedule, mixed precision, gradient accumulation,
clipping, DDP/FSDP through accelerate, checkpoints with optimiser/scheduler/RNG state, resuming —
is the stock ``transformers.Trainer``. This subclass only says

* how a batch becomes a loss (:meth:`MetaEmbedTrainer.compute_loss`: encode the three sides,
  gather the positives across processes, apply the :class:`~metaembed.training.losses.MMRLoss`),
  optionally with gradient caching (:mod:`metaembed.training.gradcache`);
* where batches come from (one source per global batch, split across processes);
* what a checkpoint holds (the trainable tensors only: LoRA, Meta Tokens, projection, a learnable
  temperature — the frozen backbone is re-read from the base model);
* which metrics to log (per-budget loss and in-batch accuracy, averaged over the logging window
  and over processes).
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from metaembed.errors import InputError
from metaembed.training.distributed import gather_positives
from metaembed.training.gradcache import backward_chunks, encode_chunks_without_grad
from metaembed.training.losses import ContrastiveOutput, MMRLoss
from metaembed.training.sampling import SourceBatchSampler, TrainingMixture

CHECKPOINT_WEIGHTS = "model.safetensors"  # the name transformers' Trainer looks for when resuming
TRAINING_ARGS_NAME = "training_args.bin"


class ContrastiveModule(nn.Module):
    """A :class:`~metaembed.model.MetaEmbedModel` and its loss as one module.

    The trainer (and DDP/FSDP) wrap this module, so the loss's learnable temperature, if any, is
    optimised and checkpointed with the model. ``forward(batch, side)`` is the model's forward:
    ``(B, R_side, D)`` L2-normalised float32.
    """

    def __init__(self, model: nn.Module, loss: MMRLoss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict[str, Tensor], side: str) -> Tensor:
        return self.model(batch, side)

    def trainable_state(self) -> dict[str, Tensor]:
        """The parameters that training changes, by name (CPU, contiguous)."""
        return {n: p.detach().cpu().contiguous() for n, p in self.named_parameters() if p.requires_grad}


class JsonlMetricsCallback(TrainerCallback):
    """Appends every log record of the main process to a JSONL file (one object per logged step)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 - TrainerCallback API
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class MetaEmbedTrainer(Trainer):
    """``transformers.Trainer`` for :class:`ContrastiveModule` with MMR loss.

    Build it through :func:`metaembed.training.build_trainer`. Extra argument:
    ``gradient_cache_chunk_size`` — when set, the collator must chunk each side to this size and
    the step uses gradient caching (same gradients as the plain step, activations of one chunk).
    ``args.accelerator_config.split_batches`` must be on: the sampler yields global batches.
    """

    def __init__(self, *args: Any, gradient_cache_chunk_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gradient_cache_chunk_size = gradient_cache_chunk_size
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self) -> DataLoader:
        """Global batches from one source each; accelerate splits them across processes."""
        if not isinstance(self.train_dataset, TrainingMixture):
            raise InputError(f"train_dataset must be a TrainingMixture, got {type(self.train_dataset).__name__}")
        sampler = SourceBatchSampler(
            self.train_dataset, self.args.per_device_train_batch_size * self.args.world_size, seed=self.args.seed
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )
        return self.accelerator.prepare(loader)

    # ------------------------------------------------------------------ loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, ContrastiveOutput]:
        """The MMR loss of this process's queries against the gathered positives and own negatives."""
        module: ContrastiveModule = self.accelerator.unwrap_model(model)
        if self.gradient_cache_chunk_size:
            output = self._cached_loss(model, module, inputs)
        else:
            embeddings = {key: self._encode(model, inputs[key], side) for key, side in _sides(inputs)}
            output = _contrastive_loss(module, embeddings, inputs["num_negatives"])
        self._record(output, module)
        return (output.loss, output) if return_outputs else output.loss

    @staticmethod
    def _encode(model: nn.Module, chunks: list[dict[str, Tensor]], side: str) -> Tensor:
        return torch.cat([model(chunk, side) for chunk in chunks], dim=0)

    def _cached_loss(self, model: nn.Module, module: ContrastiveModule, inputs: dict[str, Any]) -> ContrastiveOutput:
        sides = _sides(inputs)
        leaves, states = {}, {}
        for key, side in sides:
            embeddings, states[key] = encode_chunks_without_grad(partial(model, side=side), inputs[key])
            leaves[key] = embeddings.detach().requires_grad_()
        with torch.enable_grad():
            output = _contrastive_loss(module, leaves, inputs["num_negatives"])
        loss_parameters = [p for p in module.loss.parameters() if p.requires_grad]
        gradients = torch.autograd.grad(output.loss, list(leaves.values()) + loss_parameters)
        no_sync = partial(self.accelerator.no_sync, model) if self.accelerator.num_processes > 1 else None

        def replay(scale: Tensor) -> None:
            # `scale` is d(what the trainer back-propagates)/d(loss): 1/accumulation steps, times
            # the fp16 loss scale — it must reach every chunk's gradient.
            for index, (key, side) in enumerate(sides):
                backward_chunks(
                    partial(model, side=side),
                    inputs[key],
                    states[key],
                    gradients[index] * scale,
                    no_sync=no_sync,
                    last=index == len(sides) - 1,
                )
            for parameter, gradient in zip(loss_parameters, gradients[len(sides) :]):
                update = gradient * scale
                parameter.grad = update if parameter.grad is None else parameter.grad + update

        loss = output.loss.detach().requires_grad_()
        loss.register_hook(replay)
        output.loss = loss
        return output

    # --------------------------------------------------------------- logging
    def _record(self, output: ContrastiveOutput, module: ContrastiveModule) -> None:
        metrics = {k: v for k, v in output.metrics().items() if k != "loss"}
        metrics["temperature"] = float(module.loss.loss.temperature.detach())
        for key, value in metrics.items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + value
        self._metric_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the per-budget losses/accuracies (mean over the window and processes) to training logs."""
        if "loss" in logs and self._metric_count:
            keys = sorted(self._metric_sums)
            values = torch.tensor([self._metric_sums[k] / self._metric_count for k in keys], device=self.args.device)
            if self.accelerator.num_processes > 1:
                values = self.accelerator.reduce(values, reduction="mean")
            logs.update({k: round(float(v), 6) for k, v in zip(keys, values)})
            self._metric_sums, self._metric_count = {}, 0
        super().log(logs, start_time)

    # ----------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict[str, Tensor] | None = None) -> None:
        """A checkpoint holds only the trainable tensors (LoRA, Meta Tokens, projection, temperature)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        module: ContrastiveModule = self.accelerator.unwrap_model(self.model)
        tensors = module.trainable_state()
        if state_dict is not None:  # FSDP full state dict: the gathered values, our names
            tensors = {name: state_dict[name].detach().cpu().contiguous() for name in tensors if name in state_dict}
        safetensors.torch.save_file(tensors, os.path.join(output_dir, CHECKPOINT_WEIGHTS), metadata={"format": "pt"})
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Load the trainable tensors of a checkpoint written by :meth:`_save`; names must match."""
        module: ContrastiveModule = self.accelerator.unwrap_model(model if model is not None else self.model)
        path = os.path.join(resume_from_checkpoint, CHECKPOINT_WEIGHTS)
        if not os.path.isfile(path):
            raise InputError(f"{resume_from_checkpoint} is not a MetaEmbed training checkpoint: {path} is missing")
        tensors = safetensors.torch.load_file(path)
        expected = set(module.trainable_state())
        if set(tensors) != expected:
            raise InputError(
                f"checkpoint {resume_from_checkpoint} holds {len(tensors)} tensors that do not match the "
                f"{len(expected)} trainable ones of this run (e.g. missing {sorted(expected - set(tensors))[:3]}, "
                f"unexpected {sorted(set(tensors) - expected)[:3]}); was it made with another LoRA or mode?"
            )
        module.load_state_dict(tensors, strict=False)


def _sides(inputs: dict[str, Any]) -> list[tuple[str, str]]:
    """The (batch key, model side) pairs present in a collated batch."""
    sides = [("query", "query"), ("positive", "candidate")]
    if inputs.get("num_negatives"):
        sides.append(("negative", "candidate"))
    return sides


def _contrastive_loss(module: ContrastiveModule, embeddings: dict[str, Tensor], num_negatives: int) -> ContrastiveOutput:
    """Gather positives across processes, reshape hard negatives ``(B·N, R, D) → (B, N, R, D)``, apply the loss."""
    query = embeddings["query"]
    negatives = embeddings.get("negative")
    if negatives is not None:
        negatives = negatives.view(query.shape[0], num_negatives, *negatives.shape[1:])
    positives, offset = gather_positives(embeddings["positive"])
    return module.loss(query, positives, negatives, target_offset=offset)


__all__ = ["MetaEmbedTrainer", "ContrastiveModule", "JsonlMetricsCallback", "CHECKPOINT_WEIGHTS"]
