"""Cross-process in-batch negatives: gather the positives, with their gradient.

Under data-parallel training (torchrun / accelerate, DDP or FSDP) every process encodes its own
``B`` queries, positives and hard negatives. As in the official code, only the *positives* are
all-gathered, with :func:`torch.distributed.nn.functional.all_gather` so that the gradient of every
process's loss flows back into the process that encoded each positive; queries stay local and hard
negatives are never shared. Query ``u`` of rank ``r`` then finds its positive at row ``r·B + u``.

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
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(positives.contiguous()), dim=0), rank * positives.shape[0]


__all__ = ["world", "gather_positives"]
