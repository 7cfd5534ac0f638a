"""The loaders read every column of the published layouts (fixtures written in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from metaembed.errors import InputError
from metaembed.evaluation.kinds import beir, mmeb, vidore
from metaembed.evaluation.kinds import Benchmark, detect_kind


def _colour(path: Path) -> tuple[int, int, int]:
    with Image.open(path) as image:
        return image.convert("RGB").getpixel((0, 0))


# ------------------------------------------------------------------ MMEB
def test_mmeb_lists_published_datasets_in_paper_order(mmeb_root):
    assert mmeb.list_datasets(mmeb_root) == ["ImageNet-1K", "VisDial", "MSCOCO_t2i"]
    assert len(mmeb.MMEB_GROUPS) == 36
    splits = [split for _, split in mmeb.MMEB_GROUPS.values()]
    assert splits.count("IND") == 20 and splits.count("OOD") == 16


def test_mmeb_original_layout_image_queries_text_candidates(mmeb_root):
    task = mmeb.load_dataset(mmeb_root, "ImageNet-1K")
    assert (task.meta_task, task.split) == ("Classification", "IND")
    assert len(task.queries) == 3
    query = task.queries[0]
    # The placeholder is gone; the instruction stays in the text (original layout).
    assert query.text == "Represent the given image for classification"
    assert query.instruction is None
    assert query.images == (mmeb_root.resolve() / "eval_images" / "ImageNet-1K" / "red.JPEG",)
    # Candidates are text only and kept once: red, green, blue, yellow.
    assert [c.text for c in task.candidates] == ["red", "green", "blue", "yellow"]
    assert all(not c.images for c in task.candidates)
    assert task.candidate_lists == [[0, 1, 2], [1, 0, 2], [3, 0, 2]]


def test_mmeb_rerelease_layout_instructions_and_image_candidates(mmeb_root):
    task = mmeb.load_dataset(mmeb_root, "MSCOCO_t2i")
    assert (task.meta_task, task.split) == ("Retrieval", "IND")
    assert [q.text for q in task.queries] == ["a red square", "a yellow square"]
    assert task.queries[0].instruction == "Find me an everyday image that matches the given caption:"
    assert not task.queries[0].images
    first = task.candidates[0]
    assert first.text is None and first.instruction == "Represent the given image."
    assert [_colour(c.images[0]) for c in task.candidates] == [
        (220, 20, 20), (20, 20, 220), (20, 200, 20), (230, 230, 10)
    ]
    assert task.candidate_lists == [[0, 1, 2], [3, 0]]


def test_mmeb_candidates_with_text_and_image_and_repeated_positive(mmeb_root):
    task = mmeb.load_dataset(mmeb_root, "VisDial")
    assert task.queries[0].text.startswith("Represent the given dialogue")
    assert [c.text for c in task.candidates] == ["green", "red"]
    assert all(len(c.images) == 1 for c in task.candidates)
    assert task.candidate_lists == [[0, 1, 0]]


def test_mmeb_explicit_image_root(mmeb_root, tmp_path):
    moved = tmp_path / "elsewhere"
    (mmeb_root / "eval_images").rename(moved)
    with pytest.raises(InputError, match="ImageNet-1K/red.JPEG"):
        mmeb.load_dataset(mmeb_root, "ImageNet-1K")
    task = mmeb.load_dataset(mmeb_root, "ImageNet-1K", image_root=moved)
    assert task.queries[0].images[0] == moved / "ImageNet-1K" / "red.JPEG"


def test_mmeb_missing_image_is_named(mmeb_root):
    (mmeb_root / "eval_images" / "MSCOCO_t2i" / "green.jpg").unlink()
    with pytest.raises(InputError, match=r"image file not found: .*MSCOCO_t2i/green\.jpg"):
        mmeb.load_dataset(mmeb_root, "MSCOCO_t2i")


def test_mmeb_missing_column_and_corrupt_file_are_named(mmeb_root):
    path = mmeb_root / "VisDial" / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"qry_text": ["x"], "qry_img_path": [""]}), path)
    with pytest.raises(InputError, match=r"VisDial/test-00000-of-00001\.parquet lacks column\(s\) \['tgt_text', 'tgt_img_path'\]"):
        mmeb.load_dataset(mmeb_root, "VisDial")
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"cannot read Parquet file .*VisDial"):
        mmeb.load_dataset(mmeb_root, "VisDial")
    with pytest.raises(InputError, match="data folder not found: .*NoSuchSet"):
        mmeb.load_dataset(mmeb_root, "NoSuchSet")


def test_mmeb_mismatched_candidate_columns(mmeb_root):
    path = mmeb_root / "VisDial" / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"qry_text": ["x"], "qry_img_path": [""], "tgt_text": [["a", "b"]],
                             "tgt_img_path": [[""]]}), path)
    with pytest.raises(InputError, match="row 0: tgt_text has 2 entries but tgt_img_path has 1"):
        mmeb.load_dataset(mmeb_root, "VisDial")


# ------------------------------------------------------------------ ViDoRe v1
def test_vidore_v1_protocol(vidore_v1_root, tmp_path):
    task = vidore.load_v1_dataset(vidore_v1_root, "docvqa_test_subsampled", image_dir=tmp_path / "pages")
    # Null query dropped, duplicate question kept once (first occurrence order).
    assert [q.text for q in task.queries] == ["what is red?", "what is blue?", "what is yellow?"]
    assert task.query_ids == ["q0", "q1", "q2"]
    # Every row is a corpus entry; the duplicated file name appears twice.
    assert task.doc_ids == ["page_red.png", "page_green.png", "page_blue.png", "page_blue.png", "page_yellow.png"]
    colours = [_colour(p.images[0]) for p in task.corpus]
    assert colours == [(220, 20, 20), (20, 200, 20), (20, 200, 20), (20, 20, 220), (230, 230, 10)]
    # Embedded bytes were written under image_dir, once per distinct image.
    assert all(p.images[0].parent == tmp_path / "pages" for p in task.corpus)
    assert len(list((tmp_path / "pages").iterdir())) == 4
    assert task.qrels == {"q0": {"page_red.png": 1}, "q1": {"page_blue.png": 1}, "q2": {"page_yellow.png": 1}}


def test_vidore_v1_image_given_by_path_only(tmp_path):
    root = tmp_path / "v1"
    folder = root / "tatdqa_test"
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(folder / "p.png")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(
        pa.table({"query": ["q?"], "image": pa.array([{"bytes": None, "path": "p.png"}], struct),
                  "image_filename": ["p.png"]}),
        folder / "test-00000-of-00001.parquet",
    )
    task = vidore.load_v1_dataset(root, "tatdqa_test", image_dir=tmp_path / "x")
    assert task.corpus[0].images[0] == folder / "p.png"
    (folder / "p.png").unlink()
    with pytest.raises(InputError, match=r"row 0\).*image file not found: .*p\.png"):
        vidore.load_v1_dataset(root, "tatdqa_test", image_dir=tmp_path / "x")


# ------------------------------------------------------------------ ViDoRe v2
def test_vidore_v2_lists_english_and_multilingual(vidore_v2_root):
    assert vidore.list_v2_datasets(vidore_v2_root) == ["esg_reports_v2", "esg_reports_v2_multilingual"]


def test_vidore_v2_english_and_multilingual_tasks(vidore_v2_root, tmp_path):
    english = vidore.load_v2_dataset(vidore_v2_root, "esg_reports_v2", image_dir=tmp_path / "img")
    assert english.query_ids == ["0", "2"]
    assert [q.text for q in english.queries] == ["which page is red?", "which page is blue?"]
    assert english.doc_ids == ["0", "1", "2", "3"]
    # Graded qrels kept as grades, ids as strings, the French query's judgments dropped.
    assert english.qrels == {"0": {"0": 2, "3": 1}, "2": {"2": 2}}
    assert [_colour(p.images[0]) for p in english.corpus][:2] == [(220, 20, 20), (20, 200, 20)]
    everything = vidore.load_v2_dataset(vidore_v2_root, "esg_reports_v2_multilingual", image_dir=tmp_path / "img")
    assert everything.query_ids == ["0", "1", "2"]
    assert everything.qrels["1"] == {"1": 1}


def test_vidore_v2_missing_config_is_named(vidore_v2_root):
    import shutil

    shutil.rmtree(vidore_v2_root / "esg_reports_v2" / "qrels")
    with pytest.raises(InputError, match="esg_reports_v2"):
        vidore.load_v2_dataset(vidore_v2_root, "esg_reports_v2")


# ------------------------------------------------------------------ BEIR
def test_beir_reads_text_image_and_multi_image_rows(beir_root):
    task = beir.load_dataset(beir_root)
    assert task.name == "my-collection"
    assert task.doc_ids == ["d1", "d2", "d3", "d4"]
    d1, d2, d3, d4 = task.corpus
    assert (d1.text, d1.images) == ("Red a red page", ())
    assert (d2.text, d2.images) == (None, (beir_root / "pages" / "green.png",))
    assert (d3.text, d3.images) == ("blue", (beir_root / "pages" / "blue.png",))
    assert d4.images == (beir_root / "pages" / "yellow.png", beir_root / "pages" / "red.png")
    # q3 has no judgments: it cannot be scored and is dropped.
    assert task.query_ids == ["q1", "q2"]
    assert task.queries[0].instruction == "Find the page."
    assert task.queries[1].images == (beir_root / "pages" / "green.png",)
    assert task.qrels == {"q1": {"d1": 2, "d4": 1}, "q2": {"d2": 1}}
    assert task.ignore_identical_ids


def test_beir_errors_name_file_and_line(beir_root):
    (beir_root / "pages" / "blue.png").unlink()
    with pytest.raises(InputError, match=r"corpus\.jsonl: image file not found: .*blue\.png"):
        beir.load_dataset(beir_root)
    with (beir_root / "queries.jsonl").open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(InputError, match=r"queries\.jsonl, line 4: not valid JSON"):
        beir.load_dataset(beir_root)


def test_beir_qrels_with_unknown_ids(beir_root):
    (beir_root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tnope\t1\n")
    with pytest.raises(InputError, match="corpus ids absent from corpus.jsonl.*nope"):
        beir.load_dataset(beir_root)
    (beir_root / "qrels" / "test.tsv").write_text("q1\td1\tgood\n")
    with pytest.raises(InputError, match=r"test\.tsv, line 1: score 'good' is not a number"):
        beir.load_dataset(beir_root)


# ------------------------------------------------------------------ detection
def test_detect_kind_of_each_layout(mmeb_root, vidore_v1_root, vidore_v2_root, beir_root, tmp_path):
    assert detect_kind(mmeb_root) == "mmeb"
    assert detect_kind(vidore_v1_root) == "vidore-v1"
    assert detect_kind(vidore_v2_root) == "vidore-v2"
    assert detect_kind(beir_root) == "beir"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot tell which benchmark"):
        detect_kind(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown benchmark kind 'mteb'"):
        Benchmark.open(mmeb_root, "mteb")
    bench = Benchmark.open(mmeb_root, "MMEB")
    with pytest.raises(InputError, match=r"\['Nope'\] not found"):
        bench.select(["Nope"])
