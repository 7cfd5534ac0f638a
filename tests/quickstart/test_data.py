"""The glyph data set: real font drawings paired with Unicode names."""

from __future__ import annotations

import unicodedata

import numpy as np

from metaembed.quickstart.data import AUGMENT_FONTS, load_glyphs, render, split, to_array


def test_glyphs_are_named_visible_characters():
    glyphs = load_glyphs()
    assert len(glyphs) > 5000
    by_id = {g.id: g for g in glyphs}
    assert by_id["U+00E8"].text == "latin small letter e with grave"
    assert all(unicodedata.name(chr(g.codepoint)) == g.name for g in glyphs[:: 97])
    assert len({g.text for g in glyphs}) == len(glyphs)  # names identify characters


def test_split_is_disjoint_seeded_and_sized():
    glyphs = load_glyphs()
    train, held = split(glyphs, held_out=0.1, seed=0)
    assert not {g.codepoint for g in train} & {g.codepoint for g in held}
    assert len(train) + len(held) == len(glyphs) and abs(len(held) - 0.1 * len(glyphs)) <= 1
    assert split(glyphs, held_out=0.1, seed=0)[1] == held
    assert split(glyphs, held_out=0.1, seed=1)[1] != held


def test_render_draws_light_ink_centred_and_faces_differ():
    glyph = next(g for g in load_glyphs() if g.codepoint == ord("E"))
    array = to_array(render(glyph, 32))
    assert array.shape == (3, 32, 32)
    ink = array[0] > 0.5
    rows, cols = np.nonzero(ink)
    assert 0.03 < ink.mean() < 0.5  # something is drawn, on a dark ground
    assert abs((rows.min() + rows.max()) / 2 - 15.5) <= 1.5 and abs((cols.min() + cols.max()) / 2 - 15.5) <= 1.5
    bold = to_array(render(glyph, 32, AUGMENT_FONTS[0]))
    assert (bold[0] > 0.5).sum() > ink.sum()  # the bold face has more ink
