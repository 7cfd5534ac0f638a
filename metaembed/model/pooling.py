"""From last-layer hidden states to a side's vectors, for every pooling mode.

* ``meta_tokens`` (MetaEmbed): the hidden states at the side's Meta Token slots.
* ``last_token``: one vector, the last real token.
* ``mean``: one vector, the masked mean over all real tokens.
* ``chunks``: the naive fixed-length multi-vector baseline: the real tokens are
  split into ``R`` contiguous, near-equal chunks (``R`` = the side's token
  count) and each is mean-pooled, as the official ``split-K`` pooler. No Meta
  Tokens are appended in the baseline modes.

All functions take ``hidden (B, L, H)`` and ``attention_mask (B, L)`` and return
``(B, R, H)`` in the dtype of ``hidden`` (not yet projected or normalised).
"""

from __future__ import annotations

import torch


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H)``: the hidden state of each row's last real token (any padding side)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = torch.where(attention_mask.bool(), positions, -1).amax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].unsqueeze(1)


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H)``: the mean of the hidden states over real tokens."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return ((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)).unsqueeze(1)


def chunk_means(hidden: torch.Tensor, attention_mask: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """``(B, num_chunks, H)``: real tokens split into contiguous chunks, each mean-pooled.

    The split of a row's ``n`` real tokens is ``numpy.array_split``'s (the first
    ``n mod R`` chunks get one token more). When ``n < R`` the chunks past the
    end repeat the last token, so every chunk is defined.
    """
    valid = attention_mask.bool()
    rank = valid.long().cumsum(dim=1) - 1  # rank of each real token within its row
    n = valid.sum(dim=1, keepdim=True)  # (B, 1)
    index = torch.arange(num_chunks, device=hidden.device).unsqueeze(0)  # (1, R)
    size, extra = n // num_chunks, n % num_chunks
    start = index * size + torch.minimum(index, extra)
    end = start + size + (index < extra).long()
    start = torch.minimum(start, n - 1)
    end = torch.maximum(end, start + 1)
    # membership (B, R, L): the token of rank r is in chunk i when start_i <= r < end_i
    member = (rank.unsqueeze(1) >= start.unsqueeze(-1)) & (rank.unsqueeze(1) < end.unsqueeze(-1))
    weights = (member & valid.unsqueeze(1)).to(hidden.dtype)
    return weights @ hidden / weights.sum(dim=-1, keepdim=True).clamp(min=1)


__all__ = ["last_token", "masked_mean", "chunk_means"]
