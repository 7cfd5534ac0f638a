"""The glyph data set: real font drawings paired with Unicode names."""

from __future__ import annotations

import unicodedata

import numpy as np

import pytest

from experiments.glyph_data import AUGMENT_FONTS, load_glyphs, paginate, render, render_page, split, to_array


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


def test_paginate_deals_every_glyph_once_in_seeded_order():
    glyphs = load_glyphs()[:10]
    pages = paginate(glyphs, 4, seed=0)
    assert [len(p.glyphs) for p in pages] == [4, 4, 2]
    assert sorted(g.codepoint for p in pages for g in p.glyphs) == [g.codepoint for g in glyphs]
    assert [p.id for p in pages] == ["page-0000", "page-0001", "page-0002"]
    assert paginate(glyphs, 4, seed=0) == pages and paginate(glyphs, 4, seed=1) != pages
    assert [(p.id, p.glyphs) for p in paginate(glyphs, 1)] == [(g.id, (g,)) for g in glyphs]
    with pytest.raises(ValueError, match="per_page"):
        paginate(glyphs, 0)


def test_render_page_places_each_glyph_in_its_cell():
    by_char = {chr(g.codepoint): g for g in load_glyphs()}
    glyphs = [by_char[c] for c in "AB-"]
    page = to_array(render_page(glyphs, grid=2, cell=32))
    assert page.shape == (3, 64, 64)
    # row by row: A top-left, B top-right, '-' bottom-left, the fourth cell empty
    for slot, glyph in enumerate(glyphs):
        row, col = divmod(slot, 2)
        assert np.array_equal(page[:, 32 * row : 32 * row + 32, 32 * col : 32 * col + 32], to_array(render(glyph, 32)))
    assert page[:, 32:, 32:].max() == 0
    # a None leaves its cell empty and the later glyphs keep their cells
    holes = to_array(render_page([None, glyphs[1]], grid=2, cell=32))
    assert holes[:, :32, :32].max() == 0 and np.array_equal(holes[:, :32, 32:], page[:, :32, 32:])
    with pytest.raises(ValueError, match="do not fit"):
        render_page(glyphs, grid=1)
