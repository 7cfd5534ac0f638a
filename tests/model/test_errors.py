"""Bad input raises a clear metaembed error at the public boundary."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaembed.budget import Budget
from metaembed.errors import BudgetError, InputError, ItemTypeError, MetaEmbedError
from metaembed.model import MetaEmbedConfig, MetaEmbedModel
from metaembed.model.config import ConfigError


def test_empty_batch(tiny_qwen2_vl):
    with pytest.raises(InputError, match="empty"):
        tiny_qwen2_vl.encode_queries([])
    with pytest.raises(InputError, match="empty"):
        tiny_qwen2_vl.prepare([], "candidate")


def test_unsupported_item_type_names_the_position(tiny_qwen2_vl):
    with pytest.raises(ItemTypeError, match=r"item 1: .*int"):
        tiny_qwen2_vl.encode_candidates(["fine", 42])


def test_unreadable_and_missing_images(tiny_qwen2_vl, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not a PNG")
    with pytest.raises(InputError, match=r"item 1: cannot read image .*notes.png"):
        tiny_qwen2_vl.encode_candidates(["fine", not_an_image])
    with pytest.raises(InputError, match="not found"):
        tiny_qwen2_vl.encode_queries([{"text": "x", "image": tmp_path / "missing.jpg"}])


@pytest.mark.parametrize(
    "side, budget",
    [("query", 5), ("query", Budget(5, 1)), ("candidate", 9), ("candidate", Budget(1, 9)), ("candidate", "4,9")],
)
def test_budget_larger_than_the_meta_tokens(tiny_qwen2_vl, side, budget):
    encode = tiny_qwen2_vl.encode_queries if side == "query" else tiny_qwen2_vl.encode_candidates
    with pytest.raises(BudgetError, match="has only"):
        encode(["x"], budget=budget)


@pytest.mark.parametrize("budget", [0, -1, True, 2.5])
def test_malformed_budgets(tiny_qwen2_vl, budget):
    with pytest.raises(BudgetError):
        tiny_qwen2_vl.encode_queries(["x"], budget=budget)


def test_bad_side_batch_size_and_padding(tiny_qwen2_vl):
    with pytest.raises(InputError, match="side"):
        tiny_qwen2_vl.prepare(["x"], "document")
    with pytest.raises(InputError, match="batch_size"):
        tiny_qwen2_vl.encode_queries(["x"], batch_size=0)
    with pytest.raises(InputError, match="padding_side"):
        tiny_qwen2_vl.prepare(["x"], "query", padding_side="middle")


def test_config_errors():
    with pytest.raises(ConfigError, match="num_query_tokens"):
        MetaEmbedConfig(backbone="x", num_query_tokens=0)
    with pytest.raises(ConfigError, match="shared_meta_tokens"):
        MetaEmbedConfig(backbone="x", shared_meta_tokens=True)
    with pytest.raises(ConfigError, match="pooling"):
        MetaEmbedConfig(backbone="x", pooling="max")
    with pytest.raises(ConfigError, match="backbone"):
        MetaEmbedConfig(backbone=3)
    assert issubclass(ConfigError, MetaEmbedError) and issubclass(ConfigError, ValueError)


def test_unknown_family_and_missing_processor(tiny_qwen2_vl):
    config = MetaEmbedConfig(backbone=tiny_qwen2_vl.backbone.config, family="nonsense", processor="x")
    with pytest.raises(InputError, match="unknown backbone family 'nonsense'"):
        MetaEmbedModel.from_config(config)
    with pytest.raises(InputError, match="config.processor"):
        MetaEmbedModel.from_config(MetaEmbedConfig(backbone=tiny_qwen2_vl.backbone.config))


def test_loading_a_folder_that_is_not_a_model(tmp_path: Path):
    with pytest.raises(InputError, match="neither a saved MetaEmbed model"):
        MetaEmbedModel.from_pretrained(tmp_path)


def test_a_missing_local_folder_fails_fast_without_the_network(tmp_path: Path):
    with pytest.raises(InputError, match="no such model folder"):
        MetaEmbedModel.from_pretrained(tmp_path / "typo" / "model")
