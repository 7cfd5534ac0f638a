"""Fixtures for the training tests: small pair files on disk and a config builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FRUITS = "apple banana cherry grape lemon mango olive peach pear plum kiwi lime".split()


def write_pairs(path: Path, count: int = 12, with_images: bool = False, image_names: list[str] | None = None) -> Path:
    """``count`` query/positive/negative records; with images, every third positive is interleaved."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            fruit = FRUITS[i % len(FRUITS)]
            positive: object = f"the {fruit} is a sweet fruit, item {i}"
            if with_images and image_names and i % 3 == 0:
                positive = {"text": f"a photo of a {fruit}", "image": image_names[i % len(image_names)]}
            record = {
                "query": f"tell me about {fruit} {i}",
                "positive": positive,
                "negative": f"a red truck parked outside, number {i}",
            }
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def pairs_file(tmp_path: Path, images) -> Path:
    """12 records; some positives carry an image stored next to the file."""
    names = []
    for k, image in enumerate(images):
        name = f"img{k}.png"
        image.save(tmp_path / name)
        names.append(name)
    return write_pairs(tmp_path / "pairs.jsonl", 12, with_images=True, image_names=names)


def small_settings(output_dir: Path, pairs: Path, **overrides) -> dict:
    """Settings of a small, fast run of the tiny model (4 query / 8 candidate vectors)."""
    values = dict(
        output_dir=str(output_dir),
        data=[{"path": str(pairs)}],
        groups=[[1, 1, 1.0], [2, 4, 1.0], [4, 8, 1.0]],
        per_device_batch_size=4,
        max_steps=4,
        warmup_steps=0,
        learning_rate=2e-3,
        save_steps=1000,
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
    )
    values.update(overrides)
    return values


@pytest.fixture
def make_config(tmp_path: Path, pairs_file: Path):
    """Builds a :class:`TrainingConfig` from :func:`small_settings` plus overrides."""
    from metaembed.training.config import TrainingConfig

    def build(**overrides) -> TrainingConfig:
        output_dir = overrides.pop("output_dir", tmp_path / "run")
        return TrainingConfig.from_dict(small_settings(output_dir, pairs_file, **overrides))

    return build


@pytest.fixture
def fresh_model():
    """A new tiny Qwen2-VL model each call (training mutates it); same seed, same weights."""
    from metaembed.model.testing import tiny_model

    def build(**kwargs):
        kwargs.setdefault("num_query_tokens", 4)
        kwargs.setdefault("num_candidate_tokens", 8)
        return tiny_model("qwen2_vl", seed=0, **kwargs)

    return build
