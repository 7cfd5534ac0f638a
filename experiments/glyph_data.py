"""The quickstart's data set: Unicode characters drawn by real fonts, paired with their Unicode names.

Every glyph that matplotlib's bundled DejaVu Sans font draws is rendered to a small image and paired
with the character's official name from Python's ``unicodedata`` (for example ``"latin small letter
e with grave"`` or ``"braille pattern dots-1235"``). Both halves are real, human-made data that
install with the registries and need no download: the drawings are the DejaVu type designers' and
the names are the Unicode Consortium's. The task -- find the image of a character from its name,
or the name from the image -- is a small text-to-image retrieval problem whose held-out pairs can
only be solved by composition (a model that has seen "a with grave" and "e with acute" must place
"e with grave"), so the retrieval numbers measure generalisation, not memory.

The searchable items are *pages*: sheets of ``grid`` x ``grid`` glyphs drawn side by side (like a
page of a type specimen), and a query -- the name of one character -- is relevant to the page that
holds it. A single vector must then summarise several unrelated characters while several vectors
can keep them apart: the situation (visual document pages) where the paper finds that larger
multi-vector budgets pay off. With ``grid=1`` every page is one glyph.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: The font that defines the collection (its glyphs are the searchable images).
COLLECTION_FONT = "DejaVuSans.ttf"
#: Other DejaVu faces used only as training-time augmentation (same letters, other strokes).
AUGMENT_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf")
# Letters (L), numbers (N), punctuation (P) and symbols (S) draw something visible; marks,
# separators and controls draw nothing or nothing alone.
_VISIBLE_CATEGORIES = ("L", "N", "P", "S")


@dataclass(frozen=True)
class Glyph:
    """One character of the collection: its code point, Unicode name and stable string id."""

    codepoint: int
    name: str

    @property
    def id(self) -> str:
        """A stable id such as ``"U+00E8"``."""
        return f"U+{self.codepoint:04X}"

    @property
    def text(self) -> str:
        """The name as a query: lower case, as a person would type it."""
        return self.name.lower()


def font_path(filename: str) -> Path:
    """The path of one of the TrueType fonts that ship inside matplotlib."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / filename
    if not path.is_file():  # pragma: no cover - only with a broken matplotlib install
        raise FileNotFoundError(f"matplotlib's font {filename} is missing at {path}")
    return path


@lru_cache(maxsize=None)
def _covered_codepoints(filename: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    return frozenset(TTFont(str(font_path(filename))).getBestCmap())


def load_glyphs() -> list[Glyph]:
    """Every visible, named character DejaVu Sans draws, in code-point order (about 5,500)."""
    glyphs = []
    for codepoint in sorted(_covered_codepoints(COLLECTION_FONT)):
        char = chr(codepoint)
        name = unicodedata.name(char, "")
        if codepoint > 32 and name and unicodedata.category(char)[0] in _VISIBLE_CATEGORIES:
            glyphs.append(Glyph(codepoint, name))
    return glyphs


@lru_cache(maxsize=16)
def _font(filename: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(filename)), size)


def render(glyph: Glyph, size: int = 32, font: str = COLLECTION_FONT) -> Image.Image:
    """Draw one character white on black, centred on its ink, as an RGB ``size`` x ``size`` image.

    Light ink on a dark ground keeps empty patches at zero, so a linear patch embedding sees the
    strokes rather than a large constant background.
    """
    face = _font(font, int(size * 0.75))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), chr(glyph.codepoint), font=face)
    x = (size - (right - left)) / 2 - left
    y = (size - (bottom - top)) / 2 - top
    draw.text((x, y), chr(glyph.codepoint), font=face, fill=255)
    return canvas.convert("RGB")


def fonts_for(glyph: Glyph) -> list[str]:
    """The collection font plus every augmentation face that has this character."""
    return [COLLECTION_FONT] + [f for f in AUGMENT_FONTS if glyph.codepoint in _covered_codepoints(f)]


@dataclass(frozen=True)
class Page:
    """A sheet of glyphs drawn in a grid, row by row; the searchable item of the quickstart."""

    #: A stable id: ``"page-0042"``, or the glyph's own (``"U+00E8"``) on one-glyph pages.
    id: str
    glyphs: tuple[Glyph, ...]


def paginate(glyphs: list[Glyph], per_page: int, seed: int = 0) -> list[Page]:
    """Deal ``glyphs`` onto pages of ``per_page`` by a seeded shuffle (the last page may be short).

    Shuffling mixes scripts and blocks on each page, as unrelated items share a document page.
    With ``per_page=1`` every glyph is its own page, in code-point order, under its own id.
    """
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    if per_page == 1:
        return [Page(glyph.id, (glyph,)) for glyph in glyphs]
    order = list(glyphs)
    random.Random(seed).shuffle(order)
    starts = range(0, len(order), per_page)
    return [Page(f"page-{n:04d}", tuple(order[start : start + per_page])) for n, start in enumerate(starts)]


def render_page(
    glyphs: Sequence[Glyph | None], grid: int, cell: int = 32, fonts: Sequence[str | None] | None = None
) -> Image.Image:
    """Draw up to ``grid * grid`` glyphs row by row, each centred in its ``cell`` x ``cell`` square.

    ``fonts`` gives each glyph's face (default: the collection font). A ``None`` glyph and the
    cells after the last glyph stay black. Returns an RGB image of ``grid * cell`` pixels square.
    """
    if len(glyphs) > grid * grid:
        raise ValueError(f"{len(glyphs)} glyphs do not fit on a {grid}x{grid} page")
    page = Image.new("RGB", (grid * cell, grid * cell), 0)
    for slot, glyph in enumerate(glyphs):
        if glyph is None:
            continue
        face = (fonts[slot] if fonts else None) or COLLECTION_FONT
        page.paste(render(glyph, cell, face), ((slot % grid) * cell, (slot // grid) * cell))
    return page


def split(glyphs: list[Glyph], held_out: float = 0.1, seed: int = 0) -> tuple[list[Glyph], list[Glyph]]:
    """Split into (train, held-out) by a seeded shuffle; held-out names are never trained on."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out}")
    order = list(glyphs)
    random.Random(seed).shuffle(order)
    cut = int(round(len(order) * held_out))
    held, train = order[:cut], order[cut:]
    return sorted(train, key=lambda g: g.codepoint), sorted(held, key=lambda g: g.codepoint)


def to_array(image: Image.Image) -> np.ndarray:
    """A rendered glyph as a float32 array ``(3, H, W)`` in [0, 1] (ink = 1)."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
