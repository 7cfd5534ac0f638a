"""Every supported backbone family: shapes, norms, padding invariance, sensitivity, image support."""

from __future__ import annotations

import pytest
import torch

from metaembed.errors import InputError
from metaembed.model.testing import tiny_families, tiny_model

VISION_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "paligemma", "mllama"}


@pytest.fixture(scope="module", params=tiny_families())
def family_model(request):
    return request.param, tiny_model(request.param, num_query_tokens=3, num_candidate_tokens=5)


def _items(model, images):
    items = ["a red square", "a much longer description of a green rectangle on a dark background"]
    if model.supports_images:
        items += [images[0], {"text": "what colour is it?", "image": images[1]}]
    return items


def test_every_family_is_covered():
    expected = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "paligemma", "mllama", "qwen2", "qwen3", "bert"}
    assert expected <= set(tiny_families())


def test_family_shapes_padding_and_sensitivity(family_model, images):
    family, model = family_model
    assert model.supports_images == (family in VISION_FAMILIES)
    items = _items(model, images)
    for side, count in (("query", 3), ("candidate", 5)):
        with torch.no_grad():
            left = model(model.prepare(items, side, padding_side="left"), side)
            right = model(model.prepare(items, side, padding_side="right"), side)
            singles = torch.cat([model(model.prepare([item], side), side) for item in items])
        assert left.shape == (len(items), count, 64)
        torch.testing.assert_close(left.norm(dim=-1), torch.ones(len(items), count))
        torch.testing.assert_close(left, singles, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(right, singles, atol=2e-5, rtol=1e-4)
        # every item differs from every other one in every Meta Token vector
        distances = (singles.unsqueeze(0) - singles.unsqueeze(1)).norm(dim=-1).amax(dim=-1)
        assert distances[~torch.eye(len(items), dtype=torch.bool)].min() > 1e-5


@pytest.mark.parametrize("family", sorted(set(tiny_families()) - VISION_FAMILIES))
def test_text_only_families_refuse_images(family, images):
    model = tiny_model(family)
    with pytest.raises(InputError, match=r"item 1: the '\w+' backbone is text-only"):
        model.encode_queries(["fine", images[0]])
