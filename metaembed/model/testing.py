"""Tiny, randomly initialised MetaEmbed models for tests, examples and demos.

``tiny_model("qwen2_vl")`` builds a complete MetaEmbed model in well under a
second: a 2-layer, 64-wide backbone from a config object, a small byte-level
BPE tokenizer trained on the fly with the family's real special tokens (so the
real prompt templates apply unchanged) and the family's real image processor.
Nothing is downloaded. The tokenizer folders are built once per process in a
temporary directory and reused.

The weights are random: the embeddings have the right shapes, norms and
invariances but carry no meaning until trained.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PretrainedConfig

from metaembed.errors import InputError
from metaembed.model.config import MetaEmbedConfig
from metaembed.model.backbones import get_adapter
from metaembed.model.modeling import MetaEmbedModel
from metaembed.model.offline_tokenizers import QWEN_SPECIAL_TOKENS, byte_level_bpe, qwen_tokenizer, wordpiece

_TEMPORARY_ROOT: list[Path] = []


def _scratch_dir(name: str) -> Path:
    if not _TEMPORARY_ROOT:
        root = Path(tempfile.mkdtemp(prefix="metaembed-tiny-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _TEMPORARY_ROOT.append(root)
    path = _TEMPORARY_ROOT[0] / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- families
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@functools.lru_cache(maxsize=None)
def _qwen_processor_dir(patch_size: int) -> str:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = _scratch_dir(f"qwen_vl_patch{patch_size}")
    tokenizer = byte_level_bpe(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(str(path))
    Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, temporal_patch_size=2).save_pretrained(str(path))
    return str(path)


def _qwen_ids() -> dict[str, int]:
    return {name: QWEN_SPECIAL_TOKENS.index(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    )}  # fmt: skip


def _qwen_text(*, rope_theta: float, mrope: bool = True, **extra: Any) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta}
    if mrope:  # the 3-D rotary sections must sum to head_dim / 2 = 8
        rope["mrope_section"] = [2, 3, 3]
        if extra.pop("mrope_interleaved", False):
            rope["mrope_interleaved"] = True
    return dict(
        _TEXT,
        vocab_size=512,
        bos_token_id=None,
        eos_token_id=QWEN_SPECIAL_TOKENS.index("<|im_end|>"),
        pad_token_id=QWEN_SPECIAL_TOKENS.index("<|endoftext|>"),
        rope_parameters=rope,
        **extra,
    )


def _qwen2_vl() -> tuple[PretrainedConfig, str]:
    from transformers import Qwen2VLConfig

    processor = _qwen_processor_dir(14)
    config = Qwen2VLConfig(
        text_config=_qwen_text(rope_theta=1e6),
        vision_config=dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2, patch_size=14, hidden_size=64),
        **_qwen_ids(),
    )
    return config, processor


def _qwen2_5_vl() -> tuple[PretrainedConfig, str]:
    from transformers import Qwen2_5_VLConfig

    processor = _qwen_processor_dir(14)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(rope_theta=1e6),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            patch_size=14, window_size=56, fullatt_block_indexes=[1],
        ),  # fmt: skip
        **_qwen_ids(),
    )
    return config, processor


def _qwen3_vl() -> tuple[PretrainedConfig, str]:
    from transformers import Qwen3VLConfig

    processor = _qwen_processor_dir(16)
    config = Qwen3VLConfig(
        text_config=_qwen_text(rope_theta=5e5, head_dim=16, mrope_interleaved=True),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            patch_size=16, num_position_embeddings=144, deepstack_visual_indexes=[0, 1],
        ),  # fmt: skip
        **_qwen_ids(),
    )
    return config, processor


@functools.lru_cache(maxsize=None)
def _text_processor_dir(kind: str) -> str:
    path = _scratch_dir(kind)
    if kind == "bert":
        tokenizer = wordpiece()
    elif kind == "llama":
        tokenizer = byte_level_bpe(
            ["<|begin_of_text|>", "<|end_of_text|>", "<|image|>", "<|finetune_right_pad_id|>"],
            bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|finetune_right_pad_id|>",
        )  # fmt: skip
        from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

        MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=2).save_pretrained(str(path))
    elif kind == "gemma":
        tokenizer = byte_level_bpe(
            ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"],
            pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        )  # fmt: skip
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(str(path))
    else:  # qwen text LMs
        tokenizer = byte_level_bpe(QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(str(path))
    return str(path)


def _qwen2() -> tuple[PretrainedConfig, str]:
    from transformers import Qwen2Config

    return Qwen2Config(**_qwen_text(rope_theta=1e6, mrope=False)), _text_processor_dir("qwen_text")


def _qwen3() -> tuple[PretrainedConfig, str]:
    from transformers import Qwen3Config

    return Qwen3Config(**_qwen_text(rope_theta=1e6, mrope=False, head_dim=16)), _text_processor_dir("qwen_text")


def _bert() -> tuple[PretrainedConfig, str]:
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, pad_token_id=0,
    )  # fmt: skip
    return config, _text_processor_dir("bert")


def _paligemma() -> tuple[PretrainedConfig, str]:
    from transformers import PaliGemmaConfig

    config = PaliGemmaConfig(
        text_config=dict(
            model_type="gemma2", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0, eos_token_id=1,
            bos_token_id=2, sliding_window=64,
        ),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=32, patch_size=8, projection_dim=64,
        ),
        image_token_id=4,
        projection_dim=64,
    )  # fmt: skip
    return config, _text_processor_dir("gemma")


def _mllama() -> tuple[PretrainedConfig, str]:
    from transformers import MllamaConfig

    config = MllamaConfig(
        text_config=dict(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, cross_attention_layers=[1],
            num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=3,
            rope_parameters={"rope_type": "default", "rope_theta": 5e5},
        ),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_global_layers=1, attention_heads=2, intermediate_size=64,
            image_size=28, patch_size=14, max_num_tiles=2, intermediate_layers_indices=[0], vision_output_dim=64,
            supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
        ),
        image_token_index=2,
    )  # fmt: skip
    return config, _text_processor_dir("llama")


def _open_cross_attention_gates(model: MetaEmbedModel) -> None:
    # Mllama initialises its cross-attention gates at 0 (tanh(0) = 0: images invisible
    # until trained); a random test model should see its images.
    with torch.no_grad():
        for name, parameter in model.backbone.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                parameter.fill_(0.5)


_AFTER_INIT: dict[str, Callable[[MetaEmbedModel], None]] = {"mllama": _open_cross_attention_gates}

_FAMILIES: dict[str, Callable[[], tuple[PretrainedConfig, str]]] = {
    "mllama": _mllama,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen3_vl": _qwen3_vl,
    "paligemma": _paligemma,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "bert": _bert,
}


def tiny_families() -> list[str]:
    """Families :func:`tiny_model` can build."""
    return sorted(_FAMILIES)


def tiny_backbone_config(family: str = "qwen2_vl") -> tuple[PretrainedConfig, str]:
    """``(backbone config object, processor folder)`` of the tiny model of ``family``."""
    if family not in _FAMILIES:
        raise InputError(f"no tiny model for family {family!r}; available: {tiny_families()}")
    return _FAMILIES[family]()


def tiny_model(
    family: str = "qwen2_vl",
    *,
    num_query_tokens: int = 4,
    num_candidate_tokens: int = 8,
    pooling: str = "meta_tokens",
    seed: int = 0,
    real_tokenizer: bool = False,
    **overrides: Any,
) -> MetaEmbedModel:
    """A tiny random MetaEmbed model of ``family`` (hidden 64, 2 layers), built offline.

    ``overrides`` are further :class:`MetaEmbedConfig` fields (``projection_dim``,
    ``shared_meta_tokens``, ``max_visual_tokens``, ``template``, ...). The same
    ``seed`` gives the same weights; the caller's global RNG state is untouched.
    Images are capped at 16 visual tokens unless ``max_visual_tokens`` is given.
    ``real_tokenizer=True`` (Qwen families) uses the real Qwen vocabulary
    (:func:`qwen_tokenizer`, 151,657 tokens) instead of the tiny BPE.
    """
    backbone, processor = tiny_backbone_config(family)
    overrides.setdefault("max_visual_tokens", 16)
    tokenizer = None
    if real_tokenizer:
        if not family.startswith("qwen"):
            raise InputError(f"real_tokenizer is available for the Qwen families, not {family!r}")
        tokenizer = qwen_tokenizer()
        _use_vocabulary(backbone, tokenizer)
    config = MetaEmbedConfig(
        backbone=backbone,
        processor=processor,
        family=family,
        num_query_tokens=num_query_tokens,
        num_candidate_tokens=num_candidate_tokens,
        pooling=pooling,
        **overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if tokenizer is None:
            model = MetaEmbedModel.from_config(config)
        else:
            adapter = get_adapter(family)
            image_processor = adapter.load_image_processor(processor, config) if adapter.supports_images else None
            model = MetaEmbedModel(config, adapter.load_backbone(backbone), tokenizer, image_processor)
    if family in _AFTER_INIT:
        _AFTER_INIT[family](model)
    return model.eval()


def _use_vocabulary(config: PretrainedConfig, tokenizer: Any) -> None:
    """Point a tiny Qwen config at a real tokenizer's vocabulary and special-token ids."""
    text = getattr(config, "text_config", None) or config
    text.vocab_size = len(tokenizer)
    text.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for name, index in _qwen_ids().items():
        if hasattr(config, name):
            setattr(config, name, tokenizer.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS[index]))


__all__ = [
    "tiny_model",
    "tiny_families",
    "tiny_backbone_config",
    "qwen_tokenizer",
    "byte_level_bpe",
    "wordpiece",
    "QWEN_SPECIAL_TOKENS",
]
