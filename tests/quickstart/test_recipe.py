"""How the recipe deals characters onto training pages."""

from __future__ import annotations

import random

import numpy as np
import pytest

from metaembed.quickstart.data import fonts_for, load_glyphs, render, to_array
from metaembed.quickstart.recipe import RecipeConfig, _training_page


@pytest.fixture(scope="module")
def glyphs():
    return load_glyphs()[:200:5]


def test_one_glyph_pages_draw_only_the_face(glyphs):
    config = RecipeConfig(page_grid=1, image_size=32, patch_size=8)
    faces = {g.codepoint: fonts_for(g) for g in glyphs}
    rng, reference = random.Random(3), random.Random(3)
    image, target = _training_page(iter(glyphs), faces, config, rng)
    face = reference.choice(faces[glyphs[0].codepoint])
    assert target == glyphs[0]
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
        image, target = _training_page(drawn, faces, config, rng)
        used = glyphs.index(next(drawn))  # how many glyphs the page took
        counts.add(used)
        assert target in glyphs[:used]
        cells = to_array(image)[0].reshape(2, 32, 2, 32).max(axis=(1, 3))
        assert (cells > 0).sum() == used  # one inked cell per glyph on the page
    assert counts == ({4} if full_pages else {1, 2, 3, 4})
