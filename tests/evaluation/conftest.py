"""Fixtures in the published layouts, written into tmp_path, and a deterministic fake encoder.

The writers copy the real files' layouts (see shared/research/benchmarks.md):
MMEB-eval Parquet subsets with an ``eval_images/`` root, ViDoRe v1 Parquet with
``{bytes, path}`` image structs, ViDoRe v2 ``corpus/ queries/ qrels/ docs/``
configs, and a BEIR folder with images.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from metaembed.model.items import load_image, to_items

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 10)}
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def colour_image(colour: str, size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), COLOURS[colour])


def png_bytes(colour: str) -> bytes:
    buffer = io.BytesIO()
    colour_image(colour).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: Path, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # PNG whatever the name says: JPEG would blur the exact colours the fake encoder reads.
    colour_image(colour).save(path, format="PNG")


def write_parquet(path: Path, columns: dict[str, Any], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


# --------------------------------------------------------------------------- MMEB
def write_mmeb(root: Path) -> Path:
    """Three MMEB subsets:

    * ImageNet-1K — original layout: the instruction lives in ``qry_text`` after
      ``<|image_1|>``; image queries, text-only candidates (class names).
    * MSCOCO_t2i — re-release layout (``qry_inst`` / ``tgt_inst``): text queries,
      image-only candidates, a different list per query.
    * VisDial — original layout, a candidate listed twice (the positive again).
    """
    images = root / "eval_images"
    for colour in COLOURS:
        save_png(images / "ImageNet-1K" / f"{colour}.JPEG", colour)
        save_png(images / "MSCOCO_t2i" / f"{colour}.jpg", colour)
    instruction = "<|image_1|>\nRepresent the given image for classification"
    write_parquet(
        root / "ImageNet-1K" / "test-00000-of-00001.parquet",
        {
            "qry_text": [instruction] * 3,
            "qry_img_path": ["ImageNet-1K/red.JPEG", "ImageNet-1K/green.JPEG", "ImageNet-1K/blue.JPEG"],
            # Positive first; the third query's positive is wrong on purpose ("yellow" for a blue image).
            "tgt_text": [["red", "green", "blue"], ["green", "red", "blue"], ["yellow", "red", "blue"]],
            "tgt_img_path": [["", "", ""]] * 3,
        },
    )
    write_parquet(
        root / "MSCOCO_t2i" / "test-00000-of-00001.parquet",
        {
            "qry_inst": ["<|image_1|>\nFind me an everyday image that matches the given caption:"] * 2,
            "qry_text": ["a red square", "a yellow square"],
            "qry_img_path": ["", ""],
            "tgt_inst": ["<|image_1|>\nRepresent the given image."] * 2,
            "tgt_text": [["<|image_1|>"] * 3, ["<|image_1|>"] * 2],
            "tgt_img_path": [
                ["MSCOCO_t2i/red.jpg", "MSCOCO_t2i/blue.jpg", "MSCOCO_t2i/green.jpg"],
                ["MSCOCO_t2i/yellow.jpg", "MSCOCO_t2i/red.jpg"],
            ],
        },
    )
    write_parquet(
        root / "VisDial" / "test-00000-of-00001.parquet",
        {
            "qry_text": ["Represent the given dialogue about an image: Q: what colour? A: green"],
            "qry_img_path": [""],
            "tgt_text": [["<|image_1|>\ngreen", "<|image_1|>\nred", "<|image_1|>\ngreen"]],
            "tgt_img_path": [["ImageNet-1K/green.JPEG", "ImageNet-1K/red.JPEG", "ImageNet-1K/green.JPEG"]],
        },
    )
    return root


@pytest.fixture
def mmeb_root(tmp_path: Path) -> Path:
    return write_mmeb(tmp_path / "MMEB-eval")


# --------------------------------------------------------------------------- ViDoRe v1
def write_vidore_v1(root: Path, name: str = "docvqa_test_subsampled") -> Path:
    """One ViDoRe v1 table: a null query, a query asked on two pages (the last row's
    page is the relevant one), and a page file name listed on two rows."""
    rows = [
        # (query, colour, image_filename)
        ("what is red?", "red", "page_red.png"),
        (None, "green", "page_green.png"),
        ("what is blue?", "green", "page_blue.png"),  # page_blue listed twice: rows 2 and 3
        ("what is blue?", "blue", "page_blue.png"),   # same question again: deduplicated
        ("what is yellow?", "yellow", "page_yellow.png"),
    ]
    schema = pa.schema(
        [("query", pa.string()), ("image", IMAGE_STRUCT), ("image_filename", pa.string()),
         ("answer", pa.string()), ("page", pa.string()), ("source", pa.string())]
    )
    write_parquet(
        root / name / "data" / "test-00000-of-00001.parquet",
        {
            "query": [r[0] for r in rows],
            "image": [{"bytes": png_bytes(r[1]), "path": r[2]} for r in rows],
            "image_filename": [r[2] for r in rows],
            "answer": ["a"] * len(rows),
            "page": ["1"] * len(rows),
            "source": ["pdf"] * len(rows),
        },
        schema,
    )
    return root


@pytest.fixture
def vidore_v1_root(tmp_path: Path) -> Path:
    return write_vidore_v1(tmp_path / "vidore-v1")


# --------------------------------------------------------------------------- ViDoRe v2
def write_vidore_v2(root: Path, name: str = "esg_reports_v2") -> Path:
    """One ViDoRe v2 set: integer ids, English and French queries, graded qrels."""
    folder = root / name
    colours = ["red", "green", "blue", "yellow"]
    write_parquet(
        folder / "corpus" / "test-00000-of-00001.parquet",
        {
            "corpus-id": list(range(len(colours))),
            "image": [{"bytes": png_bytes(c), "path": None} for c in colours],
            "doc-id": ["report-a", "report-a", "report-b", "report-b"],
            "markdown": [f"# {c}" for c in colours],
            "page_number_in_doc": [1, 2, 1, 2],
        },
        pa.schema([("corpus-id", pa.int64()), ("image", IMAGE_STRUCT), ("doc-id", pa.string()),
                   ("markdown", pa.string()), ("page_number_in_doc", pa.int64())]),
    )
    write_parquet(
        folder / "queries" / "test-00000-of-00001.parquet",
        {
            "query-id": [0, 1, 2],
            "query": ["which page is red?", "quelle page est verte ?", "which page is blue?"],
            "language": ["english", "french", "english"],
            "query_types": ["extractive"] * 3,
        },
    )
    write_parquet(
        folder / "qrels" / "test-00000-of-00001.parquet",
        {
            "query-id": [0, 0, 1, 2],
            "corpus-id": [0, 3, 1, 2],
            "score": [2, 1, 1, 2],
            "content_type": ["text"] * 4,
        },
    )
    write_parquet(folder / "docs" / "test-00000-of-00001.parquet", {"doc-id": ["report-a", "report-b"]})
    return root


@pytest.fixture
def vidore_v2_root(tmp_path: Path) -> Path:
    return write_vidore_v2(tmp_path / "vidore-v2")


# --------------------------------------------------------------------------- BEIR
def write_beir(root: Path) -> Path:
    """A BEIR folder with text-only, image-only, text+image and multi-image rows on both sides."""
    root.mkdir(parents=True, exist_ok=True)
    for colour in COLOURS:
        save_png(root / "pages" / f"{colour}.png", colour)
    corpus = [
        {"_id": "d1", "title": "Red", "text": "a red page"},
        {"_id": "d2", "image": "pages/green.png"},
        {"_id": "d3", "text": "blue", "image": "pages/blue.png"},
        {"_id": "d4", "text": "two pages", "images": ["pages/yellow.png", "pages/red.png"]},
    ]
    queries = [
        {"_id": "q1", "text": "red", "instruction": "Find the page."},
        {"_id": "q2", "image": "pages/green.png"},
        {"_id": "q3", "text": "unjudged query"},
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in queries) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td4\t1\nq2\td2\t1\n")
    return root


@pytest.fixture
def beir_root(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "my-collection")


# --------------------------------------------------------------------------- encoder
def _token_vector(token: str, dim: int) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "little")
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


class FakeEncoder:
    """A deterministic stand-in for MetaEmbedModel with the same encode API.

    An item's vectors are built from its words and the colour names of its
    images (the pixel at (0, 0)), so "red" text matches a red image. Vector ``r``
    adds item-specific noise so that budgets differ. Counts the items it encodes.
    """

    def __init__(self, num_query_tokens: int = 4, num_candidate_tokens: int = 8, dim: int = 128) -> None:
        self.num_query_tokens = num_query_tokens
        self.num_candidate_tokens = num_candidate_tokens
        self.dim = dim
        self.config = {"kind": "fake", "dim": dim}
        self.encoded = {"queries": 0, "candidates": 0}
        self.calls = {"queries": 0, "candidates": 0}

    def _tokens(self, item: Any) -> list[str]:
        tokens = (item.text or "").lower().replace("?", " ").replace(":", " ").split()
        tokens += (item.instruction or "").lower().split()
        for image in item.images:
            pixel = load_image(image).getpixel((0, 0))
            tokens += [name for name, rgb in COLOURS.items() if rgb == pixel]
        return tokens

    def _encode(self, items: Sequence[Any], vectors: int, side: str, instruction: str | None) -> torch.Tensor:
        batch = to_items(items, instruction=instruction)
        self.encoded[side] += len(batch)
        self.calls[side] += 1
        out = torch.empty(len(batch), vectors, self.dim)
        for row, item in enumerate(batch):
            tokens = self._tokens(item)
            base = sum((_token_vector(t, self.dim) for t in tokens), torch.zeros(self.dim))
            key = json.dumps(tokens)
            for r in range(vectors):
                vector = base + 0.2 * _token_vector(f"{key}#{r}", self.dim)
                out[row, r] = vector / vector.norm()
        return out

    def encode_queries(self, items, *, batch_size, budget=None, instruction=None, show_progress=None):
        return self._encode(items, self.num_query_tokens, "queries", instruction)

    def encode_candidates(self, items, *, batch_size, budget=None, instruction=None, show_progress=None):
        return self._encode(items, self.num_candidate_tokens, "candidates", instruction)


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def encoder_class() -> type[FakeEncoder]:
    return FakeEncoder
