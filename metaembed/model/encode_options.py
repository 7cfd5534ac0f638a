"""The sentence-transformers keywords of ``encode_queries`` / ``encode_candidates``, in one place.

A user coming from sentence-transformers types ``batch_size``, ``show_progress_bar``,
``convert_to_numpy``, ``convert_to_tensor``, ``device``, ``normalize_embeddings``, ``prompt`` and
``prompt_name``; this module gives each the meaning it has there, so the encode loop in
:mod:`metaembed.model.modeling` stays about encoding:

* ``prompt`` is the instruction put before the text of items without their own (MetaEmbed's
  prompt templates have an instruction slot; sentence-transformers prepends the prompt);
  ``prompt_name`` looks the instruction up in ``MetaEmbedConfig.prompts``;
* ``convert_to_numpy`` returns a numpy array, ``convert_to_tensor`` a torch tensor (it wins
  over ``convert_to_numpy``, as there); with neither, a torch tensor (metaembed's default);
* ``normalize_embeddings=True`` L2-normalises every vector again (MetaEmbed's rows are unit
  vectors already, so it changes nothing beyond rounding; ``False`` leaves them as they are);
* ``device`` moves the model there for the computation, as ``SentenceTransformer.encode`` does.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from metaembed.errors import InputError


def resolve_instruction(
    instruction: str | None, prompt: str | None, prompt_name: str | None, prompts: Mapping[str, str]
) -> str | None:
    """The one instruction given by ``instruction``, ``prompt`` or ``prompt_name`` (at most one of them)."""
    given = [name for name, value in (("instruction", instruction), ("prompt", prompt), ("prompt_name", prompt_name))
             if value is not None]
    if len(given) > 1:
        raise InputError(f"give at most one of instruction, prompt and prompt_name, got {' and '.join(given)}")
    if prompt_name is not None:
        if prompt_name not in prompts:
            known = ", ".join(sorted(prompts)) or "none (set MetaEmbedConfig.prompts)"
            raise InputError(f"unknown prompt_name {prompt_name!r}; the model's prompts: {known}")
        return prompts[prompt_name]
    return instruction if instruction is not None else prompt


def resolve_progress(show_progress_bar: bool | None, show_progress: bool | None) -> bool | None:
    """``show_progress_bar``, or the older spelling ``show_progress`` (deprecated)."""
    if show_progress is None:
        return show_progress_bar
    warnings.warn("show_progress is deprecated: use show_progress_bar", DeprecationWarning, stacklevel=3)
    if show_progress_bar is not None and show_progress_bar != show_progress:
        raise InputError("show_progress and show_progress_bar disagree; give only show_progress_bar")
    return show_progress


def finish(
    vectors: torch.Tensor, *, convert_to_numpy: bool, convert_to_tensor: bool, normalize_embeddings: bool
) -> torch.Tensor | np.ndarray:
    """``vectors`` (float32 ``(N, r, D)``) in the form the keywords ask for."""
    if normalize_embeddings:
        vectors = F.normalize(vectors, p=2, dim=-1)
    if convert_to_numpy and not convert_to_tensor:
        return vectors.numpy()
    return vectors


def move_for_compute(model: torch.nn.Module, device: torch.device | str | None) -> None:
    """Move ``model`` to ``device`` (when given and different), as ``SentenceTransformer.encode(device=...)``."""
    if device is None:
        return
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"unknown device {device!r}: {error}") from None
    model.to(target)


__all__ = ["finish", "move_for_compute", "resolve_instruction", "resolve_progress"]
