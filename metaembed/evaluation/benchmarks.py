"""Which benchmark a local folder holds, its data sets, and how to load each.

Four kinds: ``"mmeb"``, ``"vidore-v1"``, ``"vidore-v2"`` and ``"beir"`` (a user's
own collection). :func:`detect_kind` recognises a folder by its files, so users
can point the sweep at a folder without naming its kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metaembed.errors import InputError
from metaembed.evaluation import beir, mmeb, vidore
from metaembed.evaluation.files import parquet_files_below, parquet_schema
from metaembed.evaluation.tasks import Task

KINDS: tuple[str, ...] = ("mmeb", "vidore-v1", "vidore-v2", "beir")

#: The metric each kind reports first (tables and plots).
HEADLINE_METRIC: dict[str, str] = {
    "mmeb": "precision@1",
    "vidore-v1": "ndcg@5",
    "vidore-v2": "ndcg@5",
    "beir": "ndcg@5",
}

_ALIASES = {"vidore": "vidore-v1", "vidore1": "vidore-v1", "vidore2": "vidore-v2", "vidorev1": "vidore-v1",
            "vidorev2": "vidore-v2"}


def normalise_kind(kind: str) -> str:
    """``"ViDoRe_v2"`` -> ``"vidore-v2"``; :class:`InputError` for an unknown kind."""
    key = kind.strip().lower().replace("_", "-")
    key = _ALIASES.get(key.replace("-", ""), key)
    if key not in KINDS:
        raise InputError(f"unknown benchmark kind {kind!r}; expected one of {list(KINDS)}")
    return key


def detect_kind(root: str | Path) -> str:
    """Guess the benchmark kind of ``root`` from its files.

    BEIR folders hold ``corpus.jsonl``; ViDoRe v2 folders ``corpus/ queries/ qrels/``;
    otherwise the first Parquet file's columns tell MMEB (``qry_text``,
    ``tgt_text``) from ViDoRe v1 (``query``, ``image``, ``image_filename``).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"benchmark folder not found: {root}")
    if beir.list_datasets(root):
        return "beir"
    if vidore.is_v2_folder(root) or any(vidore.is_v2_folder(p) for p in root.iterdir() if p.is_dir()):
        return "vidore-v2"
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = parquet_files_below(folder)
        if not files:
            continue
        columns = parquet_schema(files[0]).names
        if mmeb.is_mmeb_table(columns):
            return "mmeb"
        if vidore.is_vidore_v1_table(columns):
            return "vidore-v1"
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
        return HEADLINE_METRIC[self.kind]

    def dataset_names(self) -> list[str]:
        """The data sets present, in the paper's order where it has one."""
        if self.kind == "mmeb":
            names = mmeb.list_datasets(self.root)
        elif self.kind == "vidore-v1":
            names = vidore.list_v1_datasets(self.root)
        elif self.kind == "vidore-v2":
            names = vidore.list_v2_datasets(self.root)
        else:
            names = beir.list_datasets(self.root)
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
        if self.kind == "mmeb":
            return mmeb.load_dataset(self.root, name, image_root=self.image_root)
        # Extracted pages are named by content hash: one folder serves every data set.
        if self.kind == "vidore-v1":
            return vidore.load_v1_dataset(self.root, name, image_dir=self.image_dir)
        if self.kind == "vidore-v2":
            return vidore.load_v2_dataset(self.root, name, image_dir=self.image_dir)
        return beir.load_dataset(self.root, name)


__all__ = ["KINDS", "HEADLINE_METRIC", "Benchmark", "detect_kind", "normalise_kind"]
