"""The built-in model's results table, generated from the saved sweeps (``<out>/eval/*/results.json``).

Per budget: nDCG@10 and Recall@1 on the held-out manuals, the mean over seeds of each trained
variant, beside (a) MiniLM as sentence-transformers ships it, (b) single-vector MetaEmbed,
(c) NoMMR and (d) token-level late interaction, with paired standard errors of the differences
(per query: the variant's mean over seeds minus the other system's value; SE = sd / sqrt(n)),
index bytes per page, and which targets hold. Writes ``builtin-model.json`` and
``builtin-model.md`` into the results folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from metaembed.budget import parse_ladder
from metaembed.evaluation import SweepResult
from metaembed.index.codecs import embedding_bytes

METRICS = ("ndcg@10", "recall@1")
DATASET = "heldout"


def _per_query(result: SweepResult, budget: str, metric: str) -> dict[str, float]:
    return result.per_query[DATASET][budget][metric]


def _mean_over(results: list[SweepResult], budget: str, metric: str) -> dict[str, float]:
    tables = [_per_query(r, budget, metric) for r in results]
    return {qid: sum(t[qid] for t in tables) / len(tables) for qid in tables[0]}


def paired(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Mean of ``a - b`` over the shared queries and its standard error (``sd / sqrt(n)``)."""
    diffs = [a[q] - b[q] for q in a]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    return {"difference": mean, "se": sd / math.sqrt(n), "queries": n}


def _value(per_query: dict[str, float]) -> float:
    return sum(per_query.values()) / len(per_query)


def collect(out: Path) -> dict[str, Any]:
    """Every number of the report, JSON-ready."""
    evals = out / "eval"
    load = lambda name: SweepResult.load(evals / name / "results.json")  # noqa: E731
    seeds = sorted(int(p.parent.name.rsplit("seed", 1)[1]) for p in evals.glob("mmr-seed*/results.json"))
    have = lambda variant: [s for s in seeds if (evals / f"{variant}-seed{s}" / "results.json").is_file()]  # noqa: E731
    mmr = [load(f"mmr-seed{s}") for s in have("mmr")]
    nommr = [load(f"nommr-seed{s}") for s in have("nommr")]
    single = [load(f"single_vector-seed{s}") for s in have("single_vector")]
    sentence = load("sentence-transformers")
    tokens = load("token-level") if (evals / "token-level" / "results.json").is_file() else None
    untrained = load("untrained") if (evals / "untrained" / "results.json").is_file() else None
    ladder = mmr[0].ladder
    dim = 384
    token_info = json.loads((evals / "token-level" / "lengths.json").read_text()) if tokens else None
    report: dict[str, Any] = {"seeds": have("mmr"), "ladder": ladder, "queries": None, "budgets": {}, "baselines": {}}
    a = {m: _per_query(sentence, "1,1", m) for m in METRICS}
    b = {m: _mean_over(single, "1,1", m) for m in METRICS} if single else None
    d = {m: _per_query(tokens, tokens.ladder[-1], m) for m in METRICS} if tokens else None
    report["queries"] = len(a[METRICS[0]])
    report["pages"] = sum(1 for _ in (out / "heldout" / "corpus.jsonl").open())
    report["baselines"] = {
        "a_sentence_transformers": {m: _value(a[m]) for m in METRICS} | {"index_bytes_per_page": embedding_bytes(1, dim, "float16")},
        "b_single_vector": ({m: _value(b[m]) for m in METRICS} | {"seeds": have("single_vector"),
                             "index_bytes_per_page": embedding_bytes(1, dim, "float16")}) if b else None,
        "d_token_level": ({m: _value(d[m]) for m in METRICS} | {
            "index_bytes_per_page": token_info["mean_vectors_per_page"] * dim * 2,
            "vectors_per_page": token_info["mean_vectors_per_page"]}) if d else None,
    }
    if untrained is not None:
        report["untrained"] = {budget: {m: untrained.datasets[DATASET][budget][m] for m in METRICS} for budget in ladder}
    for budget in ladder:
        row: dict[str, Any] = {"index_bytes_per_page": embedding_bytes(parse_ladder(budget)[0].r_c, dim, "float16")}
        for metric in METRICS:
            mine = _mean_over(mmr, budget, metric)
            entry: dict[str, Any] = {
                "mmr": _value(mine),
                "mmr_per_seed": [r.datasets[DATASET][budget][metric] for r in mmr],
                "vs_a": paired(mine, a[metric]),
            }
            if d:
                entry["vs_d"] = paired(mine, d[metric])
            if b:
                entry["vs_b"] = paired(mine, b[metric])
            if nommr:
                other = _mean_over(nommr, budget, metric)
                entry["nommr"] = _value(other)
                entry["nommr_per_seed"] = [r.datasets[DATASET][budget][metric] for r in nommr]
                entry["vs_nommr"] = paired(mine, other)
            row[metric] = entry
        report["budgets"][budget] = row
    report["targets"] = _targets(report)
    return report


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    ladder = report["ladder"]
    ndcg = [report["budgets"][b]["ndcg@10"]["mmr"] for b in ladder]
    top = report["budgets"][ladder[-1]]["ndcg@10"]
    first = report["budgets"][ladder[0]]["ndcg@10"]
    # None: the comparison was not measured
    beats = lambda row, key: (row[key]["difference"] > 2 * row[key]["se"]) if key in row else None  # noqa: E731
    return {
        "ladder_rises": all(x <= y for x, y in zip(ndcg, ndcg[1:])),
        "largest_budget_beats_a_by_2se": beats(top, "vs_a"),
        "largest_budget_beats_b_by_2se": beats(top, "vs_b"),
        "mmr_beats_nommr_at_1_1_by_2se": beats(first, "vs_nommr"),
    }


def _fmt(entry: dict[str, float]) -> str:
    return f"{entry['difference']:+.3f} ± {entry['se']:.3f}"


def markdown(report: dict[str, Any]) -> str:
    base = report["baselines"]
    lines = [
        "# The built-in model `metaembed-minilm` on held-out manuals",
        "",
        f"{report['queries']} queries over {report['pages']} held-out pages (ten Python libraries' manuals the model never saw: "
        "Flask, Werkzeug, Jinja, Click, Requests, attrs, pytest, Python-Markdown, Babel, setuptools; "
        "all pages of the packaged collection, or an evenly spaced subset of them and their queries). "
        f"MetaEmbed numbers are the mean of {len(report['seeds'])} training seeds ({report['seeds']}); "
        "differences are paired over queries (the variant's per-query mean over seeds minus the other "
        "system), ± one standard error. Generated by `experiments/builtin_report.py` from "
        "`builtin-model.json`; reproduce with `make builtin-model`.",
        "",
        "| budget (r_q,r_c) | index bytes/page | nDCG@10 MMR | NoMMR (c) | MMR − (a) | MMR − (b) | MMR − NoMMR | Recall@1 MMR | NoMMR (c) | MMR − (a) | MMR − NoMMR |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for budget, row in report["budgets"].items():
        n, r = row["ndcg@10"], row["recall@1"]
        lines.append(
            f"| ({budget}) | {row['index_bytes_per_page']:,.0f} | {n['mmr']:.3f} | {n.get('nommr', float('nan')):.3f} | "
            f"{_fmt(n['vs_a'])} | {_fmt(n['vs_b']) if 'vs_b' in n else '–'} | {_fmt(n['vs_nommr']) if 'vs_nommr' in n else '–'} | "
            f"{r['mmr']:.3f} | {r.get('nommr', float('nan')):.3f} | {_fmt(r['vs_a'])} | {_fmt(r['vs_nommr']) if 'vs_nommr' in r else '–'} |"
        )
    lines += [
        "",
        "| baseline | nDCG@10 | Recall@1 | index bytes/page |",
        "|---|---|---|---|",
        f"| (a) MiniLM as sentence-transformers ships it (one mean-pooled vector) | {base['a_sentence_transformers']['ndcg@10']:.3f} | "
        f"{base['a_sentence_transformers']['recall@1']:.3f} | {base['a_sentence_transformers']['index_bytes_per_page']:,.0f} |",
    ]
    if base.get("b_single_vector"):
        lines.append(f"| (b) single-vector MetaEmbed (one Meta Token per side, mean of seeds) | {base['b_single_vector']['ndcg@10']:.3f} | "
                     f"{base['b_single_vector']['recall@1']:.3f} | {base['b_single_vector']['index_bytes_per_page']:,.0f} |")
    if base.get("d_token_level"):
        lines.append(f"| (d) token-level late interaction over MiniLM's token states ({base['d_token_level']['vectors_per_page']:.0f} vectors/page) | "
                     f"{base['d_token_level']['ndcg@10']:.3f} | {base['d_token_level']['recall@1']:.3f} | {base['d_token_level']['index_bytes_per_page']:,.0f} |")
    if report.get("untrained"):
        lines += ["", "Untrained model (same architecture, fresh Meta Tokens and LoRA, seed 0), nDCG@10 per budget: "
                  + ", ".join(f"({b}) {v['ndcg@10']:.3f}" for b, v in report["untrained"].items()) + "."]
    lines += ["", "MMR nDCG@10 per seed: " + "; ".join(
        f"({b}) " + " / ".join(f"{v:.3f}" for v in row["ndcg@10"]["mmr_per_seed"]) for b, row in report["budgets"].items()) + "."]
    top = report["budgets"][report["ladder"][-1]]["ndcg@10"]
    if "vs_d" in top:
        lines += ["", f"MMR at the largest budget against (d): {_fmt(top['vs_d'])} nDCG@10."]
    lines += ["", "## Targets", ""]
    for name, held in report["targets"].items():
        verdict = "not measured" if held is None else "holds" if held else "does not hold"
        lines.append(f"- {name.replace('_', ' ')}: **{verdict}**")
    lines.append("")
    lines.append("Index bytes are float16 storage per page (384-d vectors). Every number above comes from the JSON beside this file.")
    return "\n".join(lines) + "\n"


def write_report(out: Path, results_dir: Path) -> dict[str, Path]:
    """Write ``builtin-model.json`` and ``builtin-model.md`` into ``results_dir``."""
    report = collect(out)
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": results_dir / "builtin-model.json", "md": results_dir / "builtin-model.md"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["md"].write_text(markdown(report))
    print(paths["md"].read_text())
    return paths


__all__ = ["collect", "markdown", "paired", "write_report"]
