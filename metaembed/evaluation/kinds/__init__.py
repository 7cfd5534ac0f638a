"""Benchmark kinds: which benchmark a local folder holds, its data sets, and how to load each.

A kind is a small registered object, one module per benchmark family in this package, like
the backbone families: :mod:`.mmeb` (MMEB), :mod:`.vidore` (ViDoRe v1 and v2) and
:mod:`.beir` (a user's own collection in BEIR's layout). A kind says

``name`` / ``aliases``
    what ``--kind`` accepts (``"vidore-v2"``, ``"ViDoRe_v2"``, ...).
``headline_metric`` / ``headline_group``
    the metric tables and plots report first, and the group average set beside the paper.
``paper``
    the headline numbers the paper publishes for this kind, by model and budget.
``holds(root)`` / ``holds_table(columns)``
    whether a folder is of this kind by its layout, or by the columns of its first Parquet
    file; :func:`detect_kind` asks every kind, so users need not name the kind.
``dataset_names(root)`` / ``load(root, name, image_root=..., image_dir=...)``
    the data sets present, and one of them as a :class:`~metaembed.evaluation.tasks.Task`.
``groups(result)`` / ``sections(result)``
    the data sets averaged together in a sweep's summary, and the sections of its table.

Adding a kind is one new module here with a :class:`BenchmarkKind` subclass and a
``BENCHMARK_KINDS.register(...)`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

from metaembed.errors import InputError
from metaembed.evaluation.files import parquet_files_below, parquet_schema
from metaembed.evaluation.tasks import Task
from metaembed.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from metaembed.evaluation.result import SweepResult


class BenchmarkKind:
    """One benchmark family's layout, data sets and reporting; see the module docstring."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    headline_metric: ClassVar[str] = "ndcg@5"
    headline_group: ClassVar[str] = "Average"
    paper: ClassVar[dict[str, dict[str, float]]] = {}

    def holds(self, root: Path) -> bool:
        """Whether ``root`` has this kind's folder layout (checked before any Parquet columns)."""
        return False

    def holds_table(self, columns: Sequence[str]) -> bool:
        """Whether a Parquet file with these columns is one of this kind's data sets."""
        return False

    def dataset_names(self, root: Path) -> list[str]:
        """The data sets under ``root``, in the paper's order where it has one."""
        raise NotImplementedError

    def load(self, root: Path, name: str, *, image_root: Path | None = None, image_dir: Path | None = None) -> Task:
        """Data set ``name`` of ``root``. ``image_root``: where its images are; ``image_dir``: where
        images embedded in its files are written."""
        raise NotImplementedError

    def groups(self, result: "SweepResult") -> dict[str, list[str]]:
        """Labels and the data sets each label's average covers (by default, one over all)."""
        return {self.headline_group: list(result.datasets)}

    def sections(self, result: "SweepResult") -> list[tuple[str | None, list[str]]]:
        """The data sets of the results table in titled sections (by default, one untitled)."""
        return [(None, list(result.datasets))]

    def notes(self, result: "SweepResult") -> list[str]:
        """Lines the results table ends with (e.g. how much of the benchmark was run)."""
        return []


#: The benchmark kinds by name; see the module docstring for adding one.
BENCHMARK_KINDS: Registry[BenchmarkKind] = Registry("benchmark kind", __name__)


def get_kind(kind: str) -> BenchmarkKind:
    """The kind called ``kind`` or one of its aliases (``"ViDoRe_v2"`` -> ``vidore-v2``)."""
    return BENCHMARK_KINDS.get(normalise_kind(kind))


def normalise_kind(kind: str) -> str:
    """``"ViDoRe_v2"`` -> ``"vidore-v2"``; :class:`InputError` for an unknown kind."""
    key = kind.strip().lower().replace("_", "-")
    for member in (BENCHMARK_KINDS.get(name) for name in BENCHMARK_KINDS.names()):
        if key.replace("-", "") in {alias.replace("-", "") for alias in member.aliases}:
            return member.name
    if key not in BENCHMARK_KINDS:
        raise InputError(f"unknown benchmark kind {kind!r}; expected one of {BENCHMARK_KINDS.names()}")
    return key


def detect_kind(root: str | Path) -> str:
    """Guess the benchmark kind of ``root`` from its files.

    First by layout (BEIR folders hold ``corpus.jsonl``; ViDoRe v2 folders ``corpus/ queries/
    qrels/``); otherwise the first Parquet file's columns of the first folder that has one
    tell MMEB (``qry_text``, ``tgt_text``) from ViDoRe v1 (``query``, ``image``, ``image_filename``).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"benchmark folder not found: {root}")
    kinds = [BENCHMARK_KINDS.get(name) for name in BENCHMARK_KINDS.names()]
    for kind in kinds:
        if kind.holds(root):
            return kind.name
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = parquet_files_below(folder)
        if not files:
            continue
        columns = parquet_schema(files[0]).names
        for kind in kinds:
            if kind.holds_table(columns):
                return kind.name
    raise InputError(
        f"cannot tell which benchmark {root} holds: expected MMEB or ViDoRe v1 Parquet folders, "
        "ViDoRe v2 corpus/queries/qrels folders, or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)"
    )


@dataclass(frozen=True)
class Benchmark:
    """A benchmark folder of a known kind.

    ``image_root`` is MMEB's image folder (default: found under ``root``);
    ``image_dir`` is where ViDoRe's embedded page images are written.
    """

    root: Path
    kind: str
    image_root: Path | None = None
    image_dir: Path | None = None

    @classmethod
    def open(
        cls,
        root: str | Path,
        kind: str | None = None,
        *,
        image_root: str | Path | None = None,
        image_dir: str | Path | None = None,
    ) -> "Benchmark":
        """Open ``root`` as a benchmark of ``kind`` (detected when ``None``)."""
        root = Path(root)
        resolved = normalise_kind(kind) if kind is not None else detect_kind(root)
        return cls(
            root=root,
            kind=resolved,
            image_root=Path(image_root) if image_root is not None else None,
            image_dir=Path(image_dir) if image_dir is not None else None,
        )

    @property
    def headline_metric(self) -> str:
        return BENCHMARK_KINDS.get(self.kind).headline_metric

    def dataset_names(self) -> list[str]:
        """The data sets present, in the paper's order where it has one."""
        names = BENCHMARK_KINDS.get(self.kind).dataset_names(self.root)
        if not names:
            raise InputError(f"no {self.kind} data set found under {self.root}")
        return names

    def select(self, datasets: list[str] | None) -> list[str]:
        """``datasets`` checked against what is present (all when ``None``)."""
        present = self.dataset_names()
        if datasets is None:
            return present
        unknown = [name for name in datasets if name not in present]
        if unknown:
            raise InputError(f"data set(s) {unknown} not found under {self.root}; present: {present}")
        return list(datasets)

    def load(self, name: str) -> Task:
        """Load data set ``name``."""
        return BENCHMARK_KINDS.get(self.kind).load(self.root, name, image_root=self.image_root, image_dir=self.image_dir)


__all__ = ["BenchmarkKind", "BENCHMARK_KINDS", "Benchmark", "detect_kind", "get_kind", "normalise_kind"]
