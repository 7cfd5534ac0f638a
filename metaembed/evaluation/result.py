"""The numbers of one budget sweep, and their JSON form."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metaembed.errors import InputError


@dataclass
class SweepResult:
    """All numbers of one sweep. Metric values are fractions in ``[0, 1]``.

    * ``datasets[name][budget][metric]`` — every metric of every data set and budget
      (budgets written ``"r_q,r_c"``).
    * ``groups[label][budget]`` — the headline metric averaged over data sets:
      MMEB meta-tasks, IND, OOD and Overall; "Average" for the others.
    * ``costs[budget]`` — ``scoring_flops_per_pair`` (multiply-adds of one
      query-candidate MaxSim) and ``index_bytes_per_candidate`` (at ``index_dtype``).
    * ``paper[model][budget]`` — published headline numbers, in percent.
    * ``info[name]`` — per data set: meta-task, split, numbers of queries and candidates.
    * ``per_query[name][budget][metric][query_id]`` — every query's value, when the sweep
      was asked for them (``run_sweep(per_query=True)``; retrieval data sets).
    """

    benchmark: str
    model: str
    ladder: list[str]
    headline_metric: str
    datasets: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    paper: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    index_dtype: str = "float16"
    per_query: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepResult":
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON to ``path`` (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SweepResult":
        """Read a ``results.json`` written by :func:`write_report`."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise InputError(f"results file not found: {path}") from None
        except (json.JSONDecodeError, TypeError) as error:
            raise InputError(f"{path} is not a sweep results file ({error})") from None


__all__ = ["SweepResult"]
