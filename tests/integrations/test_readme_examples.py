"""The README's integration examples run as written (a tiny model stands in for `my-model/`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metaembed.index import MultiVectorIndex
from tests.integrations.mteb_helpers import local_task

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Where you already work"
# the one line that would download a data set: the same call on a local task in MTEB's format
MTEB_TASKS = 'mteb.get_tasks(tasks=["Vidore2ESGReportsRetrieval"])'

pytestmark = pytest.mark.usefixtures("no_network")


def _examples() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_an_example_per_integration():
    joined = "\n".join(_examples())
    for library in ("sentence_transformers", "mteb", "lancedb", "qdrant"):
        assert f"import {library}" in joined or f"from {library}" in joined or f", {library}" in joined, library
    assert MTEB_TASKS in joined


def test_readme_examples_run(tiny_qwen2_vl, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_qwen2_vl.save_pretrained("my-model")
    texts = ["a cat on a mat", "a dog in the park", "the quarterly revenue table", "a red square"]
    with MultiVectorIndex.create("docs.index", dim=tiny_qwen2_vl.embedding_dim, num_vectors=8,
                                 metadata={"budgets": "1,1 4,8", "model": "my-model"}) as index:
        index.add([f"t{i}" for i in range(4)], tiny_qwen2_vl.encode_candidates(texts),
                  payloads=[{"text": t} for t in texts])
    task = local_task([{"_id": f"t{i}", "text": t} for i, t in enumerate(texts)],
                      [{"_id": "q0", "text": "where is the cat?"}], {"q0": {"t0": 1}})
    for number, code in enumerate(_examples()):
        code = code.replace(MTEB_TASKS, "[local_task]")
        exec(compile(code, f"README example {number + 1}", "exec"), {"local_task": task})
    shown = capsys.readouterr().out
    assert "tensor([[" in shown  # the MaxSim matrix
    assert re.search(r"^1,1 [0-9.]+$", shown, flags=re.M) and re.search(r"^4,8 [0-9.]+$", shown, flags=re.M)
    searches = re.findall(r"^\[\('t\d', .*\)\]$", shown, flags=re.M)
    assert len(searches) == 3 and len(set(searches)) == 1, shown  # LanceDB, Qdrant and the index agree
