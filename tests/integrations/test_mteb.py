"""MTEB runs a local retrieval task per budget, offline, and scores what `metaembed eval` scores.

The task is built by the test in MTEB's own format (datasets + qrels) from the same rows as a
BEIR folder that `metaembed eval` reads; sockets are blocked (the ``no_network`` fixture), so
any attempt of mteb (or the Hub) to reach the network fails the test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.integrations.mteb_helpers import local_task

pytestmark = pytest.mark.usefixtures("no_network")

DOCS = [{"_id": f"d{i}", "title": f"title {i}", "text": f"document number {i} about topic {i % 3}"} for i in range(12)]
QUERIES = [{"_id": f"q{i}", "text": f"which document talks about topic {i % 3} number {i}"} for i in range(6)]
QRELS = {f"q{i}": {f"d{i}": 1, f"d{(i + 3) % 12}": 2} for i in range(6)}
LADDER = "1,1 2,4 4,8"
# metaembed eval's metric names -> MTEB's
METRICS = {"ndcg@1": "ndcg_at_1", "ndcg@5": "ndcg_at_5", "ndcg@10": "ndcg_at_10",
           "recall@1": "recall_at_1", "recall@5": "recall_at_5", "recall@10": "recall_at_10"}


@pytest.fixture(scope="module")
def beir_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("beir") / "local"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in QUERIES) + "\n")
    lines = [f"{q}\t{d}\t{s}\n" for q, judged in QRELS.items() for d, s in judged.items()]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(lines))
    return root


def test_mteb_scores_match_metaembed_eval_at_every_budget(tiny_qwen2_vl, beir_folder, tmp_path):
    from metaembed.cli import main
    from metaembed.integrations.mteb import evaluate

    results = evaluate(tiny_qwen2_vl, [local_task(DOCS, QUERIES, QRELS)], LADDER, cache=None, encode_kwargs={"batch_size": 4},
                       show_progress_bar=False, co2_tracker=False)
    tiny_qwen2_vl.save_pretrained(tmp_path / "model")
    assert main(["eval", "-m", str(tmp_path / "model"), "-b", str(beir_folder), "-o", str(tmp_path / "out"),
                 "--ladder", LADDER, "--batch-size", "4"]) == 0
    ours = json.loads((tmp_path / "out" / "results.json").read_text())["datasets"]["local"]
    assert [str(b) for b in results] == LADDER.split()
    for budget, result in results.items():
        theirs = result.task_results[0].scores["test"][0]
        for our_name, their_name in METRICS.items():
            # MTEB rounds its metrics to 5 decimals
            assert theirs[their_name] == pytest.approx(ours[str(budget)][our_name], abs=1e-5), (budget, our_name)
    # the budgets differ on this random model, so each run really used its own budget
    assert len({result.task_results[0].scores["test"][0]["ndcg_at_10"] for result in results.values()}) > 1


def test_search_backend_is_exact_maxsim_and_reranks(tiny_qwen2_vl):
    from metaembed.integrations.mteb import MetaEmbedSearchIndex

    generator = torch.Generator().manual_seed(3)
    documents = torch.nn.functional.normalize(torch.randn(30, 5, 8, generator=generator), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(4, 3, 8, generator=generator), dim=-1)
    reference = torch.einsum("qid,cjd->qcij", queries, documents).max(-1).values.sum(-1)
    backend = MetaEmbedSearchIndex()
    backend.add_documents(documents[:20].numpy(), [f"d{i}" for i in range(20)])
    backend.add_documents(documents[20:].numpy(), [f"d{i}" for i in range(20, 30)])
    scores, positions = backend.search(queries.numpy(), top_k=5, similarity_fn=None)
    expected = reference.topk(5)
    assert positions == expected.indices.tolist()
    np.testing.assert_allclose(scores, expected.values.numpy(), atol=1e-5)
    ranked = {"a": ["d3", "d17", "d29"], "b": ["d0"], "c": [], "d": ["d5", "d6"]}
    scores, positions = backend.search(queries.numpy(), top_k=2, similarity_fn=None, top_ranked=ranked,
                                       query_idx_to_id=dict(enumerate("abcd")))
    first = reference[0, [3, 17, 29]].topk(2)
    assert positions[0] == first.indices.tolist() and positions[1] == [0] and positions[2] == []
    np.testing.assert_allclose(scores[0], first.values.numpy(), atol=1e-5)
    backend.clear()


def test_encode_reads_beir_files(tiny_qwen2_vl, beir_folder, tmp_path):
    """`metaembed encode` takes a BEIR corpus.jsonl (_id, title + text) as it is."""
    from metaembed.cli import main

    tiny_qwen2_vl.save_pretrained(tmp_path / "model")
    target = tmp_path / "corpus.npz"
    assert main(["encode", "-m", str(tmp_path / "model"), "-i", str(beir_folder / "corpus.jsonl"), "-o", str(target)]) == 0
    with np.load(target) as data:
        assert list(data["ids"]) == [d["_id"] for d in DOCS]
        expected = tiny_qwen2_vl.encode_candidates([f"{d['title']} {d['text']}" for d in DOCS])
        np.testing.assert_allclose(data["embeddings"], expected.numpy(), atol=1e-5)


def test_image_corpus_like_vidore_matches_metaembed_eval(tiny_qwen2_vl, tmp_path):
    """Text queries against page images (ViDoRe's shape): MTEB's image columns reach the vision backbone."""
    from PIL import Image, ImageDraw

    from metaembed.cli import main
    from metaembed.integrations.mteb import evaluate

    root = tmp_path / "pages"
    (root / "qrels").mkdir(parents=True)
    pages, rows = [], []
    for i in range(6):
        page = Image.new("RGB", (48 + 8 * i, 40), (40 * i, 200 - 30 * i, 90))
        ImageDraw.Draw(page).rectangle([4 + 3 * i, 5, 20 + 3 * i, 18], fill=(250, 250 - 40 * i, 10))
        page.save(root / f"p{i}.png")
        pages.append({"_id": f"p{i}", "image": page})
        rows.append({"_id": f"p{i}", "image": f"p{i}.png"})
    queries = [{"_id": f"q{i}", "text": f"the page with mark {i}"} for i in range(4)]
    qrels = {f"q{i}": {f"p{i}": 1, f"p{i + 2}": 1} for i in range(4)}
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, j in qrels.items() for d, s in j.items()))
    ladder = "1,1 4,8"
    results = evaluate(tiny_qwen2_vl, [local_task(pages, queries, qrels)], ladder, cache=None,
                       encode_kwargs={"batch_size": 4}, show_progress_bar=False, co2_tracker=False)
    tiny_qwen2_vl.save_pretrained(tmp_path / "model")
    assert main(["eval", "-m", str(tmp_path / "model"), "-b", str(root), "-o", str(tmp_path / "out"),
                 "--ladder", ladder, "--batch-size", "4"]) == 0
    ours = json.loads((tmp_path / "out" / "results.json").read_text())["datasets"]["pages"]
    for budget, result in results.items():
        theirs = result.task_results[0].scores["test"][0]
        for our_name, their_name in METRICS.items():
            assert theirs[their_name] == pytest.approx(ours[str(budget)][our_name], abs=1e-5), (budget, our_name)
