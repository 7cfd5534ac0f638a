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
from tests.training.conftest import write_pairs
from tests.training.ddp_worker import gather_loss_worker, training_settings

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
    assert result["offset"] == 0 and result["gathered"] == 6

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


def test_two_process_training_equals_one_process_with_the_global_batch(tmp_path):
    from metaembed.model.testing import tiny_model
    from metaembed.training.config import TrainingConfig
    from metaembed.training.run import train

    pairs = str(write_pairs(tmp_path / "pairs.jsonl", 12))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0",
        str(ROOT / "tests" / "training" / "ddp_worker.py"), str(tmp_path / "ddp"), pairs,
    ]
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-3000:]

    single = TrainingConfig.from_dict(training_settings(str(tmp_path / "single"), pairs, per_device_batch_size=4))
    train(single, model=tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8, seed=0))

    from safetensors.torch import load_file

    ddp = load_file(tmp_path / "ddp" / "checkpoints" / "checkpoint-3" / CHECKPOINT_WEIGHTS)
    reference = load_file(tmp_path / "single" / "checkpoints" / "checkpoint-3" / CHECKPOINT_WEIGHTS)
    assert set(ddp) == set(reference)
    for name in reference:
        torch.testing.assert_close(ddp[name], reference[name], rtol=1e-4, atol=1e-5, msg=name)
    read = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    ddp_losses = [r["loss"] for r in read("ddp") if "loss/1,1" in r]
    single_losses = [r["loss"] for r in read("single") if "loss/1,1" in r]
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)
    assert (tmp_path / "ddp" / "model" / "metaembed_config.json").is_file()
