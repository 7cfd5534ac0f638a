"""Shared by the CLI and serving tests: a tiny saved model and a small mixed collection on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

BUDGETS = "1,1 2,4 4,8"


@dataclass
class Collection:
    model_dir: Path
    docs: Path
    index: Path


def picture(color: tuple[int, int, int], mark: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small RGB picture with a coloured mark at a position, distinct per (color, mark)."""
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle([mark, mark, mark + 12, mark + 9], fill=(255 - color[0], 40, 200))
    return image


def write_docs(folder: Path) -> Path:
    """A folder with 3 images (one in a subfolder), 2 text files, a 2-page PDF and a skipped file."""
    (folder / "photos").mkdir(parents=True)
    picture((200, 30, 30), 5).save(folder / "red.png")
    picture((20, 160, 60), 20).save(folder / "green.jpg")
    picture((10, 10, 90), 30).save(folder / "photos" / "blue.png")
    (folder / "notes.txt").write_text("Quarterly revenue grew by twelve percent.\n")
    (folder / "readme.md").write_text("# Cats\nCats sleep most of the day.\n")
    pages = [picture((240, 240, 240), 10, (120, 160)), picture((30, 30, 30), 40, (120, 160))]
    pages[0].save(folder / "report.pdf", save_all=True, append_images=pages[1:])
    (folder / "data.bin").write_bytes(b"\x00\x01")
    return folder


def make_collection(root: Path) -> Collection:
    """Save a tiny Qwen2-VL MetaEmbed model and index ``write_docs`` with it."""
    from metaembed.model.testing import tiny_model
    from metaembed.retriever import build_index

    model_dir = root / "model"
    tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8).save_pretrained(model_dir)
    docs = write_docs(root / "docs")
    index = root / "docs.index"
    build_index(model_dir, docs, index, budgets=BUDGETS, progress=False).index.close()
    return Collection(model_dir, docs, index)


def mirror_text_model(max_length: int = 40):
    """A tiny text-only model whose query and candidate embeddings of the same text are equal
    (shared Meta Tokens, one template for both sides): a text searched for finds itself first,
    which makes retrieval testable with random weights. ``max_length`` caps its content tokens."""
    from metaembed.model.backbones import get_adapter
    from metaembed.model.testing import tiny_model

    base = get_adapter("bert").default_template
    template = base.with_changes(query_prefix=base.candidate_prefix, query_suffix=base.candidate_suffix)
    return tiny_model(
        "bert", num_query_tokens=4, num_candidate_tokens=4, shared_meta_tokens=True, max_length=max_length,
        template=template,
    )


def text_page(lines: list[str], size: tuple[int, int] = (520, 160)) -> Image.Image:
    """A white page with ``lines`` printed in black DejaVu Sans: a screenshot or scan with known text."""
    from matplotlib import font_manager
    from PIL import ImageFont

    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 26)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(lines):
        draw.text((20, 25 + 50 * number), line, fill="black", font=font)
    return image


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
