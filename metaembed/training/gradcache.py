"""Gradient caching (GradCache, Gao et al. 2021): a large contrastive batch on small memory.

The contrastive loss couples every query with every positive, so the batch cannot simply be split
into independent micro-batches without losing negatives. Gradient caching splits only the
*encoding*:

1. encode every chunk without building a graph, remembering each chunk's RNG state;
2. compute the loss on the detached embeddings (small: ``B × R × D``) and its gradient with
   respect to each embedding — this is where all in-batch and gathered negatives are seen;
3. re-encode each chunk with a graph, replaying its RNG state so dropout draws the same masks, and
   back-propagate ``<embedding, cached gradient>``.

Step 3 runs inside the backward pass of the returned loss (a hook on it, as sentence-transformers'
``Cached*`` losses do), so the trainer's own ``backward`` — with its loss scaling for gradient
accumulation and fp16 — drives it, and the scale it applies reaches every chunk. Peak activation
memory is one chunk's instead of the whole batch's; the cost is one extra forward pass.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

Encode = Callable[[object], Tensor]


class RandomState:
    """The CPU and current-CUDA-device RNG states at one moment, to replay a forward's dropout."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        self.cuda = torch.cuda.get_rng_state() if self.cuda_device is not None else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with the captured RNG state; the caller's state is restored afterwards."""
        devices = [self.cuda_device] if self.cuda_device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda)
            yield


def encode_chunks_without_grad(encode: Encode, chunks: Sequence[object]) -> tuple[Tensor, list[RandomState]]:
    """Step 1: ``torch.cat([encode(c) for c in chunks])`` with no graph, plus each chunk's RNG state."""
    states, outputs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState())
            outputs.append(encode(chunk))
    return torch.cat(outputs, dim=0), states


def backward_chunks(
    encode: Encode,
    chunks: Sequence[object],
    states: Sequence[RandomState],
    cached_gradient: Tensor,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    last: bool = True,
) -> None:
    """Step 3: re-encode each chunk with a graph and back-propagate ``<embedding, cached gradient>``.

    ``cached_gradient`` is ``d loss / d embeddings`` for the concatenation of the chunks (already
    multiplied by the outer backward's scale). ``no_sync`` (e.g. DDP's ``model.no_sync``) wraps every
    chunk's backward except the very last one of the step (``last`` says whether these chunks end
    the step), so data-parallel gradients are reduced once.
    """
    start = 0
    for index, (chunk, state) in enumerate(zip(chunks, states)):
        with state.replay(), torch.enable_grad():
            embeddings = encode(chunk)
        gradient = cached_gradient[start : start + embeddings.shape[0]]
        start += embeddings.shape[0]
        final = last and index == len(chunks) - 1
        context = no_sync() if (no_sync is not None and not final) else contextlib.nullcontext()
        with context:
            torch.autograd.backward(embeddings, gradient.to(embeddings.dtype))


__all__ = ["RandomState", "encode_chunks_without_grad", "backward_chunks"]
