"""The MetaEmbed model: Meta Tokens on a Hugging Face backbone, encode API, save/load.

Build, encode, score at a budget, save::

    from metaembed.model import MetaEmbedModel
    from metaembed.model.testing import tiny_model       # offline, random weights

    model = tiny_model("qwen2_vl")                        # or MetaEmbedModel.from_pretrained(folder_or_id)
    queries = model.encode_queries(["a red square"], budget=2)            # (1, 2, D) float32, unit rows
    pages = model.encode_candidates([Path("page.png"), {"text": "caption", "image": image}])  # (2, R_c, D)
    model.save_pretrained("my-model")                     # exact round trip, offline

Training uses ``batch = model.prepare(items, "query")`` and
``model(batch, "query")`` (differentiable, ``(B, R_q, D)``); ``model.add_lora()``
sets up the paper's LoRA recipe. Checkpoints of the official code load with
``MetaEmbedModel.from_official(adapter_dir)``.

Modules: ``config`` (MetaEmbedConfig), ``modeling`` (MetaEmbedModel),
``meta_tokens`` (the table and its injection), ``templates`` (prompts),
``processing`` (items → batch), ``pooling`` (baseline poolings), ``backbones``
(one adapter per family), ``lora`` (the LoRA mixin), ``saving`` (the model
folder's files), ``convert_official`` (official checkpoint → this package's
names), ``builtin`` (shipped models), ``testing`` (tiny offline models),
``offline_tokenizers``, ``items``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use, so that light submodules (``items``, ``builtin``) can be imported
# without torch and transformers: ``metaembed index info`` or ``search --server`` never need them.
_EXPORTS = {
    "MetaEmbedConfig": "metaembed.model.config",
    "MetaEmbedModel": "metaembed.model.modeling",
    "PromptTemplate": "metaembed.model.templates",
}

if TYPE_CHECKING:
    from metaembed.model.config import MetaEmbedConfig
    from metaembed.model.modeling import MetaEmbedModel
    from metaembed.model.templates import PromptTemplate


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'metaembed.model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["MetaEmbedConfig", "MetaEmbedModel", "PromptTemplate"]
