"""LoRA on the backbone's language model (peft), as the paper trains MetaEmbed.

The paper's recipe: r = 32, α = 32, dropout 0.1, Gaussian init, on the
q/k/v/o/gate/up/down projections of the language model; the Meta Token table
(and projection) fully trained; everything else frozen. The peft model wraps
``model.backbone`` in place (its modules get LoRA layers), so the backbone's
forward uses the adapters without any change to the rest of MetaEmbed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from peft import LoraConfig, PeftModel, get_peft_model

from metaembed.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from metaembed.model.modeling import MetaEmbedModel


def _attach(model: "MetaEmbedModel", peft_model: PeftModel, trainable: bool) -> None:
    # object.__setattr__: the peft wrapper shares every module with model.backbone,
    # registering it as a submodule would duplicate them in state_dict()
    object.__setattr__(model, "peft_model", peft_model)
    for name, parameter in model.backbone.named_parameters():
        parameter.requires_grad = trainable and "lora_" in name
    for module in (model.meta_tokens, model.projection):
        if module is not None:
            module.requires_grad_(True)


def add_lora(
    model: "MetaEmbedModel",
    *,
    r: int = 32,
    alpha: int = 32,
    dropout: float = 0.1,
    target_modules: str | Sequence[str] | None = None,
) -> None:
    """Add trainable LoRA adapters to ``model``'s language model; freeze the rest of the backbone."""
    if model.peft_model is not None:
        raise InputError("the model already has LoRA adapters")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InputError(f"LoRA rank r must be a positive integer, got {r!r}")
    targets = target_modules if target_modules is not None else model.adapter.lora_target_modules
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        init_lora_weights="gaussian",
        bias="none",
    )
    _attach(model, get_peft_model(model.backbone, config), trainable=True)


def load_lora(model: "MetaEmbedModel", directory: str | Path, *, trainable: bool = False) -> None:
    """Load a peft LoRA adapter folder onto ``model.backbone``."""
    if model.peft_model is not None:
        raise InputError("the model already has LoRA adapters")
    peft_model = PeftModel.from_pretrained(model.backbone, str(directory), is_trainable=trainable)
    _attach(model, peft_model, trainable=trainable)


__all__ = ["add_lora", "load_lora"]
