"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the paper's main backbones.

Images go through the pure-PIL ``Qwen2VLImageProcessorPil`` (the processor
classes need torchvision for their video half, which this project does without)
with ``max_pixels = max_visual_tokens · (patch · merge)²``, so an image yields at
most ``max_visual_tokens`` merged visual tokens (official: 1024 · 28²). The
``<|image_pad|>`` placeholder is expanded to that many tokens by hand and
``mm_token_type_ids`` marks them, as transformers 5 requires for M-RoPE.

Positions come from the model's own ``get_rope_index`` on the ids *with* the
Meta Token slots and the attention mask, so the Meta Tokens get ordinary
sequential text positions after the last real token (as in the official code)
and padding never shifts anything.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from metaembed.model.backbones import VLM_LORA_TARGETS, BackboneAdapter, register
from metaembed.model.templates import PromptTemplate

_QWEN_TEMPLATE = PromptTemplate()  # the official simple prompt (see metaembed.model.templates)


class _QwenVLAdapter(BackboneAdapter):
    supports_images = True
    image_token = "<|image_pad|>"
    default_template = _QWEN_TEMPLATE
    lora_target_modules = VLM_LORA_TARGETS

    @classmethod
    def load_image_processor(cls, source: str, config: Any) -> Qwen2VLImageProcessorPil:
        return Qwen2VLImageProcessorPil.from_pretrained(source)

    def _pixel_limits(self) -> dict[str, int]:
        processor = self.image_processor
        factor = processor.patch_size * processor.merge_size
        longest = self.config.max_visual_tokens * factor * factor
        shortest = min(int(processor.size["shortest_edge"]), longest)
        return {"shortest_edge": shortest, "longest_edge": longest}

    def process_images(self, images: Sequence[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        out = self.image_processor(images=list(images), size=self._pixel_limits(), return_tensors="pt")
        grid = out["image_grid_thw"]
        counts = (grid.prod(dim=-1) // self.image_processor.merge_size**2).tolist()
        return {"pixel_values": out["pixel_values"], "image_grid_thw": grid}, counts

    def token_features(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        # 1 marks image tokens; text (and the Meta Token slots) are 0, so they get text positions
        return {"mm_token_type_ids": (input_ids == self.image_token_id).int()}

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        mm_token_type_ids = batch.get("mm_token_type_ids")
        if mm_token_type_ids is None:
            mm_token_type_ids = self.token_features(input_ids)["mm_token_type_ids"]
        grid = batch.get("image_grid_thw")
        position_ids, _ = self.backbone.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=grid, attention_mask=attention_mask
        )
        output = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=batch.get("pixel_values"),
            image_grid_thw=grid,
            mm_token_type_ids=mm_token_type_ids,
            use_cache=False,
        )
        return output.last_hidden_state


@register
class Qwen2VLAdapter(_QwenVLAdapter):
    """Qwen2-VL."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)


@register
class Qwen2_5VLAdapter(_QwenVLAdapter):
    """Qwen2.5-VL (the paper's MetaEmbed-3B/7B/32B backbone)."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)


@register
class Qwen3VLAdapter(_QwenVLAdapter):
    """Qwen3-VL (16-px patches; same prompt format)."""

    family = "qwen3_vl"
    model_types = ("qwen3_vl",)


__all__ = ["Qwen2VLAdapter", "Qwen2_5VLAdapter", "Qwen3VLAdapter"]
