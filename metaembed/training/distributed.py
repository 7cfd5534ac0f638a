"""Cross-process in-batch negatives: gather the positives, with their gradient.

Under data-parallel training (torchrun / accelerate, DDP or FSDP) every process encodes its own
``B`` queries, positives and hard negatives. As in the official code, only the *positives* are
all-gathered, with gradient, so that every process's loss reaches the process that encoded each
positive; queries stay local and hard negatives are never shared. Query ``u`` of rank ``r`` then
finds its positive at row ``r·B + u``.

The gather is our own small autograd function rather than
``torch.distributed.nn.functional.all_gather`` (the official code's choice): that one is deprecated,
and on non-NCCL backends (gloo, i.e. CPU) its backward returns wrong gradients when the incoming
gradient is not contiguous — which is what an ``einsum``-based loss produces (torch 2.13).

Why the gradient is right: rank ``r`` minimises the mean over its queries, ``L_r``. The gather's
backward sums, into each positive, the gradients of every rank's ``L_r``; DDP then averages the
parameter gradients over ranks, which gives exactly ``∇ (1/W) Σ_r L_r`` — the gradient of the
single-process loss on the concatenated batch of ``W·B`` queries.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from metaembed.errors import InputError


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when none is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_positives(positives: Tensor) -> tuple[Tensor, int]:
    """All-gather ``(B, R_c, D)`` positives of every process → ``((W·B, R_c, D), target_offset)``.

    Differentiable (each process receives the gradients the others' losses send to its
    positives). Every process must hold the same ``B``; with one process this is the identity and
    the offset is 0.
    """
    rank, world_size = world()
    if world_size == 1:
        return positives, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=positives.device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([positives.shape[0]], device=positives.device))
    if len({int(s) for s in sizes}) != 1:
        raise InputError(
            f"every process needs the same number of positives to gather, got {[int(s) for s in sizes]}; "
            "use equal per-device batches (the source batch sampler drops short batches)"
        )
    return _GatherWithGradient.apply(positives.contiguous()), rank * positives.shape[0]


class _GatherWithGradient(torch.autograd.Function):
    """``all_gather`` along dim 0; backward sums every process's gradient and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        rank, world_size = world()
        ctx.rows = slice(rank * tensor.shape[0], (rank + 1) * tensor.shape[0])
        pieces = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(pieces, tensor)
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, gradient: Tensor) -> Tensor:  # type: ignore[override]
        # all_reduce then slice = reduce-scatter, on every backend; the tensor is small (W·B × R × D)
        gradient = gradient.clone(memory_format=torch.contiguous_format)  # never reduce autograd's buffer in place
        dist.all_reduce(gradient, op=dist.ReduceOp.SUM)
        return gradient[ctx.rows]


__all__ = ["world", "gather_positives"]
