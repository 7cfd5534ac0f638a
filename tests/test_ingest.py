"""Reading folders and JSONL files into records (ids, items, payloads), skips, passages and OCR."""

from __future__ import annotations

import hashlib

import pytest

from metaembed.errors import InputError
from metaembed.ingest import ReadOptions, Skipped, iter_records, token_windows
from tests.frontdoor_helpers import text_page, write_docs, write_jsonl


def test_folder_walk_ids_kinds_and_pdf_pages(tmp_path):
    docs = write_docs(tmp_path / "docs")
    records = {r.id: r for r in iter_records(docs)}
    assert sorted(records) == [
        "green.jpg", "notes.txt", "photos/blue.png", "readme.md", "red.png", "report.pdf#page=1", "report.pdf#page=2",
    ]
    assert records["notes.txt"].item().text.startswith("Quarterly revenue")
    assert records["notes.txt"].payload["text"].startswith("Quarterly revenue")
    page2 = records["report.pdf#page=2"]
    sha = hashlib.sha256((docs / "report.pdf").read_bytes()).hexdigest()
    assert page2.payload == {"path": "report.pdf", "page": 2, "sha256": sha}
    rendered = page2.item().images[0]
    # page 2 is the dark picture, page 1 the light one: rendering kept the page order
    light = records["report.pdf#page=1"].item().images[0]
    assert sum(rendered.convert("L").getdata()) < sum(light.convert("L").getdata())
    assert records["red.png"].item().images == (docs / "red.png",)


def test_jsonl_items_payloads_and_relative_images(tmp_path):
    (tmp_path / "img").mkdir()
    from tests.frontdoor_helpers import picture

    picture((1, 2, 3), 4).save(tmp_path / "img" / "a.png")
    path = write_jsonl(
        tmp_path / "items.jsonl",
        [{"id": "a", "image": "img/a.png", "lang": "en"}, {"id": 7, "text": "hello", "instruction": "Find it"}],
    )
    records = list(iter_records(path))
    assert [r.id for r in records] == ["a", "7"]
    assert records[0].item().images == (tmp_path / "img" / "a.png",)
    assert records[0].payload.pop("sha256") != records[1].payload.pop("sha256")
    assert records[0].payload == {"lang": "en", "path": "img/a.png"}
    assert records[1].item().instruction == "Find it"
    assert records[1].payload == {"instruction": "Find it", "text": "hello"}


@pytest.mark.parametrize(
    "line, message",
    [("{not json", "line 2: not valid JSON"), ('{"text": "no id"}', "line 2: expected an object with an 'id'"),
     ('{"id": "x"}', "line 2: an item needs text or at least one image")],
)
def test_bad_jsonl_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n' + line + "\n")
    with pytest.raises(InputError, match=message):
        list(iter_records(path))


def test_missing_or_unsupported_input(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        iter_records(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="neither a folder nor a .jsonl"):
        iter_records(tmp_path / "x.csv")


def test_bad_files_are_skipped_with_one_reason_each(tmp_path):
    docs = write_docs(tmp_path / "docs")
    (docs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    (docs / "empty.txt").write_text("  \n")
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (docs / "data.csv").write_text("city,revenue\nOslo,12\n")  # a text format: indexed
    (docs / ".hidden.txt").write_text("left out without a word")
    skipped: list[Skipped] = []
    records = {r.id: r for r in iter_records(docs, skipped=skipped)}
    assert {"data.csv", "red.png", "notes.txt", "report.pdf#page=2"} <= set(records)
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {"broken.png", "broken.pdf", "empty.txt", "blob.txt", "data.bin"}
    assert reasons["data.bin"] == "unsupported file type .bin"
    assert reasons["empty.txt"] == "empty text"
    assert "not a readable image" in reasons["broken.png"] and "not a readable PDF" in reasons["broken.pdf"]
    assert all("\n" not in str(s) for s in skipped)
    with pytest.raises(InputError, match="^broken.pdf: not a readable PDF|^data.bin: unsupported"):
        list(iter_records(docs, strict=True))


def test_long_text_is_split_into_passages_that_cover_it(tmp_path):
    words = [f"w{i}" for i in range(50)]
    text = " ".join(words)
    offsets = []
    position = 0
    for word in words:
        offsets.append((position, position + len(word)))
        position += len(word) + 1
    spans = token_windows(offsets, len(text), window=8, overlap=2)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    pieces = [text[a:b].split() for a, b in spans]
    assert all(len(p) == 8 for p in pieces[:-1]) and len(pieces[-1]) <= 8
    assert all(a[-2:] == b[:2] for a, b in zip(pieces, pieces[1:]))  # 2 words shared at every border
    (tmp_path / "long.txt").write_text(text)

    def split(value: str) -> list[tuple[int, int]]:
        return token_windows(offsets, len(value), window=8, overlap=2)

    records = list(iter_records(tmp_path, ReadOptions(split=split)))
    assert [r.id for r in records] == [f"long.txt#passage={n}" for n in range(1, len(spans) + 1)]
    assert records[-1].payload["chars"] == [spans[-1][0], len(text)] and records[-1].payload["passage"] == len(spans)
    assert records[-1].item().text.split()[-1] == "w49"


def test_ocr_reads_a_rendered_image_and_a_scanned_pdf_page(tmp_path):
    """A text-only model gets the text that OCR reads on pictures of text (RapidOCR, packaged models)."""
    docs = tmp_path / "scans"
    docs.mkdir()
    text_page(["Quarterly revenue grew", "twelve percent"]).save(docs / "screenshot.png")
    text_page(["Invoice total 1234 EUR"]).save(docs / "scan.pdf")  # an image-only PDF: no text layer
    records = {r.id: r for r in iter_records(docs, ReadOptions(images=False))}
    assert set(records) == {"screenshot.png", "scan.pdf#page=1"}
    assert records["screenshot.png"].item().text.split() == "Quarterly revenue grew twelve percent".split()
    assert records["scan.pdf#page=1"].item().text.split() == "Invoice total 1234 EUR".split()
    assert records["scan.pdf#page=1"].payload["ocr"] is True


def test_beir_jsonl_reads_id_and_title(tmp_path):
    """BEIR's corpus.jsonl as it is: '_id' for the id, the title before the text."""
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "title": "Cats", "text": "sit on mats"}\n{"_id": "d2", "text": "no title"}\n')
    records = list(iter_records(path))
    assert [r.id for r in records] == ["d1", "d2"]
    assert [r.item().text for r in records] == ["Cats sit on mats", "no title"]
    assert records[0].payload["title"] == "Cats" and "_id" not in records[0].payload
