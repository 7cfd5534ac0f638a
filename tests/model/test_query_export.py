"""The exported query encoder (ONNX + tokenizers) against the model it was exported from."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from metaembed.errors import InputError, QueryExportError
from metaembed.index import MultiVectorIndex
from metaembed.model import MetaEmbedModel
from metaembed.model.builtin import DEFAULT_MODEL, builtin_names
from metaembed.model.items import to_item
from metaembed.model.query_encoder import (
    CONTENT_HASH_LIMIT, GRAPH_FILE, MANIFEST_FILE, WEIGHTS_FILE, ExportedQueryEncoder, export_folder,
    find_query_encoder, fingerprint,
)
from metaembed.model.query_export import export_query_encoder
from metaembed.model.testing import tiny_model
from metaembed.retriever import Retriever, build_index

QUERIES = [
    "which river flows past the old mill",
    "a",
    "Grüße aus Köln: naïve café, 東京",
    {"text": "tax forms", "instruction": "Find the page that answers"},
    " ".join(["long"] * 400),  # cut at the model's limit
]
TEXTS = [f"note {i}: the river {i % 5} passes mill {i * 7 % 11} near town {i % 3}" for i in range(40)]


@pytest.fixture()
def exports(tmp_path, monkeypatch):
    """A fresh export cache for one test."""
    folder = tmp_path / "exports"
    monkeypatch.setenv("METAEMBED_QUERY_ENCODERS", str(folder))
    return folder


@pytest.fixture(scope="module")
def saved_one_way(tmp_path_factory):
    """A tiny one-way BERT model with non-zero LoRA on its Meta Token path, saved and loaded back."""
    model = tiny_model("bert", num_query_tokens=4, num_candidate_tokens=6, meta_attention="one_way",
                       projection_dim=24, max_length=64)
    model.add_lora(r=4)
    with torch.no_grad():  # a fresh LoRA adds zero; give it weight so that skipping it would show
        generator = torch.Generator().manual_seed(3)
        for name, parameter in model.backbone.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    folder = tmp_path_factory.mktemp("one-way") / "model"
    model.save_pretrained(folder)
    return folder, MetaEmbedModel.from_pretrained(folder)


def _same_top_k(model: MetaEmbedModel, exported: ExportedQueryEncoder, k: int = 5) -> None:
    index = MultiVectorIndex.create(None, dim=model.embedding_dim, num_vectors=model.num_candidate_tokens, dtype="float32")
    index.add([str(i) for i in range(len(TEXTS))], model.encode_candidates(TEXTS))
    text_queries = [q for q in QUERIES if isinstance(q, str)]
    reference = index.search(model.encode_queries(text_queries), k=len(TEXTS))
    got = index.search(torch.from_numpy(exported.encode(text_queries)), k=k)
    for hits, every in zip(got, reference):
        # the same top-k; a swap is allowed only between candidates the model scores alike (a tie)
        scores = {hit.id: hit.score for hit in every}
        assert np.allclose([scores[hit.id] for hit in hits], [hit.score for hit in every[:k]], atol=1e-4)
    index.close()


def test_export_matches_the_model_rows_ids_and_ranking(exports, saved_one_way):
    folder, model = saved_one_way
    written = export_query_encoder(model)
    assert written == export_folder(fingerprint(folder)) and written.parent == exports
    exported = find_query_encoder(folder)
    assert exported is not None and exported.num_query_tokens == 4 and exported.embedding_dim == 24
    expected = model.encode_queries(QUERIES).numpy()
    got = exported.encode(QUERIES)
    assert got.shape == expected.shape == (len(QUERIES), 4, 24) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 5e-5
    assert np.abs(exported.encode(QUERIES, r_q=2) - expected[:, :2]).max() < 5e-5
    batch = model.prepare(QUERIES[:1], "query")  # the model's own ids: content, then 4 Meta Token slots
    assert exported.token_ids(to_item(QUERIES[0])) == batch["input_ids"][0, :-4].tolist()
    assert len(exported.token_ids(to_item(QUERIES[-1]))) == 64
    _same_top_k(model, exported)
    with pytest.raises(InputError, match="r_q must be in 1..4"):
        exported.encode(QUERIES, r_q=5)
    with pytest.raises(QueryExportError, match="built in memory"):
        export_query_encoder(tiny_model("bert", meta_attention="one_way"))


def test_a_corrupt_export_is_removed_and_rebuilt(exports, saved_one_way):
    folder, model = saved_one_way
    written = export_query_encoder(model)
    weights = written / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit in the middle of the weights
    weights.write_bytes(bytes(data))
    assert find_query_encoder(folder) is None and not written.exists()  # detected and removed, never used
    rebuilt = export_query_encoder(model)
    assert rebuilt == written and find_query_encoder(folder) is not None

    (written / MANIFEST_FILE).write_text("{not json")
    assert find_query_encoder(folder) is None and not written.exists()
    export_query_encoder(model)
    (written / GRAPH_FILE).write_bytes((written / GRAPH_FILE).read_bytes()[:100])
    assert find_query_encoder(folder) is None
    export_query_encoder(model)
    got = find_query_encoder(folder).encode(QUERIES[:2])
    assert np.abs(got - model.encode_queries(QUERIES[:2]).numpy()).max() < 5e-5


def test_a_changed_model_does_not_find_the_old_export(exports, tmp_path):
    folder = tmp_path / "model"
    first = tiny_model("bert", num_query_tokens=2, num_candidate_tokens=3, meta_attention="one_way", seed=1)
    first.save_pretrained(folder)
    export_query_encoder(MetaEmbedModel.from_pretrained(folder))
    old_key = fingerprint(folder)
    second = tiny_model("bert", num_query_tokens=2, num_candidate_tokens=3, meta_attention="one_way", seed=2)
    second.save_pretrained(folder)  # the same file names and sizes, other Meta Tokens
    assert (folder / "metaembed.safetensors").stat().st_size <= CONTENT_HASH_LIMIT  # hashed by content
    new_key = fingerprint(folder)
    assert new_key != old_key and find_query_encoder(folder) is None
    export_query_encoder(MetaEmbedModel.from_pretrained(folder))
    moved = tmp_path / "moved"
    folder.rename(moved)  # moving the folder keeps its content, so its export still applies
    assert fingerprint(moved) == new_key and find_query_encoder(moved) is not None


@pytest.mark.parametrize("family", ["bert", "qwen2"])  # bidirectional BERT, a causal LM
def test_models_without_an_export_fall_back_to_the_model(exports, tmp_path, family):
    folder = tmp_path / "model"
    tiny_model(family, num_query_tokens=2, num_candidate_tokens=3).save_pretrained(folder)
    model = MetaEmbedModel.from_pretrained(folder)
    with pytest.raises(QueryExportError, match="no exported query path"):
        export_query_encoder(model)
    docs = tmp_path / "docs"
    docs.mkdir()
    for number, text in enumerate(TEXTS[:6]):
        (docs / f"{number}.txt").write_text(text)
    build_index(folder, docs, tmp_path / "idx", progress=False).index.close()
    retriever = Retriever.open(tmp_path / "idx", exported_queries=True)
    hits = retriever.search(QUERIES[0], k=3)  # loads the model, tries the export, still answers
    reference = Retriever.open(tmp_path / "idx").search(QUERIES[0], k=3)
    assert [h.id for h in hits] == [h.id for h in reference]
    assert not exports.exists() or not any(exports.iterdir())  # nothing was exported


def _same_ranking(found: list[tuple[str, float]], reference: dict[str, float], ranked: list[str], tol: float = 1e-4) -> bool:
    """Whether ``found`` ranks as ``ranked`` (reference order, scores in ``reference``), but for swaps of
    near-ties: a different id at a rank must score within ``tol`` of the reference's id there.

    The export reproduces the model's query rows up to float rounding (< 1e-4), which may order two
    candidates scoring that close either way."""
    return all(item == ranked[rank] or abs(reference.get(item, float("inf")) - reference[ranked[rank]]) < tol
               for rank, (item, _) in enumerate(found))


def _cli_search(index, env: dict[str, str]) -> tuple[list[tuple[str, float]], list[str]]:
    """``(id, score)`` found by a fresh 'metaembed search' process, and which of transformers / peft it imported."""
    script = (
        "import json, sys\n"
        "from metaembed.cli import main\n"
        f"code = main(['search', {str(index)!r}, {QUERIES[0]!r}, '-k', '5', '--json'])\n"
        "print(json.dumps(sorted(m for m in ('transformers', 'peft') if m in sys.modules)))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    *answer, imported = done.stdout.strip().splitlines()
    return [(hit["id"], hit["score"]) for hit in json.loads("\n".join(answer))["results"]], json.loads(imported)


def test_cli_search_uses_the_export_without_transformers(exports, tmp_path, saved_one_way):
    folder, model = saved_one_way
    docs = tmp_path / "docs"
    docs.mkdir()
    for number, text in enumerate(TEXTS):
        (docs / f"{number:02d}.txt").write_text(text)
    build_index(folder, docs, tmp_path / "idx", progress=False).index.close()
    hits = Retriever.open(tmp_path / "idx", model).search(QUERIES[0], k=len(TEXTS))
    reference, ranked = {hit.id: hit.score for hit in hits}, [hit.id for hit in hits[:5]]
    env = dict(os.environ, METAEMBED_QUERY_ENCODERS=str(exports))
    found, imported = _cli_search(tmp_path / "idx", env)  # no export yet: the model, then an export
    assert len(found) == 5 and _same_ranking(found, reference, ranked) and imported == ["peft", "transformers"]
    assert find_query_encoder(folder) is not None
    found, imported = _cli_search(tmp_path / "idx", env)
    assert len(found) == 5 and _same_ranking(found, reference, ranked) and imported == []


@pytest.mark.skipif(DEFAULT_MODEL not in builtin_names(), reason="the built-in model is not in this installation")
def test_the_builtin_model_exports_and_ranks_the_same(exports):
    model = MetaEmbedModel.from_pretrained(DEFAULT_MODEL)
    export_query_encoder(model)
    exported = find_query_encoder(DEFAULT_MODEL)
    assert exported is not None
    expected = model.encode_queries(QUERIES).numpy()
    assert np.abs(exported.encode(QUERIES) - expected).max() < 5e-5
    _same_top_k(model, exported)


def test_cli_model_export_writes_the_export_or_says_why_not(exports, tmp_path, saved_one_way, capsys):
    from metaembed.cli import main

    folder, _ = saved_one_way
    assert main(["model", "export", str(folder)]) == 0
    assert str(export_folder(fingerprint(folder))) in capsys.readouterr().out
    other = tmp_path / "causal"
    tiny_model("qwen2", num_query_tokens=2, num_candidate_tokens=3).save_pretrained(other)
    assert main(["model", "export", str(other)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "no exported query path" in error and "\n" not in error
