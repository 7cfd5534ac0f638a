"""The training configuration: one dataclass, read from and written to YAML.

A minimal file::

    model: path/to/metaembed-or-backbone      # MetaEmbedModel.from_pretrained
    output_dir: runs/mmr
    data:
      - {format: mmeb, path: data/MMEB-train, image_root: data/MMEB-train/images, subsets: moca}
      - {format: colpali, path: data/colpali_train_set, weight: 5.0}
    per_device_batch_size: 48
    max_steps: 4000

Defaults follow the paper's official settings (``7b_mrl.yaml``): MMR over (1,1) (2,4) (4,8) (8,16)
(16,64) averaged, τ = 0.03, one hard negative, LoRA r = α = 32 with dropout 0.1 on the language
model's q/k/v/o/gate/up/down projections, lr 1e-4 with 500 warm-up steps, 4000 steps. The paper's
scale settings are left to the file, since they depend on the hardware: ``per_device_batch_size: 48``
on 8 GPUs, ``precision: bf16``, ``gradient_checkpointing: true`` (FSDP through ``trainer_args``).

``mode`` selects the objective:

* ``"mmr"`` — every group of ``groups`` (Matryoshka Multi-Vector Retrieval);
* ``"nommr"`` — the largest group only (the paper's NoMMR ablation);
* ``"single_vector"`` — one vector per side: the model's pooling ``last_token``/``mean``, or the
  first Meta Token of a Meta Token model;
* ``"naive_multi_vector"`` — a ``chunks`` pooling model (fixed-length mean-pooled chunks) at its
  full size, the paper's naive multi-vector baseline.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from metaembed.errors import InputError
from metaembed.training.public_sets import DataSpec

Mode = Literal["mmr", "nommr", "single_vector", "naive_multi_vector"]
MODES = ("mmr", "nommr", "single_vector", "naive_multi_vector")


@dataclass
class LoraSpec:
    """LoRA on the language model (paper: r 32, α 32, dropout 0.1, q/k/v/o/gate/up/down)."""

    r: int = 32
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] | str | None = None  # None: the backbone adapter's LM projections


@dataclass
class TrainingConfig:
    """Everything a training run needs; see the module docstring for the YAML shape.

    Batching: ``per_device_batch_size`` examples per process and micro-step. The *contrastive*
    batch (the positives every query competes with) is ``per_device_batch_size × world_size``.
    ``gradient_accumulation_steps`` sums the gradients of several such batches — each one is an
    independent contrastive batch with its own negatives; it enlarges the optimiser step, not the
    set of negatives. To enlarge the negatives on small memory, raise the batch size and set
    ``gradient_cache_chunk_size`` (exact gradients, one chunk's activations in memory).
    """

    model: str | None = None
    output_dir: str = "runs/metaembed"
    data: list[DataSpec] = field(default_factory=list)

    # objective
    mode: Mode = "mmr"
    groups: list[list[float]] | None = None  # [[r_q, r_c, weight], ...]; None = the paper's five
    combination: Literal["mean", "sum"] = "mean"
    temperature: float = 0.03
    learnable_temperature: bool = False
    normalize_scores: bool = False  # divide MaxSim by r_q before the temperature (official flag)
    num_negatives: int = 1

    # parameters
    lora: LoraSpec | None = field(default_factory=LoraSpec)  # None: train Meta Tokens + projection only
    #: A regular expression; every backbone parameter whose name (as ``model.backbone.named_parameters()``
    #: gives it) it matches with ``re.search`` trains fully, besides any LoRA adapters. For new,
    #: randomly initialised backbone modules (e.g. the ``bert_vision`` fusion encoder and patch
    #: embedding), which LoRA's low-rank updates cannot turn into useful layers. ``None``: none.
    trainable_modules: str | None = None

    # optimisation
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    gradient_cache_chunk_size: int | None = None
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    lr_scheduler_type: str = "linear"
    max_steps: int = 4000
    max_grad_norm: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 42

    # bookkeeping
    logging_steps: int = 1
    save_steps: int = 100
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | bool | None = None  # a checkpoint folder, or True for the latest
    dataloader_num_workers: int = 0
    trainer_args: dict[str, Any] = field(default_factory=dict)  # passed on to transformers.TrainingArguments

    def __post_init__(self) -> None:
        self.data = [d if isinstance(d, DataSpec) else DataSpec(**_checked(d, DataSpec, "data entry")) for d in self.data]
        if isinstance(self.lora, dict):
            self.lora = LoraSpec(**_checked(self.lora, LoraSpec, "lora"))
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise InputError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.trainable_modules is not None:
            if not isinstance(self.trainable_modules, str):
                raise InputError(f"trainable_modules must be a regular expression string or null, "
                                 f"got {self.trainable_modules!r}")
            try:
                re.compile(self.trainable_modules)
            except re.error as error:
                raise InputError(f"trainable_modules {self.trainable_modules!r} is not a regular expression: {error}") from None
        if self.gradient_cache_chunk_size is not None and self.gradient_cache_chunk_size < 1:
            raise InputError(f"gradient_cache_chunk_size must be >= 1 or null, got {self.gradient_cache_chunk_size!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        """Build from a plain dict (unknown keys raise :class:`~metaembed.errors.InputError`)."""
        return cls(**_checked(values, cls, "training config"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainingConfig":
        """Read a YAML file; relative ``model``/data paths stay as written (relative to the working folder)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"training config not found: {path}")
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise InputError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-safe dict of every setting."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the resolved configuration (every default made explicit)."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def _checked(values: Any, cls: type, what: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise InputError(f"{what}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{what}: unknown settings {unknown}; known: {sorted(known)}")
    return values


__all__ = ["TrainingConfig", "LoraSpec", "Mode", "MODES"]
