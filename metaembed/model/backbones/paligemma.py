"""PaliGemma / PaliGemma-2 (SigLIP vision tower + Gemma / Gemma-2 LM), one of the paper's other families.

Prompts follow the official ColPali-style simple prompts: ``<image>…<bos>{prefix}{text}``
(``Describe the image.`` for a bare image), and queries get 10 × ``<pad>`` +
``"\\n"``. Each image becomes ``(image_size / patch_size)²`` ``<image>`` tokens.
Attention is causal over the whole sequence (no prefix-LM block: no
``token_type_ids``), like every MetaEmbed backbone; PaliGemma positions are
1-based, counted over real tokens.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from PIL import Image
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from metaembed.model.backbones import VLM_LORA_TARGETS, BackboneAdapter, positions_from_mask, register
from metaembed.model.templates import PromptTemplate


@register
class PaliGemmaAdapter(BackboneAdapter):
    """PaliGemma and PaliGemma-2."""

    family = "paligemma"
    model_types = ("paligemma",)
    supports_images = True
    image_token = "<image>"
    default_template = PromptTemplate(
        prompt="{images}<bos>{prefix}{text}",
        image_placeholder="<image>",
        query_suffix="<pad>" * 10 + "\n",
    )
    lora_target_modules = VLM_LORA_TARGETS

    @classmethod
    def load_image_processor(cls, source: str, config: Any) -> SiglipImageProcessorPil:
        return SiglipImageProcessorPil.from_pretrained(source)

    def process_images(self, images: Sequence[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        vision = self.backbone.config.vision_config
        per_image = (vision.image_size // vision.patch_size) ** 2
        pixel_values = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values}, [per_image] * len(images)

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        attention_mask = batch["attention_mask"]
        output = self.backbone(
            input_ids=batch["input_ids"],
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask) + 1,
            pixel_values=batch.get("pixel_values"),
            use_cache=False,
        )
        return output.last_hidden_state


__all__ = ["PaliGemmaAdapter"]
