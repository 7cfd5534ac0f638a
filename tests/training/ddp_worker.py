"""The worker of the 2-process loss test (run by torch.multiprocessing spawn: it must be importable)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_loss_worker(rank: int, world_size: int, init_file: str, result_file: str, inputs: dict) -> None:
    """One process of the loss-level test: encode its half, gather positives, DDP-average the gradients."""
    from metaembed.training.distributed import gather_positives
    from metaembed.training.losses import InfoNCELoss, MMRLoss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        encoder = torch.nn.Linear(inputs["weight"].shape[1], inputs["weight"].shape[0], bias=False)
        with torch.no_grad():
            encoder.weight.copy_(inputs["weight"])
        half = inputs["query"].shape[0] // world_size
        local = slice(rank * half, (rank + 1) * half)
        query = F.normalize(encoder(inputs["query"][local]), dim=-1)
        positives = F.normalize(encoder(inputs["positive"][local]), dim=-1)
        negatives = F.normalize(encoder(inputs["negative"][local]), dim=-1)
        gathered, offset = gather_positives(positives)
        output = MMRLoss(InfoNCELoss(), inputs["groups"])(query, gathered, negatives, target_offset=offset)
        output.loss.backward()
        # what DDP does to parameter gradients: average over processes
        dist.all_reduce(encoder.weight.grad)
        encoder.weight.grad /= world_size
        losses = [torch.zeros(()) for _ in range(world_size)]
        dist.all_gather(losses, output.loss.detach())
        offsets = [torch.zeros((), dtype=torch.long) for _ in range(world_size)]
        dist.all_gather(offsets, torch.tensor(offset))
        if rank == 0:
            torch.save(
                {"offsets": [int(o) for o in offsets], "gathered": gathered.shape[0], "losses": losses,
                 "grad": encoder.weight.grad},
                result_file,
            )
    finally:
        dist.destroy_process_group()
