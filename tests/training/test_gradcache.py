"""Gradient caching gives the plain step's gradients; a resumed run continues where it stopped."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from metaembed.training.run import build_trainer, train
from metaembed.training.trainer import CHECKPOINT_WEIGHTS


def _step_gradients(make_config, fresh_model, chunk_size, dropout=0.0, seed=7, **overrides):
    config = make_config(
        per_device_batch_size=6,
        gradient_cache_chunk_size=chunk_size,
        learnable_temperature=True,
        lora={"r": 4, "alpha": 8, "dropout": dropout},
        **overrides,
    )
    trainer = build_trainer(config, fresh_model())
    # 2 accumulation steps: the trainer divides the loss by 2 before backward; caching must follow
    trainer.current_gradient_accumulation_steps = 2
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    torch.manual_seed(seed)
    loss = trainer.training_step(trainer.model, batch)
    gradients = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss, gradients, batch


def _assert_same_gradients(expected, got):
    assert set(expected) == set(got) and len(expected) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_cache_matches_the_plain_step(make_config, fresh_model):
    plain_loss, plain, plain_batch = _step_gradients(make_config, fresh_model, None)
    cached_loss, cached, cached_batch = _step_gradients(make_config, fresh_model, 2)
    assert len(plain_batch["query"]) == 1 and len(cached_batch["query"]) == 3  # really chunked
    assert cached_loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
    assert "loss.loss.log_temperature" in cached  # the learnable temperature's gradient is cached too
    _assert_same_gradients(plain, cached)


def test_gradient_cache_replays_dropout(make_config, fresh_model):
    # With LoRA dropout on, the re-encoding must draw the same masks as the no-grad pass; with one
    # chunk per side both steps consume the RNG identically, so their gradients must agree.
    _, plain, _ = _step_gradients(make_config, fresh_model, None, dropout=0.3)
    _, cached, _ = _step_gradients(make_config, fresh_model, 6, dropout=0.3)
    _assert_same_gradients(plain, cached)
    _, other_seed, _ = _step_gradients(make_config, fresh_model, 6, dropout=0.3, seed=8)
    assert any(not torch.allclose(plain[n], other_seed[n]) for n in plain)  # dropout is really on


def test_resume_continues_from_the_same_step_with_the_same_state(make_config, fresh_model, tmp_path):
    common = dict(max_steps=4, save_steps=2, save_total_limit=None, lora={"r": 4, "alpha": 8, "dropout": 0.1})
    full_dir = tmp_path / "full"
    train(make_config(output_dir=str(full_dir), **common), fresh_model())

    from safetensors.torch import load_file

    final_full = load_file(full_dir / "checkpoints" / "checkpoint-4" / CHECKPOINT_WEIGHTS)

    # an "interrupted" run: the same folder as it was after step 2
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(full_dir / "checkpoints" / "checkpoint-2", resumed_dir / "checkpoints" / "checkpoint-2")
    lines = (full_dir / "metrics.jsonl").read_text().splitlines()
    (resumed_dir / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    path = train(make_config(output_dir=str(resumed_dir), resume_from_checkpoint=True, **common), fresh_model())

    records = [json.loads(line) for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss/1,1" in r] == [1, 2, 3, 4]
    final_resumed = load_file(resumed_dir / "checkpoints" / "checkpoint-4" / CHECKPOINT_WEIGHTS)
    assert set(final_resumed) == set(final_full)
    for name in final_full:
        torch.testing.assert_close(final_resumed[name], final_full[name], rtol=1e-5, atol=1e-6, msg=name)
    full_steps = [json.loads(line) for line in lines if "loss/1,1" in line]
    resumed_steps = [r for r in records if "loss/1,1" in r]
    assert resumed_steps[3]["loss"] == pytest.approx(full_steps[3]["loss"], rel=1e-5)
    assert (path / "metaembed_config.json").is_file()


def test_resume_rejects_a_checkpoint_of_another_setup(make_config, fresh_model, tmp_path):
    run = tmp_path / "run"
    train(make_config(output_dir=str(run), max_steps=2, save_steps=2), fresh_model())
    from metaembed.errors import InputError

    other = make_config(
        output_dir=str(run), max_steps=4, resume_from_checkpoint=str(run / "checkpoints" / "checkpoint-2"),
        lora={"r": 2, "alpha": 2, "dropout": 0.0}, learnable_temperature=True,
    )
    with pytest.raises(InputError, match="do not match"):
        train(other, fresh_model())
