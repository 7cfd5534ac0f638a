"""The replication script: held-out splits without overlap, claim verdicts from hand-made numbers,
and the whole pipeline (data → train → sweep → report) in a tiny configuration."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import replicate
from experiments.replication_data import Pair, split_by_group, stdlib_pairs, write_task
from experiments.replication_report import chance_ndcg_at_5, claims, render_markdown


def _pairs(groups: dict[str, int]) -> list[Pair]:
    return [Pair(id=f"{g}.{i}", query=f"q {g} {i}", positive=f"d {g} {i}", group=g)
            for g, n in groups.items() for i in range(n)]


def test_split_by_group_keeps_every_group_on_one_side():
    pairs = _pairs({f"m{k}": k % 4 + 1 for k in range(30)})
    train, test = split_by_group(pairs, 0.2, seed=3)
    assert {p.group for p in train}.isdisjoint({p.group for p in test})
    assert sorted(p.id for p in train + test) == sorted(p.id for p in pairs)
    # whole groups are added until the fraction is reached: at most one group (<= 4 pairs) past it
    assert 0.2 * len(pairs) <= len(test) < 0.2 * len(pairs) + 4
    assert split_by_group(pairs, 0.2, seed=3) == (train, test)
    assert split_by_group(pairs, 0.2, seed=4) != (train, test)


def test_stdlib_pairs_read_prose_summaries_and_real_signatures():
    pairs = {p.id: p for p in stdlib_pairs(modules=["math", "json"])}
    assert pairs["math.sqrt"].query == "Return the square root of x."
    assert pairs["math.sqrt"].positive.startswith("math.sqrt(")
    assert pairs["json.dumps"].query == "Serialize ``obj`` to a JSON formatted ``str``."
    assert pairs["json.dumps"].positive.startswith("json.dumps(obj, *, skipkeys=False")
    assert {p.group for p in pairs.values()} == {"math", "json"}
    summaries = [p.query.lower() for p in pairs.values()]
    assert len(summaries) == len(set(summaries))  # ambiguous (shared) summaries are dropped


def test_written_task_has_no_item_in_both_train_and_test(tmp_path):
    task = write_task("glyphs", tmp_path, test_fraction=0.1, max_train=40, max_test=12)
    train = [json.loads(line) for line in task.train_file.read_text().splitlines()]
    queries = [json.loads(line) for line in (task.test_folder / "queries.jsonl").read_text().splitlines()]
    corpus = [json.loads(line) for line in (task.test_folder / "corpus.jsonl").read_text().splitlines()]
    assert (len(train), len(queries), len(corpus)) == (40, 12, 12)
    assert {r["query"] for r in train}.isdisjoint({q["text"] for q in queries})
    assert {r["positive"]["image"].split("/")[-1] for r in train}.isdisjoint({c["image"].split("/")[-1] for c in corpus})
    assert all((task.test_folder / c["image"]).is_file() for c in corpus)


def _results(values: dict[tuple[str, str, int], float], corpus_size: int = 1000) -> dict:
    """A results dict with ndcg@5 = recall@1 = the given value per (variant, budget, seed)."""
    runs: dict[tuple[str, int], dict] = {}
    for (variant, budget, seed), value in values.items():
        run = runs.setdefault((variant, seed), {"task": "t", "variant": variant, "seed": seed, "metrics": {},
                                                  "first_loss": 4.0, "last_loss": 3.0})
        run["metrics"][budget] = {"ndcg@5": value, "recall@1": value}
    settings = json.loads(json.dumps(dataclasses.asdict(replicate.Settings(seeds=(0, 1), tasks=("t",)))))
    return {"settings": settings, "tasks": {"t": {"source": "s", "num_train": 1, "num_test": corpus_size}},
            "environment": {"cpu_threads": 1, "python": "3", "torch": "2"}, "runs": list(runs.values())}


def test_claims_are_computed_from_the_numbers_per_seed():
    values = {}
    for seed, shift in ((0, 0.0), (1, 0.02)):
        values |= {
            ("mmr", "1,1", seed): 0.40 + shift, ("mmr", "2,4", seed): 0.50 + shift, ("mmr", "4,8", seed): 0.60 + shift,
            ("nommr", "1,1", seed): 0.20 + shift, ("nommr", "2,4", seed): 0.45, ("nommr", "4,8", seed): 0.62 + shift,
            ("single_vector", "1,1", seed): 0.55,
            ("naive_multi_vector", "1,1", seed): 0.30, ("naive_multi_vector", "4,8", seed): 0.70 - 2 * shift,
        }
    rows = {row[0].split(".")[0]: row for row in claims(_results(values), "t")}
    assert rows["1"][2].startswith("41.0 → 51.0 → 61.0; (4,8) − (1,1): +20.0 ± 0.0")
    assert rows["1"][3] == "**holds** (2/2 seeds)"
    assert rows["2a"][2].startswith("+20.0 ± 0.0") and rows["2a"][3] == "**holds** (2/2 seeds)"
    # -2 points at the top: more than the 1-point tolerance, so MMR did cost quality here
    assert rows["2b"][2].startswith("-2.0 ± 0.0") and rows["2b"][3].startswith("**does not hold**")
    # MMR (4,8) 60 / 62 vs single 55: +5 / +7
    assert rows["3a"][2] == "+6.0 ± 1.4 (per seed +5.0, +7.0)" and rows["3a"][3] == "**holds** (2/2 seeds)"
    assert rows["3b"][2] == "(1,1) -14.0; (2,4) -4.0; (4,8) +6.0"
    assert rows["3b"][3] == "**does not hold** at (1,1), (2,4)"
    # naive 70 / 66 vs MMR 60 / 62: -10 / -4
    assert rows["4"][2] == "-7.0 ± 4.2 (per seed -10.0, -4.0)" and rows["4"][3] == "**does not hold** (0/2 seeds)"


def test_chance_level_is_the_expected_ndcg_of_a_random_ranking():
    assert chance_ndcg_at_5(1) == 1.0
    # ranks 1..5 equally likely (1/5 each), gains 1/log2(rank + 1)
    assert chance_ndcg_at_5(5) == pytest.approx((1 + 0.63093 + 0.5 + 0.43068 + 0.38685) / 5, abs=1e-5)


def test_claims_near_chance_are_inconclusive_whatever_their_sign():
    values = {("mmr", "1,1", 0): 0.010, ("mmr", "4,8", 0): 0.012, ("nommr", "1,1", 0): 0.001,
              ("nommr", "4,8", 0): 0.011, ("single_vector", "1,1", 0): 0.002}
    # chance with 1000 candidates is 0.29%; 5x that is 1.5%, above MMR's best 1.2%
    rows = claims(_results(values), "t")
    assert all(row[3].startswith("**inconclusive**") for row in rows)
    assert all(row[3].startswith("**holds**") for row in claims(_results(values, corpus_size=100_000), "t")[:2])


def test_report_marks_a_partial_run_and_shows_mean_and_std():
    values = {("mmr", "1,1", 0): 0.30, ("mmr", "1,1", 1): 0.40, ("mmr", "4,8", 0): 0.5, ("mmr", "4,8", 1): 0.5}
    markdown = render_markdown(_results(values), "x.png")
    assert "Partial run: 2 of 8 planned trainings finished" in markdown
    assert "| MetaEmbed + MMR | 35.0 ± 7.1 | 50.0 ± 0.0 |" in markdown


def test_quick_pipeline_trains_evaluates_resumes_and_reports(tmp_path, monkeypatch):
    settings = replicate.Settings.quick()
    settings.tasks, settings.variants, settings.steps = ("glyphs",), ("mmr", "single_vector"), 2
    settings.max_train, settings.max_test = 16, 8
    results_path = tmp_path / "results.json"
    results = replicate.run(settings, tmp_path / "work", results_path)
    by_variant = {r["variant"]: r for r in results["runs"]}
    assert set(by_variant) == {"mmr", "single_vector"}
    assert set(by_variant["mmr"]["metrics"]) == {"1,1", "2,4"}  # the whole ladder of a 2 / 4 Meta Token model
    assert set(by_variant["single_vector"]["metrics"]) == {"1,1"}  # one vector per side: one budget
    for run in results["runs"]:
        for metrics in run["metrics"].values():
            assert 0.0 <= metrics["ndcg@5"] <= 1.0 and 0.0 <= metrics["recall@1"] <= 1.0
    assert json.loads(results_path.read_text())["runs"] == results["runs"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(replicate, "train_variant", no_training)
    assert replicate.run(settings, tmp_path / "work", results_path)["runs"] == results["runs"]
    settings.steps = 3
    with pytest.raises(ValueError, match="other settings"):
        replicate.run(settings, tmp_path / "work", results_path)

    assert replicate.main(["--report-only", "--results", str(results_path), "--report", str(tmp_path / "r.md")]) == 0
    markdown = (tmp_path / "r.md").read_text()
    single = by_variant["single_vector"]["metrics"]["1,1"]["ndcg@5"]
    assert f"| single-vector (1 Meta Token) | {100 * single:.1f} | — |" in markdown
    assert (tmp_path / "r.png").stat().st_size > 0


def test_recipe_trains_every_new_module_fully_and_keeps_minilm_frozen():
    from metaembed.training.run import prepare_parameters

    settings = replicate.Settings.quick()
    model = replicate.build_model("mmr", settings, seed=0)
    prepare_parameters(model, None, replicate.TRAINABLE_MODULES)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    # the pretrained text encoder is exactly what stays frozen; everything that starts random trains
    assert frozen and all(n.startswith("inputs.text_encoder.") for n in frozen)
    assert all(not n.startswith("inputs.text_encoder.") for n in trainable)
    assert {"patch_embedding.weight", "patch_positions", "positions.weight", "inputs.projection.weight"} <= trainable
    assert any(n.startswith("fusion.") for n in trainable)
    assert abs(model.backbone.positions.weight.std().item() - settings.position_init_std) < 0.005
