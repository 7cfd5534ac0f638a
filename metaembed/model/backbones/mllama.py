"""Llama-3.2-Vision (Mllama), the paper's MetaEmbed-11B backbone.

Mllama reads images through cross-attention layers instead of image tokens in
the sequence: the prompt holds one ``<|image|>`` token per image and a
``cross_attention_mask (B, L, n_images, n_tiles)`` says which text positions
see which image tiles. Prompts follow the official ``LastLlama3Vision``
processor: ``<|image|><|begin_of_text|>{prefix}{text}<|end_of_text|>`` and, for
queries, 10 × ``<|end_of_text|>`` + ``"\\n"``.

The cross-attention mask is built per item on its own tokens *including* the
Meta Token slots (so the Meta Tokens see the images, as every text token after
the image does), then placed at the item's real positions in the padded batch;
image tensors are padded to the batch's largest image count with empty tiles.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from PIL import Image
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
from transformers.models.mllama.processing_mllama import (
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)

from metaembed.model.backbones import VLM_LORA_TARGETS, BackboneAdapter, EncodedItem, positions_from_mask, register
from metaembed.model.templates import PromptTemplate

_IMAGE_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")


@register
class MllamaAdapter(BackboneAdapter):
    """Llama-3.2-Vision (Mllama)."""

    family = "mllama"
    model_types = ("mllama",)
    supports_images = True
    image_token = "<|image|>"
    default_template = PromptTemplate(
        prompt="{images}<|begin_of_text|>{prefix}{text}<|end_of_text|>",
        image_placeholder="<|image|>",
        query_suffix="<|end_of_text|>" * 10 + "\n",
    )
    lora_target_modules = VLM_LORA_TARGETS

    @classmethod
    def load_image_processor(cls, source: str, config: Any) -> MllamaImageProcessorPil:
        return MllamaImageProcessorPil.from_pretrained(source)

    def process_images(self, images: Sequence[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        out = self.image_processor(images=[list(images)], return_tensors="pt")
        tensors = {key: out[key][0] for key in _IMAGE_KEYS}  # drop the batch dim: (n_images, ...)
        tensors["num_tiles"] = torch.tensor(out["num_tiles"][0], dtype=torch.long)
        return tensors, [1] * len(images)  # one <|image|> token per image

    def collate(
        self, encoded: Sequence[EncodedItem], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if not any(item.images for item in encoded):
            return {}
        batch_size, length = input_ids.shape
        max_images = max(len(item.images.get("num_tiles", ())) for item in encoded)
        max_tiles = self.image_processor.max_image_tiles
        shapes = next(item.images for item in encoded if item.images)
        batch = {
            key: torch.zeros((batch_size, max_images) + tuple(shapes[key].shape[1:]), dtype=shapes[key].dtype)
            for key in _IMAGE_KEYS
        }
        cross = torch.zeros((batch_size, length, max_images, max_tiles), dtype=torch.long)
        for row, item in enumerate(encoded):
            if not item.images:
                continue  # a text-only row in a mixed batch: no image is visible to it
            count = len(item.images["num_tiles"])
            for key in _IMAGE_KEYS:
                batch[key][row, :count] = item.images[key]
            spans = get_cross_attention_token_mask(item.input_ids, self.image_token_id)
            dense = convert_sparse_cross_attention_mask_to_dense(
                [spans], [item.images["num_tiles"].tolist()], max_tiles, len(item.input_ids)
            )
            real = attention_mask[row].bool()
            cross[row, real, :count] = torch.from_numpy(dense[0])
        batch["cross_attention_mask"] = cross
        return batch

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        cross = batch.get("cross_attention_mask")
        if cross is None:
            return self._run(batch, with_images=False)
        has_image = cross.flatten(1).any(dim=1)
        if bool(has_image.all()):
            return self._run(batch, with_images=True)
        # Mllama lets a row that sees no image attend uniformly to the batch's (padding)
        # images, so a text-only row would depend on its batch. Run such rows without
        # images (as they run alone) and take each row from the matching pass. Encoding
        # sorts items by size, so mixed batches are rare.
        with_images = self._run(batch, with_images=True)
        without = self._run(batch, with_images=False)
        return torch.where(has_image.view(-1, 1, 1), with_images, without)

    def _run(self, batch: Mapping[str, torch.Tensor], *, with_images: bool) -> torch.Tensor:
        attention_mask = batch["attention_mask"]
        images = {key: batch.get(key) for key in (*_IMAGE_KEYS, "cross_attention_mask")} if with_images else {}
        output = self.backbone(
            input_ids=batch["input_ids"],
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            use_cache=False,
            **images,
        )
        return output.last_hidden_state


__all__ = ["MllamaAdapter"]
