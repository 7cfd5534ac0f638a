"""``MetaEmbedConfig``: everything needed to rebuild a MetaEmbed model.

The config names the backbone (a Hugging Face id, a local folder, or a
``transformers.PretrainedConfig`` for randomly initialised test models), the
number of Meta Tokens per side, the pooling mode, the optional projection and
the prompt template. It round-trips through JSON (:meth:`MetaEmbedConfig.to_dict`
/ :meth:`MetaEmbedConfig.from_dict`); a config object backbone is stored as its
``to_dict()`` with its ``model_type``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from transformers import AutoConfig, PretrainedConfig

from metaembed.errors import InputError
from metaembed.model.templates import PromptTemplate

Pooling = Literal["meta_tokens", "last_token", "mean", "chunks"]
POOLING_MODES: tuple[str, ...] = ("meta_tokens", "last_token", "mean", "chunks")
META_ATTENTION_MODES: tuple[str, ...] = ("bidirectional", "one_way")
META_TOKEN_INITS: tuple[str, ...] = ("normal", "mean_embedding")
BackboneSource = Union[str, Path, PretrainedConfig]

CONFIG_NAME = "metaembed_config.json"


class ConfigError(InputError):
    """A :class:`MetaEmbedConfig` field has a value that cannot work."""


@dataclass
class MetaEmbedConfig:
    """How a MetaEmbed model is built.

    Attributes:
        backbone: a Hugging Face model id, a local folder, or a
            ``PretrainedConfig`` (randomly initialised backbone, for tests).
        processor: where the tokenizer / image processor are loaded from; ``None``
            means the backbone id or folder. Required when ``backbone`` is a
            config object.
        family: the backbone adapter (``"qwen2_vl"``, ``"qwen2_5_vl"``, ...);
            ``None`` detects it from the backbone's ``model_type``.
        num_query_tokens: Meta Tokens read out for a query (paper: 16).
        num_candidate_tokens: Meta Tokens read out for a candidate (paper: 64).
        shared_meta_tokens: one set of Meta Tokens for both sides (needs equal
            counts), as the official ``shared_query_doc_prompt`` option.
        projection_dim: ``None`` (the paper's setting) keeps the backbone's hidden
            size; an int adds a linear projection to that size.
        pooling: ``"meta_tokens"`` (MetaEmbed), or a baseline: ``"last_token"``
            and ``"mean"`` (one vector), ``"chunks"`` (the content split into
            as many contiguous chunks as the side has tokens, each mean-pooled).
        template: the prompt template; ``None`` uses the family's default.
        max_visual_tokens: cap on visual tokens per image after merging (official: 1024);
            Qwen-VL resizes images to fit it, fixed-size families (PaliGemma,
            Mllama) have their own count.
        max_length: cap on content tokens per item before the Meta Tokens
            (official: 16384); longer text is cut on the right.
        initializer_range: std of the normal init of the Meta Token table.
        meta_token_init: ``"normal"`` (``N(0, initializer_range)``, the official code's) or
            ``"mean_embedding"``: every row the mean of the backbone's token embeddings plus
            ``N(0, initializer_range)`` noise, so a fresh Meta Token enters the backbone like a
            real token.
        meta_attention: how a bidirectional encoder's input and Meta Tokens see each other.
            ``"bidirectional"``: everything attends to everything. ``"one_way"``: the Meta Tokens
            attend to the input and to each other, the input never to the Meta Tokens, as in the
            paper's causal backbones (Meta Tokens come last). The input's states then stay exactly
            the pretrained encoder's (LoRA adapters act on the Meta Token path only), so one
            forward pass also gives the plain encoder's token states, and those can be cached
            across training steps. Each side then carries only its own Meta Tokens. Causal
            backbones are one-way by construction and accept either value.
        torch_dtype: the dtype the backbone is loaded in (``"float32"``,
            ``"bfloat16"``, ...); ``None`` keeps the checkpoint's or float32.
        prompts: named instructions (``{"retrieval": "Find the page that answers"}``) that
            ``encode_*(prompt_name=...)`` and sentence-transformers' ``prompt_name`` pick from.
    """

    backbone: BackboneSource
    processor: str | None = None
    family: str | None = None
    num_query_tokens: int = 16
    num_candidate_tokens: int = 64
    shared_meta_tokens: bool = False
    projection_dim: int | None = None
    pooling: str = "meta_tokens"
    template: PromptTemplate | None = None
    max_visual_tokens: int = 1024
    max_length: int = 16384
    initializer_range: float = 0.02
    meta_token_init: str = "normal"
    meta_attention: str = "bidirectional"
    torch_dtype: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.backbone, Path):
            self.backbone = str(self.backbone)
        if isinstance(self.template, dict):
            self.template = PromptTemplate(**self.template)
        for name in ("num_query_tokens", "num_candidate_tokens", "max_visual_tokens", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config {name} must be a positive integer, got {value!r}")
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"config pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.meta_token_init not in META_TOKEN_INITS:
            raise ConfigError(f"config meta_token_init must be one of {META_TOKEN_INITS}, got {self.meta_token_init!r}")
        if self.meta_attention not in META_ATTENTION_MODES:
            raise ConfigError(f"config meta_attention must be one of {META_ATTENTION_MODES}, got {self.meta_attention!r}")
        if self.shared_meta_tokens and self.num_query_tokens != self.num_candidate_tokens:
            raise ConfigError(
                "shared_meta_tokens needs num_query_tokens == num_candidate_tokens, got "
                f"{self.num_query_tokens} and {self.num_candidate_tokens}"
            )
        if self.projection_dim is not None and (
            isinstance(self.projection_dim, bool) or not isinstance(self.projection_dim, int) or self.projection_dim < 1
        ):
            raise ConfigError(f"config projection_dim must be None or a positive integer, got {self.projection_dim!r}")
        if not isinstance(self.prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.prompts.items()
        ):
            raise ConfigError(f"config prompts must map names to instruction strings, got {self.prompts!r}")
        if not isinstance(self.backbone, (str, PretrainedConfig)):
            raise ConfigError(
                "config backbone must be a Hugging Face id, a local folder or a transformers "
                f"PretrainedConfig, got {type(self.backbone).__name__}"
            )

    @property
    def num_meta_tokens(self) -> int:
        """Rows of the Meta Token table, all appended after every input."""
        if self.pooling != "meta_tokens":
            return 0
        if self.shared_meta_tokens:
            return self.num_query_tokens
        return self.num_query_tokens + self.num_candidate_tokens

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; a config-object backbone becomes ``{"model_type": ..., ...}``."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.backbone, PretrainedConfig):
            data["backbone"] = {"config": self.backbone.to_dict()}
        if self.template is not None:
            data["template"] = dataclasses.asdict(self.template)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetaEmbedConfig":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        backbone = data.get("backbone")
        if isinstance(backbone, dict):
            config = dict(backbone["config"])
            data["backbone"] = AutoConfig.for_model(config.pop("model_type"), **config)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown MetaEmbedConfig fields {sorted(unknown)}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        """Write ``metaembed_config.json`` into ``directory``."""
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "MetaEmbedConfig":
        """Read ``metaembed_config.json`` from ``directory``."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{directory} holds no {CONFIG_NAME}: not a saved MetaEmbed model")
        return cls.from_dict(json.loads(path.read_text()))


__all__ = ["MetaEmbedConfig", "ConfigError", "POOLING_MODES", "META_ATTENTION_MODES", "META_TOKEN_INITS", "CONFIG_NAME", "Pooling", "BackboneSource"]
