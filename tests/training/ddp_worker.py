"""Worker scripts for the 2-process tests (run by torch.multiprocessing spawn or torchrun)."""

from __future__ import annotations

import os
import sys

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
        if rank == 0:
            torch.save(
                {"offset": offset, "gathered": gathered.shape[0], "losses": losses, "grad": encoder.weight.grad},
                result_file,
            )
    finally:
        dist.destroy_process_group()


def train_main(output_dir: str, pairs: str) -> None:
    """One process of the trainer-level test (launched by torchrun): a short tiny-model run."""
    from metaembed.model.testing import tiny_model
    from metaembed.training.config import TrainingConfig
    from metaembed.training.run import train

    config = TrainingConfig.from_dict(training_settings(output_dir, pairs, per_device_batch_size=2))
    train(config, model=tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8, seed=0))


def training_settings(output_dir: str, pairs: str, per_device_batch_size: int) -> dict:
    """Settings shared by the 2-process run and its single-process reference."""
    return dict(
        output_dir=output_dir,
        data=[{"path": pairs}],
        groups=[[1, 1, 1.0], [2, 4, 1.0], [4, 8, 1.0]],
        per_device_batch_size=per_device_batch_size,
        max_steps=3,
        warmup_steps=0,
        learning_rate=2e-3,
        save_steps=3,
        lora={"r": 4, "alpha": 8, "dropout": 0.0},  # no dropout: ranks draw different masks
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    train_main(sys.argv[1], sys.argv[2])
