"""Benchmark kinds are registered objects: a toy kind registered from outside is detected, loaded and swept."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaembed.evaluation import run_sweep
from metaembed.evaluation.kinds import BENCHMARK_KINDS, BenchmarkKind, detect_kind, normalise_kind
from metaembed.evaluation.kinds.beir import load_dataset
from metaembed.evaluation.tasks import RetrievalTask


class Renamed(BenchmarkKind):
    """A toy kind: a folder whose TOY file names the BEIR folder it reads, with its own headline."""

    name = "toy"
    aliases = ("toy-bench",)
    headline_metric = "recall@1"
    headline_group = "Toy mean"
    paper = {"A paper model": {"1,1": 12.5}}

    def holds(self, root: Path) -> bool:
        return (root / "TOY").is_file()

    def dataset_names(self, root: Path) -> list[str]:
        return ["only"]

    def load(self, root: Path, name: str, *, image_root=None, image_dir=None) -> RetrievalTask:
        task = load_dataset(Path((root / "TOY").read_text()))
        return RetrievalTask(name, task.query_ids, task.queries, task.doc_ids, task.corpus, task.qrels)


@pytest.fixture
def toy_kind():
    BENCHMARK_KINDS.register(Renamed())
    yield
    BENCHMARK_KINDS.unregister("toy")


def test_a_registered_toy_kind_is_detected_and_swept(beir_root, tmp_path, encoder_class, toy_kind) -> None:
    toy_root = tmp_path / "toy"
    toy_root.mkdir()
    (toy_root / "TOY").write_text(str(beir_root))
    assert detect_kind(toy_root) == "toy" and normalise_kind("Toy_Bench") == "toy"
    result = run_sweep(encoder_class(), toy_root, out_dir=tmp_path / "out", ladder="1,1 2,4", batch_size=2)
    assert result.benchmark == "toy" and result.headline_metric == "recall@1"
    assert list(result.datasets) == ["only"] and result.paper == {"A paper model": {"1,1": 12.5}}
    assert result.groups == {"Toy mean": {b: result.datasets["only"][b]["recall@1"] for b in ("1,1", "2,4")}}
    assert "## Toy mean beside the paper" in (tmp_path / "out" / "results.md").read_text()
    assert detect_kind(beir_root) == "beir"
