"""Backbone adapters: what MetaEmbed needs to know about one family of backbones.

Adding a family touches one file: a new module in this package (every module
here is imported when a family is looked up) with a subclass of
:class:`BackboneAdapter` that sets the class attributes, overrides what
differs and is decorated with :func:`register`. The adapter interface:

``family`` / ``model_types``
    the adapter's name and the Hugging Face ``config.model_type`` values it
    serves (used to detect the family of a checkpoint).
``causal``
    whether the backbone attends causally (then a query need not carry the
    candidate Meta Tokens, which cannot influence its own).
``supports_images`` / ``image_token``
    whether items may carry images, and the placeholder token that image
    features replace (the template's ``image_placeholder`` contains it).
``default_template``
    the family's :class:`~metaembed.model.templates.PromptTemplate`.
``load_backbone(source, dtype)``
    a base model (no LM head) from a config object, a folder or an id; the
    default uses ``AutoModel``.
``load_tokenizer(source)`` / ``load_image_processor(source, config)``
    offline-safe loading of the tokenizer and image processor from a folder or
    id (``save_processors`` writes both).
``process_images(images)``
    PIL images → ``(tensors, tokens_per_image)``; the image placeholder of the
    i-th image is expanded to ``tokens_per_image[i]`` tokens.
``collate(encoded, input_ids, attention_mask)``
    the batch's extra tensors: by default the image tensors of the items that
    have images, concatenated, plus ``token_features(input_ids)`` (per-token
    tensors such as Qwen-VL's ``mm_token_type_ids``).
``max_content_tokens(num_meta_tokens)``
    a backbone limit on content tokens (e.g. BERT's position table), or ``None``.
``lora_target_modules``
    the default peft target regex (the language model's attention and MLP).
``query_path(meta_tokens, projection)``
    optional: the query side as one traceable ``nn.Module`` (right-padded ids and mask →
    ``(B, R_q, D)`` embeddings) that :mod:`metaembed.model.query_export` exports to ONNX, so
    that a search encodes its query without transformers; ``None`` (the default) when the
    family has none, and searches then load the model.
``run(batch)``
    the backbone's forward on a padded batch → last hidden states
    ``(B, L, H)`` after the final norm. An adapter with ``supports_one_way``
    also reads ``batch["meta_slots"]`` (``(B, L)`` bool, the Meta Token slots)
    when the config asks for one-way Meta Token attention. It must compute positions from the
    attention mask (never from absolute indices) so that padding does not
    change the result.

The Meta Tokens themselves are handled outside the adapter, at the
``input_embeddings()`` module (see :mod:`metaembed.model.meta_tokens`).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from metaembed.errors import InputError, MetaEmbedError
from metaembed.model.templates import PromptTemplate

if TYPE_CHECKING:  # pragma: no cover
    from metaembed.model.config import MetaEmbedConfig

_REGISTRY: dict[str, type["BackboneAdapter"]] = {}

_PROJECTIONS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
#: LoRA targets of a text LM: its attention and MLP projections
LM_LORA_TARGETS = r".*\." + _PROJECTIONS
#: LoRA targets of a vision-language model's LM only (vision MLPs also have gate/up/down_proj)
VLM_LORA_TARGETS = r".*language_model.*\." + _PROJECTIONS


@dataclass
class EncodedItem:
    """One tokenised item: ids with image placeholders expanded, plus its image tensors."""

    input_ids: list[int]
    images: dict[str, torch.Tensor] = field(default_factory=dict)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` positions that count real tokens only (0 at padding), so padding never shifts them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class BackboneAdapter:
    """Base adapter for a Hugging Face backbone; see the module docstring."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    supports_images: ClassVar[bool] = False
    #: causal attention: queries may skip the candidate Meta Tokens (see MetaTokens.num_appended)
    causal: ClassVar[bool] = True
    #: a bidirectional backbone whose ``run`` honours ``batch["meta_slots"]`` (one-way Meta Token
    #: attention, see ``MetaEmbedConfig.meta_attention``)
    supports_one_way: ClassVar[bool] = False
    image_token: ClassVar[str | None] = None
    default_template: ClassVar[PromptTemplate] = PromptTemplate()
    #: peft ``target_modules`` regex (full match on module names) for :meth:`MetaEmbedModel.add_lora`
    lora_target_modules: ClassVar[str] = LM_LORA_TARGETS

    def __init__(self, backbone: nn.Module, tokenizer: Any, image_processor: Any, config: "MetaEmbedConfig") -> None:
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config

    # ---------------------------------------------------------------- loading
    @classmethod
    def load_backbone(cls, source: str | PretrainedConfig, dtype: torch.dtype | None = None) -> PreTrainedModel:
        """The base model (no LM head) from a config object (random init) or a folder / id.

        A vision-language checkpoint saved as ``...ForConditionalGeneration`` (or a
        subclass, as the official ``LastQwen2_5``) is loaded with its own class and
        its base model taken out: loading it straight into the base class mis-maps
        the vision-tower keys in transformers 5.
        """
        if isinstance(source, PretrainedConfig):
            return AutoModel.from_config(source, dtype=dtype)
        if cls.supports_images:
            architectures = AutoConfig.from_pretrained(source).architectures or []
            if architectures and not architectures[0].endswith("Model"):
                full = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
                backbone = full.model
                del full  # drop the LM head
                return backbone
        return AutoModel.from_pretrained(source, dtype=dtype)

    @classmethod
    def load_tokenizer(cls, source: str) -> Any:
        """The tokenizer saved in ``source`` (a folder or an id)."""
        return AutoTokenizer.from_pretrained(source)

    @classmethod
    def load_image_processor(cls, source: str, config: "MetaEmbedConfig") -> Any:
        """The image processor for ``source``; ``None`` for text-only families."""
        return None

    def save_processors(self, directory: str | Path) -> None:
        """Write tokenizer (and image processor) so that the ``load_*`` methods read them back."""
        self.tokenizer.save_pretrained(str(directory))
        if self.image_processor is not None:
            self.image_processor.save_pretrained(str(directory))

    # ------------------------------------------------------------- properties
    @property
    def hidden_size(self) -> int:
        """Width of the last hidden states."""
        config = self.backbone.config
        text_config = getattr(config, "text_config", None) or config
        return int(text_config.hidden_size)

    def input_embeddings(self) -> nn.Module:
        """The token-embedding module whose output the Meta Token rows replace."""
        return self.backbone.get_input_embeddings()

    @property
    def pad_token_id(self) -> int:
        """Id used for padding (its value never matters: padding is masked)."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return int(pad) if pad is not None else 0

    @property
    def meta_slot_id(self) -> int:
        """Placeholder id in the Meta Token slots (replaced before the backbone sees it)."""
        return self.pad_token_id

    @property
    def image_token_id(self) -> int | None:
        """Id of :attr:`image_token` in the tokenizer."""
        if self.image_token is None:
            return None
        return int(self.tokenizer.convert_tokens_to_ids(self.image_token))

    def max_content_tokens(self, num_meta_tokens: int) -> int | None:
        """Most content tokens an item may have before the Meta Tokens (``None``: no backbone limit)."""
        return None

    # --------------------------------------------------------------- per item
    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt; the template carries all special tokens."""
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def process_images(self, images: Sequence[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Image tensors for one item's images and the number of tokens each expands to."""
        raise InputError(f"the {self.family!r} backbone has no image support")

    def encode(self, prompt: str, images: Sequence[Image.Image]) -> EncodedItem:
        """Tokenise ``prompt`` and expand each image placeholder to its image's token count."""
        ids = self.tokenize(prompt)
        if not images:
            return EncodedItem(ids)
        try:
            tensors, counts = self.process_images(images)
        except MetaEmbedError:
            raise
        except ValueError as error:  # the image processor's limits (e.g. Qwen2-VL: aspect ratio < 200)
            sizes = ", ".join(f"{image.width}x{image.height}" for image in images)
            raise InputError(f"the {self.family!r} backbone cannot read an image of {sizes}: {error}") from None
        image_id = self.image_token_id
        positions = [i for i, token in enumerate(ids) if token == image_id]
        if len(positions) != len(images):
            raise InputError(
                f"the prompt has {len(positions)} image placeholders for {len(images)} images; "
                "check the template's image_placeholder"
            )
        expanded: list[int] = []
        previous = 0
        for position, count in zip(positions, counts):
            expanded.extend(ids[previous:position])
            expanded.extend([image_id] * count)
            previous = position + 1
        expanded.extend(ids[previous:])
        return EncodedItem(expanded, tensors)

    # ------------------------------------------------------------------ batch
    def collate(
        self, encoded: Sequence[EncodedItem], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Extra batch tensors for the padded ``input_ids`` / ``attention_mask`` ``(B, L)``.

        Default: :meth:`token_features` plus the image tensors of the items that
        have images, concatenated on dim 0 (in item order).
        """
        batch = self.token_features(input_ids)
        per_item = [item.images for item in encoded if item.images]
        keys = sorted({key for tensors in per_item for key in tensors})
        batch.update({key: torch.cat([tensors[key] for tensors in per_item if key in tensors]) for key in keys})
        return batch

    def token_features(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra per-token tensors the backbone needs, derived from padded ids."""
        return {}

    def query_path(self, meta_tokens: nn.Module, projection: nn.Module | None) -> nn.Module | None:
        """The query side as one exportable module (see the module docstring); ``None``: not offered."""
        return None

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states ``(B, L, H)`` of a padded batch (positions from the mask)."""
        raise NotImplementedError


def register(adapter: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator: make an adapter available under its ``family`` name."""
    _REGISTRY[adapter.family] = adapter
    return adapter


def _load_families() -> None:
    # Importing every module of this package runs its @register decorators, so a new
    # family is one new file here and nothing else.
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def families() -> list[str]:
    """Names of the supported backbone families."""
    _load_families()
    return sorted(_REGISTRY)


def get_adapter(family: str) -> type[BackboneAdapter]:
    """The adapter class of ``family``; :class:`InputError` names the supported ones."""
    _load_families()
    if family not in _REGISTRY:
        raise InputError(f"unknown backbone family {family!r}; supported: {sorted(_REGISTRY)}")
    return _REGISTRY[family]


def detect_family(model_type: str) -> str:
    """The family serving a Hugging Face ``model_type``."""
    _load_families()
    for family, adapter in sorted(_REGISTRY.items()):
        if model_type in adapter.model_types:
            return family
    supported = sorted(t for adapter in _REGISTRY.values() for t in adapter.model_types)
    raise InputError(f"no MetaEmbed adapter for backbone model_type {model_type!r}; supported: {supported}")


__all__ = [
    "BackboneAdapter",
    "EncodedItem",
    "register",
    "families",
    "get_adapter",
    "detect_family",
    "positions_from_mask",
    "LM_LORA_TARGETS",
    "VLM_LORA_TARGETS",
]
