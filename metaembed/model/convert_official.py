"""Convert checkpoints trained with the official MetaEmbed code (facebookresearch/MetaEmbed).

The authors release no weights, so people train their own with the official
code, which saves:

* a Qwen2.5-VL ``LastQwen2_5`` model (a ``Qwen2_5_VLForConditionalGeneration``
  subclass) whose state dict adds ``prompt_embed_tokens.weight``
  ``(R_q + R_c, H)`` (query rows first) and, with ``dim != -1``,
  ``custom_text_proj.{weight,bias}``; and/or
* a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
  holding the LoRA weights under ``base_model.model.model.…`` and the fully
  trained ``prompt_embed_tokens`` / ``custom_text_proj`` (``modules_to_save``)
  under ``base_model.model.…``. Its ``base_model_name_or_path`` names the base.

:func:`convert_official` reads either and says, in this package's names, what a
:class:`~metaembed.model.MetaEmbedModel` with the same embeddings is made of: its config
(the base model as backbone, no LM head), its Meta Token table and projection, and its LoRA
(re-created on exactly the modules the adapter holds weights for: the official regex also
hits the vision tower's MLP). ``MetaEmbedModel.from_official`` builds the model from that.
Both the transformers ≥ 4.52 naming (``model.language_model.…``, ``model.visual.…``) and the
older one (``model.layers.…``, ``visual.…``) are understood.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from peft import LoraConfig
from safetensors import safe_open

from metaembed.errors import InputError
from metaembed.model.config import MetaEmbedConfig

META_KEY = "prompt_embed_tokens.weight"
PROJECTION_PREFIX = "custom_text_proj."
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# official (ForConditionalGeneration) names -> names inside the base model MetaEmbed wraps
_RENAMES = (
    (re.compile(r"^model\.language_model\."), "language_model."),
    (re.compile(r"^model\.visual\."), "visual."),
    (re.compile(r"^model\.(layers|embed_tokens|norm|rotary_emb)\b"), r"language_model.\1"),  # transformers < 4.52
)


def to_backbone_name(name: str) -> str:
    """An official parameter / module name as it is called inside ``MetaEmbedModel.backbone``."""
    for pattern, replacement in _RENAMES:
        if pattern.search(name):
            return pattern.sub(replacement, name, count=1)
    return name


def _safetensors_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _read_tensors(files: Iterable[Path], wanted) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                if wanted(key):
                    tensors[key] = handle.get_tensor(key)
    return tensors


def _has_key(folder: Path, predicate) -> bool:
    for file in _safetensors_files(folder):
        with safe_open(str(file), "pt") as handle:
            if any(predicate(key) for key in handle.keys()):
                return True
    return False


def _is_official_weight(key: str) -> bool:
    key = key.removeprefix(PEFT_PREFIX)
    return key == META_KEY or key.startswith(PROJECTION_PREFIX)


def is_official_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a local folder in the official layout (adapter or full model)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    if (folder / ADAPTER_CONFIG).is_file():
        return _has_key(folder, lambda key: key.removeprefix(PEFT_PREFIX) == META_KEY)
    return (folder / "config.json").is_file() and _has_key(folder, lambda key: key == META_KEY)


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """An official checkpoint in this package's terms.

    Attributes:
        config: the model to build (backbone = the official base model).
        own_weights: ``meta_tokens.weight`` ``(R_q + R_c, H)`` (or ``(R, H)`` shared) and, with a
            projection, ``projection.weight`` / ``projection.bias``: as
            :func:`metaembed.model.saving.load_own_weights` takes them.
        lora_config: the LoRA to re-create on the backbone, ``None`` without an adapter.
        lora_weights: its tensors, keyed as peft keys a wrapped backbone's state dict.
    """

    config: MetaEmbedConfig
    own_weights: dict[str, torch.Tensor]
    lora_config: LoraConfig | None = None
    lora_weights: dict[str, torch.Tensor] | None = None


def convert_official(
    path: str | Path,
    *,
    base: str | Path | None = None,
    num_query_tokens: int = 16,
    num_candidate_tokens: int = 64,
    processor: str | Path | None = None,
    dtype: torch.dtype | None = None,
    max_visual_tokens: int = 1024,
) -> ConvertedCheckpoint:
    """Read an official MetaEmbed checkpoint as a :class:`ConvertedCheckpoint`.

    ``path`` is a PEFT adapter folder or a full-model folder. ``base`` overrides
    the adapter's ``base_model_name_or_path`` (e.g. when it names a path on the
    training cluster). ``num_query_tokens`` / ``num_candidate_tokens`` are the
    official ``num_query_prompt_tokens`` / ``num_doc_prompt_tokens`` (16 / 64);
    a table with only ``num_query_tokens`` rows is read as the shared set.
    ``processor`` defaults to the base folder / id.
    """
    folder = Path(path)
    adapter_config: dict | None = None
    if (folder / ADAPTER_CONFIG).is_file():
        adapter_config = json.loads((folder / ADAPTER_CONFIG).read_text())
        base = base or adapter_config.get("base_model_name_or_path")
        if not base:
            raise InputError(f"{folder} is a PEFT adapter without base_model_name_or_path; pass base=")
        adapter_tensors = _read_tensors(_safetensors_files(folder), lambda key: True)
    else:
        base = base or folder
        adapter_tensors = {}
    base = str(base)
    base_folder = Path(base)
    official = {
        key.removeprefix(PEFT_PREFIX): tensor
        for key, tensor in (
            _read_tensors(_safetensors_files(base_folder), _is_official_weight) if base_folder.is_dir() else {}
        ).items()
    }
    # the adapter's trained copies win over what the base folder holds
    trained = {key.removeprefix(PEFT_PREFIX): t for key, t in adapter_tensors.items() if _is_official_weight(key)}
    official.update(trained)
    if META_KEY not in official:
        raise InputError(f"no {META_KEY} in {folder} or its base {base}: not an official MetaEmbed checkpoint")
    table = official[META_KEY]
    rows = table.shape[0]
    if rows == num_query_tokens + num_candidate_tokens:
        shared = False
    elif rows == num_query_tokens == num_candidate_tokens:
        shared = True  # the official shared_query_doc_prompt option
    else:
        raise InputError(
            f"{META_KEY} has {table.shape[0]} rows but num_query_tokens + num_candidate_tokens = "
            f"{num_query_tokens} + {num_candidate_tokens}; pass the counts the checkpoint was trained with: "
                "MetaEmbedModel.from_official(path, num_query_tokens=..., num_candidate_tokens=...)"
        )
    projection = official.get(PROJECTION_PREFIX + "weight")
    config = MetaEmbedConfig(
        backbone=base,
        processor=str(processor) if processor is not None else base,
        num_query_tokens=num_query_tokens,
        num_candidate_tokens=num_candidate_tokens,
        shared_meta_tokens=shared,
        projection_dim=int(projection.shape[0]) if projection is not None else None,
        max_visual_tokens=max_visual_tokens,
        torch_dtype=str(dtype).removeprefix("torch.") if dtype is not None else None,
    )
    own_weights = {"meta_tokens.weight": table}
    if projection is not None:
        own_weights["projection.weight"] = projection
        own_weights["projection.bias"] = official[PROJECTION_PREFIX + "bias"]
    lora = {key: tensor for key, tensor in adapter_tensors.items() if "lora_" in key}
    if not lora:
        return ConvertedCheckpoint(config, own_weights)
    lora_config, lora_weights = _convert_lora(adapter_config or {}, lora)
    return ConvertedCheckpoint(config, own_weights, lora_config, lora_weights)


def _convert_lora(adapter_config: dict, tensors: dict[str, torch.Tensor]) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The official adapter's LoRA as a peft config and state dict over this package's backbone names."""
    renamed = {to_backbone_name(key.removeprefix(PEFT_PREFIX)): t for key, t in tensors.items()}
    # LoRA exactly where the adapter has weights: the official regex reaches the vision MLP too
    targets = sorted({re.sub(r"\.lora_[AB]\..*$", "", key) for key in renamed})
    config = LoraConfig(
        r=int(adapter_config.get("r", 8)),
        lora_alpha=adapter_config.get("lora_alpha", 8),
        lora_dropout=float(adapter_config.get("lora_dropout", 0.0)),
        use_rslora=bool(adapter_config.get("use_rslora", False)),
        target_modules=targets,
        bias="none",
    )
    return config, {PEFT_PREFIX + key: tensor for key, tensor in renamed.items()}


__all__ = ["convert_official", "ConvertedCheckpoint", "is_official_checkpoint", "to_backbone_name"]
