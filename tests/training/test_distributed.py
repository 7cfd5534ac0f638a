"""Positives gathered across two real CPU processes (gloo) give the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from metaembed.training.losses import InfoNCELoss, MMRLoss
from metaembed.training.trainer import CHECKPOINT_WEIGHTS
from tests.training.conftest import small_settings, write_pairs
from tests.training.ddp_worker import gather_loss_worker

ROOT = Path(__file__).resolve().parents[2]


def test_gather_with_gradient_equals_the_concatenated_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "weight": torch.randn(6, 5, generator=generator),
        "query": torch.randn(6, 4, 5, generator=generator),  # 6 queries = 2 processes × 3
        "positive": torch.randn(6, 8, 5, generator=generator),
        "negative": torch.randn(6, 1, 8, 5, generator=generator),
        "groups": [(1, 1), (2, 4), (4, 8)],
    }
    result_file = tmp_path / "result.pt"
    mp.spawn(gather_loss_worker, args=(2, str(tmp_path / "init"), str(result_file), inputs), nprocs=2, join=True)
    result = torch.load(result_file)
    assert result["offsets"] == [0, 3] and result["gathered"] == 6  # CE target = rank · B + u

    # the single-process reference: the whole batch at once
    encoder = torch.nn.Linear(5, 6, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(inputs["weight"])
    encode = lambda x: F.normalize(encoder(x), dim=-1)  # noqa: E731
    loss = MMRLoss(InfoNCELoss(), inputs["groups"])(
        encode(inputs["query"]), encode(inputs["positive"]), encode(inputs["negative"])
    ).loss
    loss.backward()
    assert sum(result["losses"]).item() / 2 == pytest.approx(loss.item(), rel=1e-5)
    assert result["losses"][0].item() != pytest.approx(result["losses"][1].item())  # each rank its own queries
    torch.testing.assert_close(result["grad"], encoder.weight.grad, rtol=1e-4, atol=1e-6)


def _settings(output_dir, model, pairs, per_device_batch_size, **overrides):
    # LoRA dropout stays 0 (small_settings): the two ranks draw different masks
    return small_settings(
        output_dir, pairs, model=str(model), per_device_batch_size=per_device_batch_size, max_steps=3, save_steps=3,
        trainer_args={"use_cpu": True},  # gloo on CPU even where a GPU exists
        **overrides,
    )


def test_two_process_training_equals_one_process_with_the_global_batch(tmp_path):
    """``torchrun -m metaembed.training`` with 2 × 2 examples per step = one process with 4.

    The 2-process run also uses gradient caching (chunks of one example, DDP ``no_sync`` between
    chunks) while the reference takes the plain step: both must give the same weights.
    """
    from metaembed.model.testing import tiny_model
    from metaembed.training.config import TrainingConfig
    from metaembed.training.run import train

    base = tmp_path / "base"
    tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8, seed=0).save_pretrained(base)
    pairs = write_pairs(tmp_path / "pairs.jsonl", 12)
    TrainingConfig.from_dict(_settings(tmp_path / "ddp", base, pairs, 2, gradient_cache_chunk_size=1)).to_yaml(tmp_path / "ddp.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0",
        "-m", "metaembed.training", str(tmp_path / "ddp.yaml"),
    ]
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.strip().endswith(str(tmp_path / "ddp" / "model"))

    train(TrainingConfig.from_dict(_settings(tmp_path / "single", base, pairs, 4)))

    from safetensors.torch import load_file

    ddp = load_file(tmp_path / "ddp" / "checkpoints" / "checkpoint-3" / CHECKPOINT_WEIGHTS)
    reference = load_file(tmp_path / "single" / "checkpoints" / "checkpoint-3" / CHECKPOINT_WEIGHTS)
    assert set(ddp) == set(reference)
    for name in reference:
        torch.testing.assert_close(ddp[name], reference[name], rtol=1e-4, atol=1e-5, msg=name)
    read = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    ddp_steps = [r for r in read("ddp") if "loss/1,1" in r]
    single_steps = [r for r in read("single") if "loss/1,1" in r]
    assert [r["step"] for r in ddp_steps] == [1, 2, 3]  # only the main process writes
    for key in ("loss", "loss/1,1", "accuracy/4,8"):
        assert [r[key] for r in ddp_steps] == pytest.approx([r[key] for r in single_steps], rel=1e-4, abs=1e-6)
    assert (tmp_path / "ddp" / "model" / "metaembed_config.json").is_file()
