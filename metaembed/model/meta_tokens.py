"""The learnable Meta Token table and how its rows enter the backbone.

As in the official code, Meta Tokens are not vocabulary tokens: they are the
rows of a separate ``nn.Embedding(R_q + R_c, hidden)`` (one shared set of ``R``
rows with ``shared_meta_tokens``). Every sequence, query or candidate, gets all
rows appended after its formatted input, in the order
``[input, query Meta Tokens, candidate Meta Tokens]``; the batch carries
placeholder ids in those slots and :meth:`MetaTokens.injected` swaps the
placeholder embeddings for the table's rows on the way out of the backbone's
input-embedding layer. Doing it at that layer (the official code patches
``embed_tokens.forward`` the same way) leaves everything else to the backbone:
image features, rotary / 3-D positions, attention masks.

The slots are found from the attention mask (the last ``N`` real tokens of each
row), never from absolute positions, so left and right padding give the same
result. The hook only acts in the thread that installed it, so several threads
may encode with one model at the same time.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class MetaTokens(nn.Module):
    """The Meta Token table: ``weight`` of shape ``(num_rows, hidden_size)``.

    Rows ``[0, num_query_tokens)`` are the query Meta Tokens and the rest the
    candidate Meta Tokens (with ``shared=True`` one set serves both sides).
    Initialised ``N(0, init_std)``, like a Hugging Face embedding.
    """

    def __init__(
        self,
        num_query_tokens: int,
        num_candidate_tokens: int,
        hidden_size: int,
        *,
        shared: bool = False,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.num_query_tokens = num_query_tokens
        self.num_candidate_tokens = num_candidate_tokens
        self.shared = shared
        num_rows = num_query_tokens if shared else num_query_tokens + num_candidate_tokens
        self.embedding = nn.Embedding(num_rows, hidden_size)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=init_std)

    def init_around(self, center: torch.Tensor, std: float, generator: torch.Generator | None = None) -> None:
        """Re-initialise every row as ``center + N(0, std)`` (``center``: ``(hidden_size,)``).

        A row at the centre of the backbone's token embeddings (e.g. their mean) enters the
        backbone like an ordinary token, where an ``N(0, 0.02)`` row is far from every input
        the backbone was trained on; the noise keeps the rows apart so they can specialise.
        """
        with torch.no_grad():
            noise = torch.randn(self.weight.shape, generator=generator) * std
            self.weight.copy_(center.detach().to(self.weight.dtype).unsqueeze(0) + noise.to(self.weight.dtype))

    @property
    def num_rows(self) -> int:
        """How many rows are appended after every input."""
        return self.embedding.num_embeddings

    @property
    def weight(self) -> torch.Tensor:
        """The table, ``(num_rows, hidden_size)``."""
        return self.embedding.weight

    def appended_rows(self, side: str, causal: bool, one_way: bool = False) -> slice:
        """The table rows that follow an input of ``side``, in order.

        The official code appends all rows to both sides. Under causal
        attention the candidate rows come after the query rows and cannot
        change them, so a query stops after its own rows: the same query
        embedding for ``R_c`` fewer tokens per query (64 of 80 at the paper's
        sizes). Bidirectional encoders get all rows, unless the attention is
        ``one_way`` (the input never sees the Meta Tokens; see
        :attr:`~metaembed.model.config.MetaEmbedConfig.meta_attention`): then each
        side gets only its own rows, since the other side's rows could only
        change it through attention among Meta Tokens.
        """
        if self.shared:
            return slice(0, self.num_rows)
        if one_way:
            own = slice(0, self.num_query_tokens) if side == "query" else slice(self.num_query_tokens, self.num_rows)
            return own
        if causal and side == "query":
            return slice(0, self.num_query_tokens)
        return slice(0, self.num_rows)

    def num_appended(self, side: str, causal: bool, one_way: bool = False) -> int:
        """How many rows follow an input of ``side`` (see :meth:`appended_rows`)."""
        rows = self.appended_rows(side, causal, one_way)
        return rows.stop - rows.start

    def read_out(self, meta_states: torch.Tensor, side: str, rows: slice | None = None) -> torch.Tensor:
        """Select a side's rows from the hidden states at the Meta Token slots.

        ``meta_states`` is ``(B, n, H)`` for the appended table ``rows`` (default: all rows);
        returns ``(B, R_side, H)``: the official ``[-80:-64]`` for queries and ``[-64:]`` for
        candidates when all rows were appended.
        """
        if self.shared:
            return meta_states
        start = 0 if rows is None else rows.start
        own = slice(0, self.num_query_tokens) if side == "query" else slice(self.num_query_tokens, self.num_rows)
        return meta_states[:, own.start - start : own.stop - start]

    @contextmanager
    def injected(self, input_embeddings: nn.Module, slot_mask: torch.Tensor, count: int | slice) -> Iterator[None]:
        """While active, ``input_embeddings`` outputs table rows at ``slot_mask``.

        ``count`` is how many rows from the first (an int) or which rows (a slice);
        ``slot_mask`` is ``(B, L)`` bool with exactly that many true entries per
        row (the Meta Token slots, in order). Gradients flow into the table.
        """
        rows_slice = count if isinstance(count, slice) else slice(0, count)
        count = rows_slice.stop - rows_slice.start
        counts = slot_mask.sum(dim=1)
        if not bool((counts == count).all()):
            raise ValueError(f"every row needs {count} Meta Token slots, got {counts.tolist()}")

        owner = threading.get_ident()

        def replace_slots(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if threading.get_ident() != owner:
                return None  # another thread's forward pass: its own hook handles it
            if output.shape[:2] != slot_mask.shape:
                raise RuntimeError(
                    f"input embeddings of shape {tuple(output.shape)} do not match the Meta Token "
                    f"slot mask {tuple(slot_mask.shape)}"
                )
            rows = self.weight[rows_slice].to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
            return output.masked_scatter(slot_mask.unsqueeze(-1).to(output.device), rows)

        handle = input_embeddings.register_forward_hook(replace_slots)
        try:
            yield
        finally:
            handle.remove()


def last_valid_mask(attention_mask: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, L)`` bool: the last ``count`` positions where ``attention_mask`` is 1, per row.

    Works for left, right or no padding (and any mask with the real tokens in
    order), because it ranks real tokens instead of using absolute positions.
    """
    valid = attention_mask.bool()
    rank_from_end = valid.sum(dim=1, keepdim=True) - valid.long().cumsum(dim=1)
    return valid & (rank_from_end < count)


__all__ = ["MetaTokens", "last_valid_mask"]
