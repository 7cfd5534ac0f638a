"""Checkpoints: a resumed run continues from the same step with the same state."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from metaembed.errors import InputError
from metaembed.training.run import train
from metaembed.training.trainer import CHECKPOINT_WEIGHTS


def test_resume_continues_from_the_same_step_with_the_same_state(make_config, fresh_model, tmp_path):
    common = dict(max_steps=4, save_steps=2, save_total_limit=None, lora={"r": 4, "alpha": 8, "dropout": 0.1})
    full_dir = tmp_path / "full"
    train(make_config(output_dir=str(full_dir), **common), fresh_model())
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
    other = make_config(
        output_dir=str(run), max_steps=4, resume_from_checkpoint=str(run / "checkpoints" / "checkpoint-2"),
        lora={"r": 2, "alpha": 2, "dropout": 0.0}, learnable_temperature=True,
    )
    with pytest.raises(InputError, match="do not match"):
        train(other, fresh_model())


def test_a_fresh_run_does_not_overwrite_an_earlier_one(make_config, fresh_model, tmp_path):
    run = tmp_path / "run"
    # resume: true with nothing to resume starts fresh
    train(make_config(output_dir=str(run), max_steps=1, save_steps=1, resume_from_checkpoint=True), fresh_model())
    with pytest.raises(InputError, match="already holds a training run"):
        train(make_config(output_dir=str(run), max_steps=1), fresh_model())
    with pytest.raises(InputError, match="not a folder"):
        train(make_config(output_dir=str(tmp_path / "other"), resume_from_checkpoint=str(tmp_path / "nope")), fresh_model())
