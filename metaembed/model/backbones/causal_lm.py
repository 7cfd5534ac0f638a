"""Text-only causal language models (Qwen2, Qwen3, and other decoder-only LMs).

MetaEmbed on a text LM is the same recipe without the vision tower: the Meta
Tokens follow the formatted text under causal attention. Positions are counted
over real tokens only, so left padding does not shift them (transformers'
default ``arange`` would).
"""

from __future__ import annotations

from typing import Mapping

import torch

from metaembed.model.backbones import BackboneAdapter, positions_from_mask, register
from metaembed.model.templates import PromptTemplate


class CausalLMAdapter(BackboneAdapter):
    """Any decoder-only Hugging Face LM whose base model takes ``position_ids``."""

    family = "causal_lm"
    model_types = ("llama", "mistral", "gemma", "gemma2", "phi3", "olmo2")
    # no chat markup that would need family-specific special tokens
    default_template = PromptTemplate(
        prompt="{images}{prefix}{text}",
        image_placeholder="",
        query_suffix="",
    )

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        attention_mask = batch["attention_mask"]
        output = self.backbone(
            input_ids=batch["input_ids"],
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            use_cache=False,
        )
        return output.last_hidden_state


@register
class GenericCausalLMAdapter(CausalLMAdapter):
    """Decoder-only LMs without a chat template of their own here (prompt: prefix + text)."""


@register
class Qwen2Adapter(CausalLMAdapter):
    """Qwen2 / Qwen2.5 text LMs, with the Qwen chat prompt of the official code."""

    family = "qwen2"
    model_types = ("qwen2",)
    default_template = PromptTemplate(image_placeholder="")


@register
class Qwen3Adapter(Qwen2Adapter):
    """Qwen3 text LMs (same prompt as Qwen2)."""

    family = "qwen3"
    model_types = ("qwen3",)


__all__ = ["CausalLMAdapter", "GenericCausalLMAdapter", "Qwen2Adapter", "Qwen3Adapter"]
