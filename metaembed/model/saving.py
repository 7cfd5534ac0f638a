"""The MetaEmbed model folder: what :meth:`MetaEmbedModel.save_pretrained` writes and
:meth:`MetaEmbedModel.from_pretrained` reads.

This module knows the files, not the class: :func:`save` writes a model's parts,
:func:`load_config`, :func:`read_own_weights` and :func:`adapter_folder` read them back for
``from_pretrained`` to build the model. Layout::

    metaembed_config.json      MetaEmbedConfig (backbone -> "backbone", processor -> "processor")
    metaembed.safetensors      meta_tokens.weight (R_q+R_c, H), projection.weight/bias if any
    backbone/                  the backbone (Hugging Face save_pretrained, base weights only)
    processor/                 tokenizer and image processor
    lora_adapter/              peft LoRA adapter, when the model has one
    modules.json, config_sentence_transformers.json
                               what sentence-transformers reads, so that ``MultiVectorEncoder(folder)``
                               loads the model (:mod:`metaembed.integrations.sentence_transformers`)

Everything needed is in the folder, so loading is offline and reproduces the
embeddings exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from metaembed.errors import InputError
from metaembed.model.config import CONFIG_NAME, MetaEmbedConfig

if TYPE_CHECKING:  # pragma: no cover
    from metaembed.model.modeling import MetaEmbedModel

WEIGHTS_NAME = "metaembed.safetensors"
BACKBONE_DIR = "backbone"
PROCESSOR_DIR = "processor"
ADAPTER_DIR = "lora_adapter"
#: The sentence-transformers module class a saved folder names in its ``modules.json``, and the
#: encode arguments that module takes (sentence-transformers' ``task``, MetaEmbed's ``budget``).
SENTENCE_TRANSFORMERS_MODULE = "metaembed.integrations.sentence_transformers.MetaEmbedModule"
SENTENCE_TRANSFORMERS_KWARGS = ("task", "budget")


def is_saved_model(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`save`."""
    return Path(path, CONFIG_NAME).is_file()


def hub_folder(repo_id: str) -> Path | None:
    """The local snapshot of a Hugging Face Hub repo holding a saved MetaEmbed model, else ``None``.

    Only the small config is fetched to decide; the rest of the snapshot is
    fetched when it is a MetaEmbed model (the Hub cache and ``HF_HUB_OFFLINE``
    apply as usual). Any repo without ``metaembed_config.json`` gives ``None``.
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        hf_hub_download(repo_id, CONFIG_NAME)
    except (OSError, ValueError, EntryNotFoundError):  # not on the Hub, not reachable, no such file
        return None
    return Path(snapshot_download(repo_id))


def own_weights(model: "MetaEmbedModel") -> dict[str, torch.Tensor]:
    """The tensors MetaEmbed adds to the backbone: Meta Token table and projection."""
    tensors: dict[str, torch.Tensor] = {}
    if model.meta_tokens is not None:
        tensors["meta_tokens.weight"] = model.meta_tokens.weight
    if model.projection is not None:
        tensors["projection.weight"] = model.projection.weight
        tensors["projection.bias"] = model.projection.bias
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}


def load_own_weights(model: "MetaEmbedModel", tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (as :func:`own_weights` names them) into ``model``; names must match exactly."""
    expected = set(own_weights(model))
    if set(tensors) != expected:
        raise InputError(f"MetaEmbed weights hold {sorted(tensors)}, the config expects {sorted(expected)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            target = model.get_parameter(name)
            if target.shape != tensor.shape:
                raise InputError(f"{name} has shape {tuple(tensor.shape)}, the config expects {tuple(target.shape)}")
            target.copy_(tensor)


def base_backbone_state(model: "MetaEmbedModel") -> dict[str, torch.Tensor]:
    """The backbone's own weights, without LoRA tensors and with peft's ``base_layer`` renamed back."""
    state = {}
    for name, tensor in model.backbone.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    return state


def save(model: "MetaEmbedModel", path: str | Path, *, with_backbone: bool = True) -> None:
    """Write ``model`` to the folder ``path`` (created if needed).

    ``with_backbone=False`` keeps the config's backbone and processor references instead of
    copying them; they must then be loadable from anywhere (a ``"package:<module>"`` reference
    or a Hub id, not a config object or a local folder that may move).
    """
    from metaembed.model import builtin

    path = Path(path)
    if not with_backbone:
        for field in ("backbone", "processor"):
            value = getattr(model.config, field)
            if value is not None and not builtin.is_package_reference(value) and (
                not isinstance(value, str) or Path(value).exists()
            ):
                raise InputError(
                    f"save without the backbone needs a portable {field} reference "
                    f"('package:<module>' or a Hub id), got {value!r}"
                )
    path.mkdir(parents=True, exist_ok=True)
    if with_backbone:
        config = dataclasses.replace(model.config, backbone=BACKBONE_DIR, processor=PROCESSOR_DIR)
    else:
        config = dataclasses.replace(model.config)
    config.save(path)
    save_file(own_weights(model), str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    if with_backbone:
        model.backbone.save_pretrained(str(path / BACKBONE_DIR), state_dict=base_backbone_state(model))
        model.adapter.save_processors(path / PROCESSOR_DIR)
    if model.peft_model is not None:
        model.peft_model.save_pretrained(str(path / ADAPTER_DIR))
        if not with_backbone:  # peft records where the base came from: keep the portable reference
            adapter_config = path / ADAPTER_DIR / "adapter_config.json"
            values = json.loads(adapter_config.read_text())
            values["base_model_name_or_path"] = str(model.config.backbone)
            adapter_config.write_text(json.dumps(values, indent=2, sort_keys=True))
    write_sentence_transformers_files(path, model.config)


def write_sentence_transformers_files(path: Path, config: MetaEmbedConfig) -> None:
    """``modules.json`` (one module, :data:`SENTENCE_TRANSFORMERS_MODULE`) and the model-level config.

    Plain JSON, so saving needs no sentence-transformers import; the module itself lives in the
    integrations layer, which sentence-transformers imports when it loads the folder.
    """
    module = {"idx": 0, "name": "0", "path": "", "type": SENTENCE_TRANSFORMERS_MODULE,
              "kwargs": list(SENTENCE_TRANSFORMERS_KWARGS)}
    (path / "modules.json").write_text(json.dumps([module], indent=2))
    settings = {"model_type": "MultiVectorEncoder", "similarity_fn_name": "maxsim",
                "prompts": dict(config.prompts), "default_prompt_name": None}
    (path / "config_sentence_transformers.json").write_text(json.dumps(settings, indent=2, sort_keys=True))


def load_config(path: str | Path, dtype: torch.dtype | None = None) -> MetaEmbedConfig:
    """The config of the saved folder ``path``, its backbone and processor pointing into the folder.

    ``dtype`` overrides the backbone's compute dtype.
    """
    path = Path(path)
    config = MetaEmbedConfig.load(path)
    for field in ("backbone", "processor"):
        value = getattr(config, field)
        if isinstance(value, str) and (path / value).exists():
            setattr(config, field, str(path / value))
    if dtype is not None:
        config.torch_dtype = str(dtype).removeprefix("torch.")
    return config


def read_own_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The Meta Token table and projection of the saved folder ``path`` (for :func:`load_own_weights`)."""
    return load_file(str(Path(path) / WEIGHTS_NAME))


def adapter_folder(path: str | Path) -> Path | None:
    """The peft LoRA adapter folder inside the saved folder ``path``, ``None`` when the model has none."""
    folder = Path(path) / ADAPTER_DIR
    return folder if folder.is_dir() else None


__all__ = [
    "save",
    "load_config",
    "read_own_weights",
    "adapter_folder",
    "is_saved_model",
    "hub_folder",
    "own_weights",
    "load_own_weights",
    "WEIGHTS_NAME",
]
