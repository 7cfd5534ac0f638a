"""Shared fixtures: tiny offline MetaEmbed models and small test images (session-scoped)."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw


def _scratch_folder(tmp_path_factory, variable: str, name: str):
    """Point environment ``variable`` at a new scratch folder ``name`` for the session, then restore it."""
    import os

    folder = tmp_path_factory.mktemp(name)
    previous = os.environ.get(variable)
    os.environ[variable] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = previous


@pytest.fixture(scope="session", autouse=True)
def query_encoder_cache(tmp_path_factory):
    """Exported query encoders (made by 'index build' and searches) go to a scratch folder, not ~/.cache."""
    yield from _scratch_folder(tmp_path_factory, "METAEMBED_QUERY_ENCODERS", "query-encoders")


@pytest.fixture(scope="session", autouse=True)
def ann_graph_cache(tmp_path_factory):
    """Graphs the ann search mode keeps for the next process go to a scratch folder, not ~/.cache."""
    yield from _scratch_folder(tmp_path_factory, "METAEMBED_ANN_GRAPHS", "ann-graphs")


@pytest.fixture(scope="session")
def tiny_qwen2_vl():
    """A tiny random Qwen2-VL MetaEmbed model (4 query / 8 candidate Meta Tokens, hidden 64)."""
    from metaembed.model.testing import tiny_model

    return tiny_model("qwen2_vl")


def _picture(color: tuple[int, int, int], size: tuple[int, int], mark: int) -> Image.Image:
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle([mark, mark, mark + 12, mark + 9], fill=(255 - color[0], 40, 200))
    return image


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Three small RGB images of different sizes and content."""
    return [_picture((200, 30, 30), (64, 48), 5), _picture((20, 160, 60), (56, 84), 20), _picture((10, 10, 90), (90, 60), 30)]
