"""LoRA on the backbone's language model (peft), as the paper trains MetaEmbed: a mixin of the model.

The paper's recipe: r = 32, α = 32, dropout 0.1, Gaussian init, on the
q/k/v/o/gate/up/down projections of the language model; the Meta Token table
(and projection) fully trained; everything else frozen. The peft model wraps
``model.backbone`` in place (its modules get LoRA layers), so the backbone's
forward uses the adapters without any change to the rest of MetaEmbed.

:class:`LoraMixin` gives :class:`~metaembed.model.MetaEmbedModel` its LoRA methods, the way
sentence-transformers' ``PeftAdapterMixin`` does: :meth:`~LoraMixin.add_lora` (new,
trainable adapters), :meth:`~LoraMixin.load_lora` (a saved peft folder) and
:meth:`~LoraMixin.load_lora_weights` (a LoRA config and its tensors, as the official-checkpoint
converter hands them over).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

from metaembed.errors import InputError


class LoraMixin:
    """LoRA adapters for a model with ``backbone``, ``adapter``, ``meta_tokens`` and ``projection``.

    ``peft_model`` is the peft wrapper of ``backbone`` once adapters are attached (``None``
    before); it is not a submodule, since it shares every module with ``backbone``.
    """

    peft_model: Any = None

    def add_lora(
        self,
        r: int = 32,
        alpha: int = 32,
        dropout: float = 0.1,
        target_modules: str | Sequence[str] | None = None,
    ) -> None:
        """Wrap the language model with peft LoRA (paper: r=32, α=32, dropout 0.1 on q/k/v/o/gate/up/down).

        Afterwards only the LoRA weights, the Meta Token table and the projection
        are trainable; everything else is frozen.
        """
        self._check_no_lora()
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise InputError(f"LoRA rank r must be a positive integer, got {r!r}")
        targets = target_modules if target_modules is not None else self.adapter.lora_target_modules
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
            init_lora_weights="gaussian",
            bias="none",
        )
        self._attach(get_peft_model(self.backbone, config), trainable=True)

    def load_lora(self, directory: str | Path, *, trainable: bool = False) -> None:
        """Load a peft LoRA adapter folder (as :meth:`save_pretrained` writes it) onto the backbone."""
        self._check_no_lora()
        self._attach(PeftModel.from_pretrained(self.backbone, str(directory), is_trainable=trainable), trainable)

    def load_lora_weights(self, config: LoraConfig, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Attach LoRA layers as ``config`` says and load ``state_dict`` into them, frozen.

        ``state_dict`` keys are peft's: ``base_model.model.<backbone module>.lora_A.weight``.
        :class:`InputError` names the tensors that match no module of the backbone.
        """
        self._check_no_lora()
        peft_model = get_peft_model(self.backbone, config)
        result = set_peft_model_state_dict(peft_model, dict(state_dict))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise InputError(f"LoRA weights that match no module of the backbone: {unexpected[:5]}")
        self._attach(peft_model, trainable=False)

    def _check_no_lora(self) -> None:
        if self.peft_model is not None:
            raise InputError("the model already has LoRA adapters")

    def _attach(self, peft_model: PeftModel, trainable: bool) -> None:
        # object.__setattr__: the peft wrapper shares every module with self.backbone,
        # registering it as a submodule would duplicate them in state_dict()
        object.__setattr__(self, "peft_model", peft_model)
        for name, parameter in self.backbone.named_parameters():
            parameter.requires_grad = trainable and "lora_" in name
        for module in (self.meta_tokens, self.projection):
            if module is not None:
                module.requires_grad_(True)


__all__ = ["LoraMixin"]
