"""Writing a sweep's numbers: JSON, a Markdown table shaped like the paper's, a PNG plot.

The table has one row per data set (MMEB: grouped under their meta-task) and one
column per budget, values in percent with one decimal as in the paper; then the
averages (meta-tasks, IND, OOD, Overall / Average), the published numbers
beside ours, and the cost of each budget (scoring FLOPs per pair, index bytes
per candidate). The plot shows the averages against the budget, the scoring
FLOPs and the index bytes.
"""

from __future__ import annotations

from pathlib import Path

from metaembed.evaluation.kinds import get_kind
from metaembed.evaluation.result import SweepResult

RESULTS_JSON = "results.json"

RESULTS_MARKDOWN = "results.md"
RESULTS_PLOT = "results.png"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _si(value: float, binary: bool = False) -> str:
    """``2048`` -> ``"2.05 k"`` (or ``"2 Ki"`` with ``binary``)."""
    base, prefixes = (1024.0, ["", " Ki", " Mi", " Gi", " Ti"]) if binary else (1000.0, ["", " k", " M", " G", " T"])
    for prefix in prefixes:
        if abs(value) < base or prefix == prefixes[-1]:
            return f"{value:.3g}{prefix}"
        value /= base
    raise AssertionError("unreachable")


def _budget_key(budget: str) -> tuple[int, int]:
    r_q, r_c = budget.split(",")
    return int(r_q), int(r_c)


def _paper_table(result: SweepResult) -> list[str]:
    """Our headline average beside the published one, over our budgets and theirs."""
    label = get_kind(result.benchmark).headline_group
    budgets = sorted(set(result.ladder) | {b for values in result.paper.values() for b in values}, key=_budget_key)
    ours = result.groups.get(label, {})
    lines = [
        "",
        f"## {label} beside the paper ({result.headline_metric} × 100; – = not run / not published)",
        "",
        f"| Model | {_budget_header(budgets)} |",
        "|" + "---|" * (len(budgets) + 1),
        f"| {result.model} (this run) | " + " | ".join(_percent(ours.get(b)) for b in budgets) + " |",
    ]
    for model, values in result.paper.items():
        lines.append(f"| {model} (paper) | " + " | ".join(f"{values[b]:.1f}" if b in values else "–" for b in budgets) + " |")
    return lines


def _budget_header(ladder: list[str]) -> str:
    return " | ".join(f"({b})" for b in ladder)


def _dataset_order(result: SweepResult) -> list[tuple[str | None, list[str]]]:
    """Data sets in the sections the benchmark kind defines (MMEB: by meta-task; one untitled otherwise)."""
    return get_kind(result.benchmark).sections(result)


def markdown_table(result: SweepResult) -> str:
    """The sweep as Markdown (see the module doc for its shape)."""
    metric = result.headline_metric
    ladder = result.ladder
    header = f"| Data set | {_budget_header(ladder)} |"
    rule = "|" + "---|" * (len(ladder) + 1)
    lines = [
        f"# {result.benchmark}: {metric} of {result.model} by budget (r_q, r_c)",
        "",
        f"Values are {metric} × 100. Budgets keep the first r_q query and r_c candidate vectors.",
        "",
        header,
        rule,
    ]
    for section, names in _dataset_order(result):
        if section is not None:
            lines.append(f"| **{section}** |" + " |" * len(ladder))
        for name in names:
            split = result.info[name].get("split")
            label = f"{name} ({split})" if split else name
            values = [_percent(result.datasets[name][b].get(metric)) for b in ladder]
            lines.append(f"| {label} | " + " | ".join(values) + " |")
    lines += ["", "## Averages over data sets", "", header.replace("Data set", "Group", 1), rule]
    for label, values in result.groups.items():
        lines.append(f"| **{label}** | " + " | ".join(_percent(values.get(b)) for b in ladder) + " |")
    notes = get_kind(result.benchmark).notes(result)
    if notes:
        lines += ["", *notes]
    other_metrics = sorted(
        {m for per_budget in result.datasets.values() for values in per_budget.values() for m in values} - {metric}
    )
    if other_metrics:
        lines += ["", "## Other metrics (average over data sets)", "", f"| Metric | {_budget_header(ladder)} |", rule]
        for name in other_metrics:
            row = []
            for b in ladder:
                values = [result.datasets[d][b][name] for d in result.datasets if name in result.datasets[d][b]]
                row.append(_percent(sum(values) / len(values)) if values else "–")
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    if result.paper:
        lines += _paper_table(result)
    if result.costs:
        lines += ["", "## Cost per budget", "", f"| | {_budget_header(ladder)} |", rule]
        flops = [_si(result.costs[b]["scoring_flops_per_pair"]) for b in ladder]
        sizes = [_si(result.costs[b]["index_bytes_per_candidate"], binary=True) + "B" for b in ladder]
        lines.append("| Scoring FLOPs per query-candidate pair | " + " | ".join(flops) + " |")
        lines.append(f"| Index bytes per candidate ({result.index_dtype}) | " + " | ".join(sizes) + " |")
    return "\n".join(lines) + "\n"


def plot(result: SweepResult, path: str | Path) -> Path:
    """Write a PNG: the group averages against budget, scoring FLOPs and index bytes."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    ladder = result.ladder
    flops = [result.costs[b]["scoring_flops_per_pair"] for b in ladder] if result.costs else None
    sizes = [result.costs[b]["index_bytes_per_candidate"] for b in ladder] if result.costs else None
    panels = [("budget (r_q, r_c)", list(range(len(ladder))))]
    if flops is not None and sizes is not None:
        panels += [("scoring FLOPs per query-candidate pair", flops), ("index bytes per candidate", sizes)]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (label, xs) in zip(axes[0], panels):
        for group, values in result.groups.items():
            axis.plot(xs, [100 * values[b] for b in ladder], marker="o", label=group)
        if result.paper and label.startswith("budget"):
            # Published points in black, one marker shape per model, apart from our coloured lines.
            for (model, values), marker in zip(result.paper.items(), "*^sDv"):
                points = [(ladder.index(b), v) for b, v in values.items() if b in ladder]
                if points:
                    axis.scatter(*zip(*points), marker=marker, s=60, color="black",
                                 label=f"{model} (paper)", zorder=3)
        if label.startswith("budget"):
            axis.set_xticks(xs, [f"({b})" for b in ladder])
        else:
            # Log scale with a tick at each budget, labelled by its cost.
            axis.set_xscale("log")
            axis.minorticks_off()
            axis.set_xticks(xs, [_si(x, binary="bytes" in label) for x in xs], rotation=30)
        axis.set_xlabel(label)
        axis.set_ylabel(f"{result.headline_metric} × 100")
        axis.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="small")
    figure.suptitle(f"{result.benchmark}: {result.model}")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(result: SweepResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``results.png`` to ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    json_path = result.save(out_dir / RESULTS_JSON)
    markdown_path = out_dir / RESULTS_MARKDOWN
    markdown_path.write_text(markdown_table(result), encoding="utf-8")
    plot_path = plot(result, out_dir / RESULTS_PLOT)
    return {"json": json_path, "markdown": markdown_path, "plot": plot_path}


__all__ = ["markdown_table", "plot", "write_report", "RESULTS_JSON", "RESULTS_MARKDOWN", "RESULTS_PLOT"]
