"""Reading folders and JSONL files into records (ids, items, payloads)."""

from __future__ import annotations

import pytest

from metaembed.errors import InputError
from metaembed.ingest import iter_records
from tests.frontdoor_helpers import write_docs, write_jsonl


def test_folder_walk_ids_kinds_and_pdf_pages(tmp_path):
    docs = write_docs(tmp_path / "docs")
    records = {r.id: r for r in iter_records(docs)}
    assert sorted(records) == [
        "green.jpg", "notes.txt", "photos/blue.png", "readme.md", "red.png", "report.pdf#page=1", "report.pdf#page=2",
    ]
    assert records["notes.txt"].item().text.startswith("Quarterly revenue")
    assert records["notes.txt"].payload["text"].startswith("Quarterly revenue")
    page2 = records["report.pdf#page=2"]
    assert page2.payload == {"path": str(docs / "report.pdf"), "page": 2}
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
    assert records[0].payload == {"lang": "en", "path": str(tmp_path / "img" / "a.png")}
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


def test_beir_jsonl_reads_id_and_title(tmp_path):
    """BEIR's corpus.jsonl as it is: '_id' for the id, the title before the text."""
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "title": "Cats", "text": "sit on mats"}\n{"_id": "d2", "text": "no title"}\n')
    records = list(iter_records(path))
    assert [r.id for r in records] == ["d1", "d2"]
    assert [r.item().text for r in records] == ["Cats sit on mats", "no title"]
    assert records[0].payload["title"] == "Cats" and "_id" not in records[0].payload
