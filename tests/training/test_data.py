"""Loaders for the three layouts, the one-source batch sampler, and the collator."""

from __future__ import annotations

import io
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from metaembed.errors import InputError
from metaembed.training.collator import ContrastiveCollator
from metaembed.training.examples import load_pairs
from metaembed.training.public_sets import MOCA_MIXTURE, DataSpec, load_colpali_train, load_mmeb_train
from metaembed.training.sampling import SourceBatchSampler, TrainingMixture


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_pairs_jsonl_and_parquet_read_the_same_examples(tmp_path, images):
    images[0].save(tmp_path / "cat.png")
    records = [
        {"query": "find the cat", "instruction": "Retrieve the image", "positive": {"image": "cat.png"},
         "negatives": ["a dog", {"text": "a cow", "image": "cat.png"}]},
        {"query": {"text": "what is shown?", "image": "cat.png"}, "positive": "a cat"},
    ]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    from_jsonl = load_pairs(jsonl)
    first = from_jsonl[0]
    assert first.query.text == "find the cat" and first.query.instruction == "Retrieve the image"
    assert first.positive.images == (tmp_path / "cat.png",) and first.positive.text is None
    assert [n.modality for n in first.negatives] == ["text", "image+text"]
    assert from_jsonl[1].query.modality == "image+text" and from_jsonl[1].negatives == ()

    # Parquet columns hold one type: every side as a {text, image} struct (nulls for missing keys)
    def struct(side):
        side = {"text": side} if isinstance(side, str) else side
        return {"text": side.get("text"), "image": side.get("image")}

    columnar = [
        {"query": struct(r["query"]), "instruction": r.get("instruction"), "positive": struct(r["positive"]),
         "negatives": [struct(n) for n in r.get("negatives", [])]}
        for r in records
    ]
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(columnar), parquet)
    from_parquet = load_pairs(parquet, name="p")
    assert len(from_parquet) == 2 and from_parquet.name == "p"
    assert from_parquet[0] == first
    assert from_parquet[1] == from_jsonl[1]


def test_pairs_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n{not json}\n')
    with pytest.raises(InputError, match="bad.jsonl:2"):
        load_pairs(bad)
    bad.write_text('{"query": "q"}\n')
    with pytest.raises(InputError, match="example 0.*'positive'"):
        load_pairs(bad)[0]
    with pytest.raises(InputError, match="not found"):
        load_pairs(tmp_path / "missing.jsonl")


def test_mmeb_layout_strips_placeholders_reads_images_and_caps(tmp_path, images):
    root = tmp_path / "MMEB-train"
    (root / "images" / "VOC2007").mkdir(parents=True)
    images[1].save(root / "images" / "VOC2007" / "a.png")
    rows = [
        {"qry": "<|image_1|>\nRepresent the given image for classification", "qry_image_path": "images/VOC2007/a.png",
         "pos_text": "dog", "pos_image_path": "", "neg_text": "cat", "neg_image_path": ""}
        for _ in range(5)
    ]
    (root / "VOC2007").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "VOC2007" / "train-00000.parquet")
    embedded = [{"qry": "a caption", "pos_text": "<|image_1|>", "pos_image": {"bytes": _png_bytes(images[2]), "path": None},
                 "neg_text": "", "neg_image_path": ""}] * 3
    (root / "MSCOCO_t2i").mkdir()
    pq.write_table(pa.Table.from_pylist(embedded), root / "MSCOCO_t2i" / "train.parquet")

    sources = load_mmeb_train(root, {"VOC2007": {"weight": 0.5, "max_samples": 2}, "MSCOCO_t2i": {}})
    voc, coco = sources
    assert (len(voc), voc.weight, len(coco)) == (2, 0.5, 3)
    example = voc[0]
    assert example.query.text == "Represent the given image for classification"  # instruction kept, placeholder gone
    assert example.query.images == (root / "images" / "VOC2007" / "a.png",)
    assert example.positive.text == "dog" and example.negatives[0].text == "cat"
    picture = coco[0].positive
    assert picture.text is None and picture.images[0].size == images[2].size  # decoded when read
    assert coco[0].negatives == ()  # empty neg columns: no hard negative
    assert [s.name for s in load_mmeb_train(root)] == ["MSCOCO_t2i", "VOC2007"]  # every subset folder
    with pytest.raises(InputError, match="A-OKVQA"):
        DataSpec(path=str(root), format="mmeb", subsets="moca").load()
    # the official moca_data_ratios_v3_nommE5.yaml, as transcribed in the research notes
    official = (
        "A-OKVQA 1.0/50k, CIRR 1.0/50k, ChartQA 1.0/50k, DocVQA 1.0/50k, HatefulMemes 0.5/10k, ImageNet_1K 1.0/100k, "
        "InfographicsVQA 1.0/50k, MSCOCO 2.0/100k, MSCOCO_i2t 1.0/100k, MSCOCO_t2i 1.0/100k, N24News 1.0/50k, "
        "NIGHTS 0.5/50k, OK-VQA 0.5/10k, SUN397 0.5/10k, VOC2007 0.5/10k, VisDial 1.0/50k, Visual7W 1.0/50k, "
        "VisualNews_i2t 1.0/100k, VisualNews_t2i 1.0/100k, WebQA 1.0/50k, ArxivQA 1.0/50k, InfoSeek_it2it 1.0/50k, "
        "InfoSeek_it2t 1.0/50k, TAT-DQA 1.0/50k, tevatron_colpali 5.0/all, visrag_ind 5.0/all"
    )
    expected = {}
    for entry in official.split(", "):
        name, spec = entry.split(" ")
        weight, cap = spec.split("/")
        expected[name] = (float(weight), None if cap == "all" else int(cap[:-1]) * 1000)
    assert {k: (v.weight, v.max_samples) for k, v in MOCA_MIXTURE.items()} == expected


def test_colpali_layout_skips_rows_without_query(tmp_path, images):
    rows = [
        {"query": "what is the revenue?", "image": {"bytes": _png_bytes(images[0]), "path": "p1.png"}, "image_filename": "p1"},
        {"query": None, "image": {"bytes": _png_bytes(images[1]), "path": "p2.png"}, "image_filename": "p2"},
        {"query": "who signed?", "image": None, "image_filename": "pages/p3.png"},
    ]
    path = tmp_path / "colpali.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    source = load_colpali_train(path)
    assert len(source) == 2
    assert source[0].query.text == "what is the revenue?" and source[0].positive.images[0].size == images[0].size
    assert source[1].positive.images == (tmp_path / "pages" / "p3.png",)


def _mixture(sizes: dict[str, int], weights: dict[str, float] | None = None) -> TrainingMixture:
    from metaembed.training.examples import TrainingExample, TrainingSource
    from metaembed.model.items import Item

    sources = []
    for name, size in sizes.items():
        records = [{"q": f"{name} {i}"} for i in range(size)]
        convert = lambda r: TrainingExample(Item(text=r["q"]), Item(text=r["q"]))  # noqa: E731
        sources.append(TrainingSource(name, records, convert, weight=(weights or {}).get(name, 1.0)))
    return TrainingMixture(sources)


def test_sampler_draws_each_batch_from_one_source_deterministically():
    mixture = _mixture({"a": 40, "b": 20, "tiny": 3}, {"a": 1.0, "b": 3.0})
    with pytest.warns(UserWarning, match="tiny"):
        sampler = SourceBatchSampler(mixture, batch_size=4, seed=1)
    assert len(sampler) == 40 // 4 + 20 // 4
    batches = list(sampler)
    sources = []
    for batch in batches:
        names = {mixture[i].query.text.split()[0] for i in batch}
        assert len(batch) == 4 and len(names) == 1 and len(set(batch)) == 4
        sources.append(names.pop())
    assert batches == list(sampler)  # same seed and epoch, same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    # weights are sampling probabilities: b (weight 3) gets ~3/4 of many batches
    counts = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        counts.update(mixture[b[0]].query.text.split()[0] for b in sampler)
    assert 0.65 < counts["b"] / sum(counts.values()) < 0.85
    with pytest.raises(InputError, match="full batch"):
        SourceBatchSampler(_mixture({"a": 3}), batch_size=4)
    with pytest.raises(InputError, match="distinct names"):
        TrainingMixture(_mixture({"a": 3}).sources * 2)


def test_collator_chunks_and_caps_negatives(tiny_qwen2_vl, images):
    from metaembed.training.examples import TrainingExample
    from metaembed.model.items import Item

    examples = [
        TrainingExample(Item(text="red square"), Item(images=(images[0],)), (Item(text="blue"), Item(text="green"))),
        TrainingExample(Item(text="green thing", instruction="Find it"), Item(text="grass", images=(images[1],)),
                        (Item(text="sky"),)),
        TrainingExample(Item(text="a dark page"), Item(text="night"), (Item(text="day"), Item(text="noon"))),
    ]
    whole = ContrastiveCollator(tiny_qwen2_vl, num_negatives=2)(examples)
    assert whole["num_negatives"] == 1  # capped by the example with a single negative
    assert [len(whole[k]) for k in ("query", "positive", "negative")] == [1, 1, 1]
    chunked = ContrastiveCollator(tiny_qwen2_vl, num_negatives=1, chunk_size=2)(examples)
    assert [len(chunked[k]) for k in ("query", "positive", "negative")] == [2, 2, 2]
    # chunking must not change the embeddings (left padding + attention mask)
    with torch.no_grad():
        full = tiny_qwen2_vl(whole["positive"][0], "candidate")
        parts = torch.cat([tiny_qwen2_vl(chunk, "candidate") for chunk in chunked["positive"]])
    torch.testing.assert_close(parts, full, rtol=1e-4, atol=1e-5)
    assert "negative" not in ContrastiveCollator(tiny_qwen2_vl, num_negatives=0)(examples)
    with pytest.raises(InputError, match="chunk_size"):
        ContrastiveCollator(tiny_qwen2_vl, chunk_size=0)


def test_data_formats_are_registered_objects_and_a_plug_in_is_one_more_format(tmp_path) -> None:
    from metaembed.errors import InputError
    from metaembed.training.public_sets import DATA_FORMATS, DataFormat

    assert DATA_FORMATS.names()[:3] == ["pairs", "mmeb", "colpali"]
    with pytest.raises(InputError, match=r"unknown training data format 'csv'; expected one of \['pairs', 'mmeb', 'colpali'"):
        DataSpec(path=str(tmp_path), format="csv").load()

    class Seen(DataFormat):
        name = "toy-seen"

        def load(self, spec, seed):
            return [(spec.path, seed)]  # whatever its sources are: DataSpec hands them on

    DATA_FORMATS.register(Seen())
    try:
        assert DataSpec(path="x", format="toy-seen").load(seed=3) == [("x", 3)]
    finally:
        DATA_FORMATS.unregister("toy-seen")
