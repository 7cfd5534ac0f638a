"""The ``metaembed`` command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from metaembed.cli import app, main
from metaembed.retriever import Retriever
from tests.frontdoor_helpers import make_collection, picture, write_jsonl


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("cli"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _commands() -> list[list[str]]:
    import typer.main

    group = typer.main.get_command(app)
    names = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            names.extend([[name, sub] for sub in command.commands])
        else:
            names.append([name])
    return names


def test_every_command_has_help_with_an_example(capsys):
    commands = _commands()
    expected = {"encode", "search", "train", "eval", "bench", "serve", "quickstart",
                "index build", "index add", "index delete", "index info"}
    assert expected <= {" ".join(c) for c in commands}
    for command in commands:
        code, out, _ = run(capsys, *command, "--help")
        assert code == 0, command
        assert "Example" in out, f"{command} --help has no example"
        # every option is explained: no option line without help text after it
        options = [line for line in out.splitlines() if line.strip().startswith("--")]
        assert all(len(line.split(None, 1)) == 2 or line.rstrip().endswith("]") for line in options), options


def test_search_table_and_json(collection, capsys):
    code, out, _ = run(capsys, "search", collection.index, "cats sleeping", "--budget", "2,4", "-k", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "budget 2,4: 3 results"
    assert lines[1].split() == ["rank", "score", "id", "path", "/", "snippet"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2", "3"]
    code, out, _ = run(capsys, "search", collection.index, "cats sleeping", "--budget", "2,4", "-k", "3", "--json")
    data = json.loads(out)
    expected = Retriever.open(collection.index).search("cats sleeping", k=3, budget="2,4")
    assert data["budget"] == "2,4"
    assert [r["id"] for r in data["results"]] == [h.id for h in expected]
    assert [r["id"] for r in data["results"]] == [line.split()[2] for line in lines[2:]]


def test_search_with_image_only(collection, capsys):
    query = collection.docs / "red.png"
    code, out, _ = run(capsys, "search", collection.index, "--image", query, "-k", "7", "--json")
    assert code == 0
    assert len(json.loads(out)["results"]) == 7


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget", "9,9"], "r_q can be 1..4 (the index's ladder: 1,1 2,4 4,8)"),
        (["--budget", "4,80"], "r_c can be 1..8"),
        (["--budget", "four"], "cannot read budget 'four'"),
        (["--image", "missing.png"], "image file not found"),
    ],
)
def test_bad_search_input_exits_2_with_one_line(collection, capsys, argv, message):
    code, out, err = run(capsys, "search", collection.index, "q", *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_index_is_a_clear_error(tmp_path, capsys):
    code, _, err = run(capsys, "search", tmp_path / "none.index", "q")
    assert code == 2 and "no index at" in err


def test_missing_input_creates_no_index(tmp_path, collection, capsys):
    out = tmp_path / "never.index"
    code, _, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", tmp_path / "nothing", "-o", out)
    assert code == 2 and "input not found" in err
    assert not out.exists()


def test_index_build_info_add_delete(tmp_path, collection, capsys):
    out_index = tmp_path / "built.index"
    code, out, _ = run(capsys, "index", "build", "-m", collection.model_dir, "-i", collection.docs, "-o", out_index,
                       "--budgets", "1,1 4,8")
    assert code == 0 and "7 items (7 added, 0 already there)" in out
    code, out, _ = run(capsys, "index", "build", "-m", collection.model_dir, "-i", collection.docs, "-o", out_index)
    assert "7 items (0 added, 7 already there)" in out
    code, out, _ = run(capsys, "index", "info", out_index, "--json")
    info = json.loads(out)
    assert info["budgets"] == ["1,1", "4,8"] and info["size"] == 7
    code, out, _ = run(capsys, "index", "info", out_index)
    assert "items:       7" in out and "4,8" in out
    picture((9, 9, 9), 3).save(tmp_path / "new.png")
    jsonl = write_jsonl(tmp_path / "more.jsonl", [{"id": "new", "image": "new.png"}, {"id": "red.png", "text": "x"}])
    code, out, _ = run(capsys, "index", "add", out_index, "-i", jsonl)
    assert code == 0 and "8 items (1 added)" in out  # red.png was already there: skipped
    code, out, _ = run(capsys, "index", "delete", out_index, "new", "notes.txt")
    assert code == 0 and "6 left" in out
    code, _, err = run(capsys, "index", "delete", out_index, "new")
    assert code == 2 and "not in the index" in err


def test_encode_writes_prefix_nested_embeddings(tmp_path, collection, capsys):
    target = tmp_path / "emb.npz"
    code, out, _ = run(capsys, "encode", "-m", collection.model_dir, "-i", collection.docs, "-o", target)
    assert code == 0
    data = np.load(target)
    assert data["embeddings"].shape[:2] == (7, 8)
    reference = Retriever.open(collection.index).index.vectors(list(data["ids"]))
    np.testing.assert_allclose(data["embeddings"], reference.numpy(), atol=2e-3)


def test_console_script_entry_point_runs(collection):
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from metaembed.cli import main; sys.exit(main())", "search",
         str(collection.index), "q", "--budget", "99,1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: budget 99,1") and "Traceback" not in result.stderr


def test_train_from_yaml_saves_a_loadable_trained_model(tmp_path, collection, capsys):
    import torch
    import yaml

    from metaembed.model import MetaEmbedModel

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"query": f"what is item {i}", "positive": f"item {i} is a thing", "negative": f"unrelated {i}"} for i in range(8)
    ])
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(collection.model_dir), "output_dir": str(tmp_path / "ignored"), "data": [{"path": str(pairs)}],
        "groups": [[1, 1, 1.0], [4, 8, 1.0]], "per_device_batch_size": 4, "max_steps": 50, "warmup_steps": 0,
        "learning_rate": 1e-2, "save_steps": 1000, "lora": {"r": 2, "alpha": 4, "dropout": 0.0},
    }))
    code, out, _ = run(capsys, "train", config, "--output-dir", tmp_path / "run", "--max-steps", "2")
    assert code == 0, out
    final = tmp_path / "run" / "model"
    assert out.strip().endswith(f"trained model saved to {final}")
    before = MetaEmbedModel.from_pretrained(collection.model_dir).meta_tokens.weight
    after = MetaEmbedModel.from_pretrained(final).meta_tokens.weight
    assert not torch.equal(before, after)  # the overrides ran a real (2-step) training
    assert not (tmp_path / "ignored").exists()


def test_eval_writes_a_report_for_a_beir_folder(tmp_path, collection, capsys):
    bench = tmp_path / "beir"
    (bench / "qrels").mkdir(parents=True)
    write_jsonl(bench / "corpus.jsonl", [{"_id": f"d{i}", "text": f"document number {i}"} for i in range(5)])
    write_jsonl(bench / "queries.jsonl", [{"_id": f"q{i}", "text": f"number {i}"} for i in range(3)])
    (bench / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(3)))
    code, out, err = run(capsys, "eval", "-m", collection.model_dir, "-b", bench, "-o", tmp_path / "report",
                         "--ladder", "1,1 4,8")
    assert code == 0, err
    assert (tmp_path / "report" / "results.json").is_file()
    assert "1,1" in out and "4,8" in out


def test_bench_needs_an_existing_script(capsys):
    code, _, err = run(capsys, "bench", "--script", "no_such_benchmark")
    assert code == 2 and "benchmark script" in err and "not found" in err
