"""The budget sweep against a naive reference, its files, and resumption from the cache."""

from __future__ import annotations

import json

import pytest
import pytrec_eval
import torch
from PIL import Image

from metaembed.budget import parse_ladder
from metaembed.errors import BudgetError, InputError
from metaembed.evaluation import SweepResult, run_sweep
from metaembed.evaluation.kinds import Benchmark

LADDER = "1,1 2,4 4,8"


def naive_maxsim(queries: torch.Tensor, candidates: torch.Tensor, r_q: int, r_c: int) -> torch.Tensor:
    """The definition in float64: sum over query vectors of the max over candidate vectors."""
    similarity = torch.einsum("qid,cjd->qcij", queries[:, :r_q].double(), candidates[:, :r_c].double())
    return similarity.max(dim=3).values.sum(dim=2)


def naive_precision_at_1(encoder, task, r_q: int, r_c: int) -> float:
    queries = encoder.encode_queries(task.queries, batch_size=4)
    candidates = encoder.encode_candidates(task.candidates, batch_size=4)
    scores = naive_maxsim(queries, candidates, r_q, r_c)
    hits = 0
    for row, candidate_list in enumerate(task.candidate_lists):
        positive = scores[row, candidate_list[0]]
        distractors = [scores[row, c] for c in candidate_list[1:] if c != candidate_list[0]]
        hits += all(positive > d for d in distractors)  # a tie is a miss
    return hits / len(task.candidate_lists)


def test_mmeb_sweep_matches_naive_reference_and_writes_reports(mmeb_root, tmp_path, encoder_class):
    encoder = encoder_class()
    result = run_sweep(encoder, mmeb_root, out_dir=tmp_path / "out", ladder=LADDER, batch_size=2,
                       model_name="fake-mmeb")
    assert result.benchmark == "mmeb" and result.headline_metric == "precision@1"
    assert list(result.datasets) == ["ImageNet-1K", "VisDial", "MSCOCO_t2i"]
    bench = Benchmark.open(mmeb_root)
    reference = encoder_class()
    for name in result.datasets:
        task = bench.load(name)
        for budget in parse_ladder(LADDER):
            expected = naive_precision_at_1(reference, task, budget.r_q, budget.r_c)
            assert result.datasets[name][str(budget)]["precision@1"] == pytest.approx(expected), (name, budget)
    # The fixture's third ImageNet query has a wrong positive: at most 2 of 3 can be right.
    assert result.datasets["ImageNet-1K"]["4,8"]["precision@1"] == pytest.approx(2 / 3)
    assert result.datasets["MSCOCO_t2i"]["4,8"]["precision@1"] == pytest.approx(1.0)
    # Averages: meta-tasks present, IND/OOD, Overall as plain means over data sets.
    assert list(result.groups) == ["Classification", "Retrieval", "IND", "Overall"]
    for budget in result.ladder:
        values = [result.datasets[n][budget]["precision@1"] for n in result.datasets]
        assert result.groups["Overall"][budget] == pytest.approx(sum(values) / 3)
        assert result.groups["Retrieval"][budget] == pytest.approx((values[1] + values[2]) / 2)
    assert result.costs["4,8"] == {"scoring_flops_per_pair": 2 * 4 * 8 * 128, "index_bytes_per_candidate": 8 * 128 * 2}

    out = tmp_path / "out"
    assert SweepResult.load(out / "results.json") == result
    markdown = (out / "results.md").read_text()
    assert "| Data set | (1,1) | (2,4) | (4,8) |" in markdown
    assert "| **Classification** |" in markdown
    imagenet = f"| ImageNet-1K (IND) | {100 * result.datasets['ImageNet-1K']['1,1']['precision@1']:.1f} |"
    assert imagenet in markdown
    # Paper numbers sit beside ours over the union of both ladders.
    assert "| Model | (1,1) | (2,4) | (4,8) | (8,16) | (16,64) |" in markdown
    assert "| MetaEmbed-7B (paper) | 71.3 | – | – | 74.3 | 76.6 |" in markdown
    overall = result.groups["Overall"]
    assert f"| fake-mmeb (this run) | {100 * overall['1,1']:.1f} | {100 * overall['2,4']:.1f} |" in markdown
    assert "| Scoring FLOPs per query-candidate pair | 256 | 2.05 k | 8.19 k |" in markdown
    assert "| Index bytes per candidate (float16) | 256B | 1 KiB | 2 KiB |" in markdown
    with Image.open(out / "results.png") as plot:
        assert plot.format == "PNG" and plot.width > 600


def _retrieval_reference(encoder, task, r_q: int, r_c: int) -> float:
    queries = encoder.encode_queries(task.queries, batch_size=4)
    corpus = encoder.encode_candidates(task.corpus, batch_size=4)
    scores = naive_maxsim(queries, corpus, r_q, r_c)
    run: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(task.query_ids):
        docs: dict[str, float] = {}
        for column, doc_id in enumerate(task.doc_ids):
            if task.ignore_identical_ids and doc_id == qid:
                continue
            docs[doc_id] = max(docs.get(doc_id, float("-inf")), float(scores[row, column]))
        run[qid] = docs
    per_query = pytrec_eval.RelevanceEvaluator(task.qrels, {"ndcg_cut.5"}).evaluate(run)
    return sum(v["ndcg_cut_5"] for v in per_query.values()) / len(task.qrels)


@pytest.mark.parametrize("layout", ["vidore_v1_root", "vidore_v2_root", "beir_root"])
def test_retrieval_sweeps_match_naive_reference(layout, request, tmp_path, encoder_class):
    root = request.getfixturevalue(layout)
    result = run_sweep(encoder_class(), root, out_dir=tmp_path / "out", ladder="1,1 4,8")
    assert result.headline_metric == "ndcg@5"
    bench = Benchmark.open(root, image_dir=tmp_path / "images")
    assert list(result.datasets) == bench.dataset_names()
    for name in result.datasets:
        task = bench.load(name)
        for r_q, r_c in [(1, 1), (4, 8)]:
            expected = _retrieval_reference(encoder_class(), task, r_q, r_c)
            got = result.datasets[name][f"{r_q},{r_c}"]
            assert got["ndcg@5"] == pytest.approx(expected, abs=1e-6), (name, r_q, r_c)
            assert set(got) == {"ndcg@1", "ndcg@5", "ndcg@10", "recall@1", "recall@5", "recall@10", "mrr"}
    assert result.groups["Average"]["4,8"] == pytest.approx(
        sum(result.datasets[n]["4,8"]["ndcg@5"] for n in result.datasets) / len(result.datasets)
    )
    assert (tmp_path / "out" / "results.md").read_text().count("| **Average** |") == 1


def test_vidore_v1_colour_pages_are_found(vidore_v1_root, tmp_path, encoder_class):
    # The fake encoder matches "blue" text to blue pixels: every question finds its page.
    result = run_sweep(encoder_class(), vidore_v1_root, out_dir=tmp_path / "out", ladder="4,8")
    assert result.datasets["docvqa_test_subsampled"]["4,8"]["recall@1"] == pytest.approx(1.0)


class InterruptedEncoder:
    """Wraps an encoder and fails on its ``fail_at``-th call, like a killed job."""

    def __init__(self, inner, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.num_query_tokens = inner.num_query_tokens
        self.num_candidate_tokens = inner.num_candidate_tokens
        self.config = inner.config

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt

    def encode_queries(self, items, **kwargs):
        self._maybe_fail()
        return self.inner.encode_queries(items, **kwargs)

    def encode_candidates(self, items, **kwargs):
        self._maybe_fail()
        return self.inner.encode_candidates(items, **kwargs)


def test_interrupted_sweep_resumes_without_reencoding(mmeb_root, tmp_path, encoder_class):
    options = dict(ladder=LADDER, batch_size=1, shard_size=1, model_name="fake", cache_dir=tmp_path / "cache")
    first = InterruptedEncoder(encoder_class(), fail_at=6)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(first, mmeb_root, out_dir=tmp_path / "a", **options)
    # ImageNet-1K: 3 queries then 4 candidates, one shard (one call) each; the 6th call failed.
    resumed = encoder_class()
    result = run_sweep(resumed, mmeb_root, out_dir=tmp_path / "a", **options)
    total_queries = 3 + 1 + 2
    total_candidates = 4 + 2 + 4
    assert resumed.encoded["queries"] == total_queries - 3
    assert resumed.encoded["candidates"] == total_candidates - 2
    # A third run encodes nothing, and the numbers equal a fresh uninterrupted run.
    again = encoder_class()
    assert run_sweep(again, mmeb_root, out_dir=tmp_path / "a", **options).datasets == result.datasets
    assert again.encoded == {"queries": 0, "candidates": 0}
    fresh = run_sweep(encoder_class(), mmeb_root, out_dir=tmp_path / "b", ladder=LADDER, model_name="fake")
    assert fresh.datasets == result.datasets


def test_cache_is_keyed_by_model_and_data(mmeb_root, tmp_path, encoder_class):
    options = dict(ladder="1,1", out_dir=tmp_path / "out", datasets=["VisDial"])
    run_sweep(encoder_class(), mmeb_root, **options)
    other = encoder_class(dim=16)  # a different config: nothing may be reused
    run_sweep(other, mmeb_root, **options)
    assert other.encoded == {"queries": 1, "candidates": 2}
    # Changing the data file invalidates that data set's cache.
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = mmeb_root / "VisDial" / "test-00000-of-00001.parquet"
    table = pq.read_table(path).to_pydict()
    table["qry_text"] = ["Represent the given dialogue about an image: Q: which colour? A: red"]
    pq.write_table(pa.table(table), path)
    changed = encoder_class(dim=16)
    run_sweep(changed, mmeb_root, **options)
    assert changed.encoded == {"queries": 1, "candidates": 0}


def test_corrupt_or_missing_cache_shard_is_named(mmeb_root, tmp_path, encoder_class):
    options = dict(ladder="1,1", out_dir=tmp_path / "out", datasets=["VisDial"], model_name="fake")
    run_sweep(encoder_class(), mmeb_root, **options)
    shard = next((tmp_path / "out" / "cache").glob("*/candidates-*/shard-00000.safetensors"))
    shard.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match=r"cached shard .*candidates-\w+/shard-00000\.safetensors is corrupt"):
        run_sweep(encoder_class(), mmeb_root, **options)
    shard.unlink()
    with pytest.raises(InputError, match=r"shard-00000\.safetensors .* is missing"):
        run_sweep(encoder_class(), mmeb_root, **options)
    manifest = shard.parent / "manifest.json"
    manifest.write_text("{")
    with pytest.raises(InputError, match=r"cache manifest .*manifest\.json is unreadable"):
        run_sweep(encoder_class(), mmeb_root, **options)


def test_sweep_rejects_bad_arguments(mmeb_root, tmp_path, encoder_class):
    with pytest.raises(BudgetError, match="asks for 16 candidate vectors but the model has only 8"):
        run_sweep(encoder_class(), mmeb_root, out_dir=tmp_path, ladder="1,16")
    with pytest.raises(InputError, match="give out_dir or cache_dir"):
        run_sweep(encoder_class(), mmeb_root, out_dir=None, ladder="1,1")
    with pytest.raises(InputError, match="benchmark folder not found"):
        run_sweep(encoder_class(), tmp_path / "missing", out_dir=tmp_path, ladder="1,1")
    with pytest.raises(InputError, match=r"results file not found"):
        SweepResult.load(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"benchmark": "mmeb"}))
    with pytest.raises(InputError, match="not a sweep results file"):
        SweepResult.load(tmp_path / "bad.json")


def test_default_ladder_is_cut_to_the_model(mmeb_root, tmp_path, encoder_class):
    result = run_sweep(encoder_class(num_query_tokens=4, num_candidate_tokens=6), mmeb_root,
                       out_dir=tmp_path, datasets=["VisDial"])
    assert result.ladder == ["1,1", "2,4", "4,6"]


@pytest.fixture(scope="module")
def tiny():
    from metaembed.model.testing import tiny_model

    return tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8)


def test_full_sweep_on_a_tiny_metaembed_model(tiny, mmeb_root, vidore_v1_root, tmp_path):
    # float32 cache: the reference below is exact, and random weights give near-ties.
    result = run_sweep(tiny, mmeb_root, out_dir=tmp_path / "mmeb", batch_size=4, cache_dtype="float32")
    assert result.ladder == ["1,1", "2,4", "4,8"]
    bench = Benchmark.open(mmeb_root)
    for name in result.datasets:
        task = bench.load(name)
        for budget in parse_ladder(result.ladder):
            expected = naive_precision_at_1(tiny, task, budget.r_q, budget.r_c)
            assert result.datasets[name][str(budget)]["precision@1"] == pytest.approx(expected, abs=1e-9)
    for filename in ("results.json", "results.md", "results.png"):
        assert (tmp_path / "mmeb" / filename).stat().st_size > 0
    assert SweepResult.load(tmp_path / "mmeb" / "results.json").groups == result.groups

    retrieval = run_sweep(tiny, vidore_v1_root, out_dir=tmp_path / "vidore", ladder="1,1 4,8", cache_dtype="float32")
    task = Benchmark.open(vidore_v1_root, image_dir=tmp_path / "pages").load("docvqa_test_subsampled")
    for r_q, r_c in [(1, 1), (4, 8)]:
        expected = _retrieval_reference(tiny, task, r_q, r_c)
        assert retrieval.datasets["docvqa_test_subsampled"][f"{r_q},{r_c}"]["ndcg@5"] == pytest.approx(expected, abs=1e-6)


def test_model_identity_separates_weights(tiny):
    from metaembed.evaluation.cache import model_identity, model_key
    from metaembed.model.testing import tiny_model

    same = tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8)
    other = tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8, seed=1)
    assert model_key(model_identity(same)) == model_key(model_identity(tiny))
    assert model_key(model_identity(other)) != model_key(model_identity(tiny))


def test_blockwise_top_rows_equal_the_full_ranking():
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(5, 4, 16, generator=generator), dim=-1)
    corpus = torch.nn.functional.normalize(torch.randn(300, 8, 16, generator=generator), dim=-1)
    from metaembed.budget import Budget
    from metaembed.evaluation.sweep import top_rows

    full = naive_maxsim(queries, corpus, 2, 4).float()
    expected_values, expected_rows = full.topk(7, dim=1)
    # 5 queries * 4 bytes * 16 rows per block: many blocks, each merged into the running top 7.
    values, rows = top_rows(queries, corpus, Budget(2, 4), keep=7, block_bytes=5 * 4 * 16)
    assert torch.equal(rows, expected_rows)
    torch.testing.assert_close(values, expected_values)


def test_cache_reports_what_it_holds(tmp_path, encoder_class):
    from metaembed.evaluation.cache import EmbeddingCache
    from metaembed.model.items import to_items

    items = to_items(["red", "green", "blue"])
    encoder = encoder_class()
    identity = {"name": "fake", "shape": (4, 8)}  # a tuple: must still match its JSON form
    cache = EmbeddingCache.for_items(tmp_path, identity, "queries", items, shard_size=2, dtype="float32")
    assert cache.cached_items() == 0
    first = cache.get_or_encode(items, lambda batch: encoder.encode_queries(batch, batch_size=2))
    assert first.shape == (3, 4, 128) and cache.encode_calls == 2
    again = EmbeddingCache.for_items(tmp_path, identity, "queries", items, shard_size=2, dtype="float32")
    assert again.cached_items() == 3
    assert torch.equal(again.get_or_encode(items, lambda batch: 1 / 0), first)
    other = to_items(["red", "green", "yellow"])
    assert EmbeddingCache.for_items(tmp_path, identity, "queries", other, shard_size=2).cached_items() == 0
    with pytest.raises(InputError, match="opened for other items"):
        again.get_or_encode(other, lambda batch: 1 / 0)
    with pytest.raises(InputError, match="cache dtype must be one of"):
        EmbeddingCache.for_items(tmp_path, identity, "queries", items, dtype="int4")


def test_cache_rejects_a_wrong_encoder_output(tmp_path):
    from metaembed.evaluation.cache import EmbeddingCache
    from metaembed.model.items import to_items

    items = to_items(["a", "b"])
    cache = EmbeddingCache.for_items(tmp_path, {"name": "x"}, "queries", items)
    with pytest.raises(InputError, match=r"returned \(1, 4\) for 2 items"):
        cache.get_or_encode(items, lambda batch: torch.zeros(1, 4))


@pytest.mark.parametrize("pool, list_length", [(3000, 5), (40, 10)])
def test_candidate_list_scoring_in_blocks_matches_naive(pool, list_length):
    """Small lists from a big pool (gathered per block) and lists covering the pool (scored in place)."""
    from metaembed.budget import Budget
    from metaembed.evaluation.sweep import score_candidate_lists
    from metaembed.evaluation.tasks import CandidateListTask
    from metaembed.model.items import Item

    generator = torch.Generator().manual_seed(pool)
    queries = torch.nn.functional.normalize(torch.randn(300, 4, 8, generator=generator), dim=-1)
    candidates = torch.nn.functional.normalize(torch.randn(pool, 8, 8, generator=generator), dim=-1)
    lists = [torch.randperm(pool, generator=generator)[:list_length].tolist() for _ in range(300)]
    task = CandidateListTask("t", [Item(text="q")] * 300, [Item(text="c")] * pool, lists)
    for r_q, r_c in [(1, 1), (4, 8)]:  # r_q = 1: 1024 queries a block; r_q = 4: 256, two blocks
        scores = naive_maxsim(queries, candidates, r_q, r_c)
        expected = sum(all(scores[i, lst[0]] > scores[i, c] for c in lst[1:]) for i, lst in enumerate(lists)) / 300
        assert score_candidate_lists(task, queries, candidates, Budget(r_q, r_c)) == pytest.approx(expected)
        assert 0.05 < expected < 0.95  # neither trivially all hits nor all misses


def test_a_corpus_shared_by_two_tasks_is_encoded_once(vidore_v2_root, tmp_path, encoder_class):
    encoder = encoder_class()
    result = run_sweep(encoder, vidore_v2_root, out_dir=tmp_path, ladder="1,1")
    assert list(result.datasets) == ["esg_reports_v2", "esg_reports_v2_multilingual"]
    # English queries (2), all queries (3), and the 4-page corpus once.
    assert encoder.encoded == {"queries": 5, "candidates": 4}
    assert len(list((tmp_path / "cache" / "images").iterdir())) == 4


def test_per_query_values_average_to_the_reported_means(beir_root, tmp_path, encoder_class):
    result = run_sweep(encoder_class(), beir_root, out_dir=tmp_path / "out", ladder="1,1 4,8", per_query=True)
    reloaded = type(result).load(tmp_path / "out" / "results.json")
    assert reloaded.per_query == result.per_query
    for name, per_budget in result.per_query.items():
        for budget, metrics in per_budget.items():
            bench = Benchmark.open(beir_root, image_dir=tmp_path / "images")
            assert set(metrics["ndcg@5"]) == {q for q, docs in bench.load(name).qrels.items() if docs}
            for metric, values in metrics.items():
                mean = sum(values.values()) / len(values)
                assert mean == pytest.approx(result.datasets[name][budget][metric], abs=1e-9)
    plain = run_sweep(encoder_class(), beir_root, out_dir=tmp_path / "plain", ladder="1,1")
    assert plain.per_query == {}
