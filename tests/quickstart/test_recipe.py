"""How the recipe deals characters onto training pages."""

from __future__ import annotations

import random

import numpy as np
import torch
import pytest

from metaembed.quickstart.data import fonts_for, load_glyphs, render, to_array
from metaembed.quickstart.recipe import RecipeConfig, _query_sets, _training_page


@pytest.fixture(scope="module")
def glyphs():
    return load_glyphs()[:200:5]


def test_one_glyph_pages_draw_only_the_face(glyphs):
    config = RecipeConfig(page_grid=1, image_size=32, patch_size=8)
    faces = {g.codepoint: fonts_for(g) for g in glyphs}
    rng, reference = random.Random(3), random.Random(3)
    image, names = _training_page(iter(glyphs), faces, config, rng)
    face = reference.choice(faces[glyphs[0].codepoint])
    assert names == [glyphs[0]]
    assert np.array_equal(to_array(image), to_array(render(glyphs[0], 32, face)))
    assert rng.random() == reference.random()  # no other random number was drawn


@pytest.mark.parametrize("full_pages", [True, False])
def test_pages_hold_their_target_and_full_pages_are_full(glyphs, full_pages):
    config = RecipeConfig(page_grid=2, image_size=64, full_pages=full_pages)
    faces = {g.codepoint: fonts_for(g) for g in glyphs}
    rng = random.Random(0)
    counts = set()
    for _ in range(40):
        drawn = iter(glyphs)
        image, names = _training_page(drawn, faces, config, rng)
        used = glyphs.index(next(drawn))  # how many glyphs the page took
        counts.add(used)
        assert sorted(names, key=glyphs.index) == glyphs[:used]  # every glyph once, the query first
        assert names[1:] == sorted(names[1:], key=glyphs.index)  # the others in page order
        cells = to_array(image)[0].reshape(2, 32, 2, 32).max(axis=(1, 3))
        assert (cells > 0).sum() == used  # one inked cell per glyph on the page
    assert counts == ({4} if full_pages else {1, 2, 3, 4})


def test_query_sets_ask_for_every_glyph_of_every_page(glyphs):
    pages = [glyphs[0:1], glyphs[1:4], glyphs[4:8]]
    one = _query_sets(pages, RecipeConfig(page_grid=2, image_size=64, query_every_glyph=False))
    assert one == [[glyphs[0], glyphs[1], glyphs[4]]]  # each page's query glyph
    every = _query_sets(pages, RecipeConfig(page_grid=2, image_size=64, query_every_glyph=True))
    assert len(every) == 4 and all(len(batch) == len(pages) for batch in every)
    assert [batch[1] for batch in every] == [glyphs[1], glyphs[2], glyphs[3], glyphs[1]]  # cycles a short page
    assert {batch[2] for batch in every} == set(glyphs[4:8])
    assert all(batch[0] == glyphs[0] for batch in every)


@pytest.fixture(scope="module")
def tiny_model():
    from metaembed.quickstart.recipe import build_model

    config = RecipeConfig(fusion_layers=1, fusion_width=32, num_query_tokens=2, num_candidate_tokens=4,
                          projection_dim=16, ladder="1,1 2,4")
    model = build_model(config)
    model.eval()
    return model


def test_queries_encoded_by_length_come_back_in_their_order(glyphs, tiny_model):
    from metaembed.quickstart.recipe import _encode_by_length

    texts = [g.text for g in glyphs]  # names of many lengths, not sorted by length
    with torch.no_grad():
        bucketed = _encode_by_length(tiny_model, texts, batch_size=7)
        reference = tiny_model(tiny_model.prepare(texts, "query"), "query")
    assert torch.allclose(bucketed, reference, atol=1e-5)


def test_a_warm_text_cache_spares_the_text_encoder(glyphs, tiny_model, monkeypatch):
    from metaembed.quickstart.recipe import _warm_text_cache

    inputs = tiny_model.backbone.inputs
    texts = [g.text for g in glyphs]
    inputs.text_encoder.requires_grad_(False)  # the cache serves a frozen encoder only
    inputs.cache_frozen_states(True)
    try:
        _warm_text_cache(tiny_model, texts, batch_size=16)
        monkeypatch.setattr(inputs, "_encode", lambda *a: pytest.fail("the text encoder ran on a cached name"))
        with torch.no_grad():
            tiny_model(tiny_model.prepare(texts[::-1], "query"), "query")
    finally:
        inputs.cache_frozen_states(False)
        inputs.text_encoder.requires_grad_(True)
        tiny_model.eval()
