"""The ``metaembed`` command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

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
                "index build", "index add", "index sync", "index delete", "index info"}
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


def test_a_build_that_fails_before_its_first_batch_leaves_no_index(tmp_path, collection, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "text": "cats"}\n{"id": "a", "text": "dogs"}\n')
    out = tmp_path / "dup.index"
    code, _, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", rows, "-o", out)
    assert code == 2 and "id 'a' appears twice in the input" in err
    assert not out.exists()  # no half-made index to trip over (or to resume from) next time
    rows.write_text('{"id": "a", "text": "cats"}\n{"id": "b", "text": "dogs"}\n')
    code, out_text, _ = run(capsys, "index", "build", "-m", collection.model_dir, "-i", rows, "-o", out)
    assert code == 0 and len(Retriever.open(out)) == 2


def test_index_build_info_add_delete(tmp_path, collection, capsys):
    out_index = tmp_path / "built.index"
    code, out, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", collection.docs, "-o", out_index,
                         "--budgets", "1,1 4,8")
    assert code == 0 and "7 items; 7 indexed (7 added, 0 updated, 0 unchanged), 1 skipped" in out
    assert err.strip() == "skipped data.bin: unsupported file type .bin"
    code, out, _ = run(capsys, "index", "build", "-m", collection.model_dir, "-i", collection.docs, "-o", out_index)
    assert "7 items; 7 indexed (0 added, 0 updated, 7 unchanged)" in out
    code, out, _ = run(capsys, "index", "info", out_index, "--json")
    info = json.loads(out)
    assert info["budgets"] == ["1,1", "4,8"] and info["size"] == 7
    code, out, _ = run(capsys, "index", "info", out_index)
    assert "items:       7" in out and "4,8" in out
    picture((9, 9, 9), 3).save(tmp_path / "new.png")
    jsonl = write_jsonl(tmp_path / "more.jsonl", [{"id": "new", "image": "new.png"}, {"id": "red.png", "text": "x"}])
    code, out, _ = run(capsys, "index", "add", out_index, "-i", jsonl)
    # red.png was there with other content: replaced (an edit), not skipped
    assert code == 0 and "8 items; 2 indexed (1 added, 1 updated, 0 unchanged)" in out
    assert Retriever.open(out_index).index.payloads(["red.png"])["red.png"]["text"] == "x"
    code, out, _ = run(capsys, "index", "delete", out_index, "new", "notes.txt")
    assert code == 0 and "6 left" in out
    code, _, err = run(capsys, "index", "delete", out_index, "new")
    assert code == 2 and "not in the index" in err


def test_default_ladder_is_cut_to_the_model(tmp_path, collection, capsys):
    """Without --budgets, a model with 4 query / 8 candidate tokens gets 1,1 2,4 4,8 (not an error about 16,64)."""
    out_index = tmp_path / "default.index"
    code, out, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", collection.docs, "-o", out_index)
    assert code == 0, err
    code, out, _ = run(capsys, "index", "info", out_index, "--json")
    assert json.loads(out)["budgets"] == ["1,1", "2,4", "4,8"]
    code, _, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", collection.docs, "-o",
                       tmp_path / "too-big.index", "--budgets", "1,1 16,64")
    assert code == 2 and "budget 16,64 asks for 16 query vectors" in err and not (tmp_path / "too-big.index").exists()


def test_sync_reindexes_edits_adds_new_files_and_removes_vanished_ones(tmp_path, collection, capsys):
    docs = tmp_path / "docs"
    shutil.copytree(collection.docs, docs)
    out_index = tmp_path / "sync.index"
    assert run(capsys, "index", "build", "-m", collection.model_dir, "-i", docs, "-o", out_index)[0] == 0
    before = Retriever.open(out_index).index
    unchanged = before.vectors(["red.png", "report.pdf#page=1"])
    before.close()
    (docs / "notes.txt").write_text("Revenue fell by three percent.\n")  # edited
    (docs / "readme.md").unlink()  # vanished
    (docs / "later.txt").write_text("A file added later.\n")  # new
    code, out, _ = run(capsys, "index", "add", out_index, "-i", docs)  # add: re-index the edit, remove nothing
    assert code == 0 and "8 items; 7 indexed (1 added, 1 updated, 5 unchanged), 1 skipped" in out
    code, out, err = run(capsys, "index", "sync", out_index, "--delete-missing", "--report", tmp_path / "r.json")
    assert code == 0, err
    assert "7 items; 7 indexed (0 added, 0 updated, 7 unchanged), 1 deleted" in out
    assert json.loads((tmp_path / "r.json").read_text())["deleted"] == ["readme.md"]
    retriever = Retriever.open(out_index)
    assert "readme.md" not in retriever.index and "later.txt" in retriever.index
    assert retriever.index.payloads(["notes.txt"])["notes.txt"]["text"] == "Revenue fell by three percent."
    expected = retriever.model.encode_candidates(["Revenue fell by three percent.\n"])
    torch.testing.assert_close(retriever.index.vectors(["notes.txt"]), expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(retriever.index.vectors(["red.png", "report.pdf#page=1"]), unchanged)


def test_sync_commits_once(tmp_path, collection, monkeypatch):
    """Edits, additions and removals reach the index in one upsert (one commit), never in steps."""
    from metaembed.index import MultiVectorIndex
    from metaembed.retriever import build_index, update_index

    docs = tmp_path / "docs"
    shutil.copytree(collection.docs, docs)
    retriever = build_index(collection.model_dir, docs, tmp_path / "once.index", progress=False)
    (docs / "notes.txt").write_text("changed")
    (docs / "readme.md").unlink()
    (docs / "new.txt").write_text("new")
    calls = []
    for name in ("add", "upsert", "delete"):
        original = getattr(MultiVectorIndex, name)
        monkeypatch.setattr(MultiVectorIndex, name, lambda self, *a, _o=original, _n=name, **k: (calls.append(_n), _o(self, *a, **k))[1])
    report = update_index(retriever, docs, delete_missing=True, progress=False)
    assert calls == ["upsert"]
    assert (sorted(report.added), report.updated, report.deleted) == (["new.txt"], ["notes.txt"], ["readme.md"])


def test_a_corrupt_file_amid_good_ones_is_skipped_with_its_reason(tmp_path, collection, capsys):
    docs = tmp_path / "docs"
    shutil.copytree(collection.docs, docs)
    (docs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    whole = (docs / "red.png").read_bytes()
    (docs / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (docs / "empty.txt").write_text("")
    out_index = tmp_path / "bad.index"
    code, out, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", docs, "-o", out_index)
    assert code == 0, err
    assert "7 items; 7 indexed" in out and "4 skipped" in out
    skipped = sorted(line.split(":")[0] for line in err.strip().splitlines())
    assert skipped == ["skipped broken.png", "skipped data.bin", "skipped empty.txt", "skipped truncated.png"]
    code, out, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", docs, "-o", tmp_path / "strict.index",
                         "--strict")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_long_file_is_split_and_its_last_passage_found(tmp_path, capsys):
    from tests.frontdoor_helpers import mirror_text_model

    model_dir = tmp_path / "text-model"
    mirror_text_model(max_length=40).save_pretrained(model_dir)
    docs = tmp_path / "docs"
    docs.mkdir()
    paragraphs = [f"Paragraph {i} tells of river {i} and mountain {i * 7}." for i in range(60)]
    paragraphs.append("The final paragraph names the lighthouse keeper, Ada Quill.")
    text = "\n\n".join(paragraphs)
    (docs / "long.txt").write_text(text)
    (docs / "short.txt").write_text("A short note.")
    out_index = tmp_path / "long.index"
    code, out, err = run(capsys, "index", "build", "-m", model_dir, "-i", docs, "-o", out_index, "--dtype", "float32")
    assert code == 0, err
    retriever = Retriever.open(out_index)
    passages = {i: p for i, p in retriever.index.payloads(retriever.index.ids).items() if i.startswith("long.txt#")}
    assert len(passages) > 10 and "short.txt" in retriever.index  # a text that fits keeps its plain id
    last = max(passages.values(), key=lambda p: p["chars"][1])
    assert last["chars"][1] == len(text)
    start = last["chars"][0]
    assert text[start:].endswith("Ada Quill.")
    code, out, _ = run(capsys, "search", out_index, text[start:], "-k", "3", "--json")
    top = json.loads(out)["results"][0]
    assert top["payload"]["chars"] == last["chars"] and top["id"] == f"long.txt#passage={last['passage']}"
    code, out, _ = run(capsys, "search", out_index, text[start:], "-k", "2", "--per-file", "--json")
    assert [r["payload"]["path"] for r in json.loads(out)["results"]] in (["long.txt", "short.txt"],)


def test_moved_index_and_model_still_search_and_model_can_be_overridden(tmp_path, collection, capsys):
    home = tmp_path / "project"
    shutil.copytree(collection.model_dir, home / "model")
    shutil.copytree(collection.docs, home / "docs")
    assert run(capsys, "index", "build", "-m", home / "model", "-i", home / "docs", "-o", home / "docs.index")[0] == 0
    code, expected, _ = run(capsys, "search", home / "docs.index", "cats", "--json")
    moved = tmp_path / "elsewhere" / "project"
    shutil.move(home, moved)  # index, model and folder move together
    code, out, err = run(capsys, "search", moved / "docs.index", "cats", "--json")
    assert code == 0, err
    assert json.loads(out) == json.loads(expected)
    assert json.loads(out)["results"][0]["payload"]["path"] in {p.relative_to(moved / "docs").as_posix()
                                                                for p in (moved / "docs").rglob("*")}
    code, out, _ = run(capsys, "index", "info", moved / "docs.index", "--json")
    assert json.loads(out)["source"] == str(moved / "docs.index" / "../docs")
    shutil.move(moved / "model", tmp_path / "model-moved")  # now the model alone moves
    code, _, err = run(capsys, "search", moved / "docs.index", "cats")
    assert code == 2 and "model folder not found" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "index", "info", moved / "docs.index")  # info needs no model
    assert code == 0, err
    code, out, err = run(capsys, "search", moved / "docs.index", "cats", "--json", "--model", tmp_path / "model-moved")
    assert code == 0 and json.loads(out) == json.loads(expected)


def test_copy_model_makes_the_index_self_contained(tmp_path, collection, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(collection.model_dir, model_dir)
    out_index = tmp_path / "self.index"
    assert run(capsys, "index", "build", "-m", model_dir, "-i", collection.docs, "-o", out_index, "--copy-model")[0] == 0
    code, expected, _ = run(capsys, "search", out_index, "cats", "--json")
    shutil.rmtree(model_dir)
    code, out, err = run(capsys, "search", out_index, "cats", "--json")
    assert code == 0, err
    assert json.loads(out) == json.loads(expected)
    assert Retriever.open(out_index).index.metadata["model"] == "model"


def test_search_through_a_running_server(collection, capsys):
    """'search --server URL' gives what a local search gives, without loading a model."""
    import socket
    import threading
    import time

    import uvicorn

    from metaembed.serving import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(collection.index), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        code, local, _ = run(capsys, "search", collection.index, "cats sleeping", "-k", "4", "--budget", "2,4", "--json")
        code, remote, err = run(capsys, "search", "--server", url, "cats sleeping", "-k", "4", "--budget", "2,4", "--json")
        assert code == 0, err
        assert json.loads(remote)["results"] == json.loads(local)["results"]
        narrow = ("cats sleeping", "-k", "3", "--budget", "4,8", "--mode", "coarse", "--shortlist", "3", "--json")
        code, local, _ = run(capsys, "search", collection.index, *narrow)
        code, remote, err = run(capsys, "search", "--server", url, *narrow)
        assert code == 0, err
        assert json.loads(remote)["results"] == json.loads(local)["results"]  # the shortlist reaches the server
        code, first, _ = run(capsys, "search", collection.index, "cats sleeping", "-k", "3", "--budget", "1,1", "--json")
        assert {r["id"] for r in json.loads(local)["results"]} == {r["id"] for r in json.loads(first)["results"]}
        code, _, err = run(capsys, "search", "--server", url, "q", "--budget", "9,9")
        assert code == 2 and "answered 422" in err and len(err.strip().splitlines()) == 1
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    code, _, err = run(capsys, "search", "--server", url, "q")
    assert code == 2 and err.startswith(f"error: cannot reach the server at {url}")


def test_encode_writes_prefix_nested_embeddings(tmp_path, collection, capsys):
    target = tmp_path / "emb.npz"
    code, out, _ = run(capsys, "encode", "-m", collection.model_dir, "-i", collection.docs, "-o", target)
    assert code == 0
    data = np.load(target)
    assert data["embeddings"].shape[:2] == (7, 8)
    reference = Retriever.open(collection.index).index.vectors(list(data["ids"]))
    np.testing.assert_allclose(data["embeddings"], reference.numpy(), atol=2e-3)


def _script(*argv: str) -> subprocess.CompletedProcess:
    """The ``metaembed`` console script's entry point (:func:`metaembed.cli.run`) in a fresh process, output piped."""
    return subprocess.run([sys.executable, "-c", "from metaembed.cli import run; run()", *argv],
                          capture_output=True, text=True, timeout=300)


def test_console_script_entry_point_runs(collection):
    result = _script("search", str(collection.index), "q", "--budget", "99,1")
    assert result.returncode == 2
    assert result.stderr.startswith("error: budget 99,1") and "Traceback" not in result.stderr


def test_read_only_commands_skip_teardown_but_lose_no_output(collection, capsys):
    # search and index info end with os._exit after flushing: piped output must still be complete
    code, expected, _ = run(capsys, "search", str(collection.index), "item", "--json", "-k", "3")
    assert code == 0
    result = _script("search", str(collection.index), "item", "--json", "-k", "3")
    assert result.returncode == 0 and json.loads(result.stdout) == json.loads(expected)
    info = _script("index", "info", str(collection.index), "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["size"] == 7
    assert _script("index", "info", str(collection.index / "missing")).returncode == 2


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


BAD_INPUTS = [
    (["search", "{index}", "q", "--budget", "٤,٨"], "cannot read budget"),  # Arabic-Indic digits
    (["search", "{index}", "q", "--budget", "0,1"], "r_q must be at least 1"),
    (["search", "{index}", "q", "-k", "0"], "Invalid value for '-k'"),
    (["search", "{index}", "q", "--mode", "fast"], "--mode must be one of exact, coarse, ann"),
    (["search", "{index}", "q", "--mode", "ann", "--shortlist", "0"], "Invalid value for '--shortlist'"),
    (["cache", "clear", "bogus"], "no cache folder 'bogus'; the folders are quickstart"),
    (["cache", "clear", "--all", "quickstart"], "name the cache folders to clear, or give --all (not both)"),
    (["search", "{index}", "   "], "the query text is empty"),
    (["search", "{index}", "q", "--model", "{tmp}/no-model"], "model folder not found"),
    (["search", "{index}", "q", "--bogus"], "No such option: --bogus"),
    (["search", "--server", "localhost:1", "q"], "must be an http:// or https:// URL"),
    (["index", "build", "-m", "{model}", "-i", "{docs}", "-o", "{tmp}/o1", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["index", "build", "-m", "{model}", "-i", "{docs}", "-o", "{tmp}/o2", "--dtype", "int4"], "unknown index dtype 'int4'"),
    (["index", "build", "-m", "{model}", "-i", "{docs}", "-o", "{tmp}/o3", "--budgets", "1,1 x"], "cannot read budget 'x'"),
    (["index", "build", "-m", "{model}", "-i", "{docs}", "-o", "{tmp}/o4", "--budgets", "١,١"], "cannot read budget"),
    (["index", "build", "-m", "{tmp}/no-model", "-i", "{docs}", "-o", "{tmp}/o5"], "model folder not found"),
    (["index", "add", "{tmp}/none.index", "-i", "{docs}"], "no index at"),
    (["index", "sync", "{index}", "{tmp}/gone"], "input not found"),
    (["index", "delete", "{index}", "nope"], "not in the index"),
    (["index", "info", "{tmp}/none.index"], "no index at"),
    (["encode", "-m", "{model}", "-i", "{docs}", "-o", "{tmp}/e.npz", "--as", "both"], "--as must be 'query' or 'candidate'"),
    (["eval", "-m", "{model}", "-b", "{tmp}/no-bench", "-o", "{tmp}/ev"], "benchmark folder not found"),
    (["train", "{tmp}/none.yaml"], "config file not found"),
    (["serve", "{tmp}/none.index"], "no index at"),
    (["frobnicate"], "No such command 'frobnicate'"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[" ".join(a[:2]) + f" #{n}" for n, (a, _) in enumerate(BAD_INPUTS)])
def test_every_bad_input_is_one_line_and_exit_2(tmp_path, collection, capsys, argv, message):
    filled = [a.format(index=collection.index, model=collection.model_dir, docs=collection.docs, tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, *filled)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    assert not any(p.name.startswith("o") and p.is_dir() for p in tmp_path.iterdir())  # no half-made index


def test_dtype_help_lists_every_storage_type(capsys):
    code, out, _ = run(capsys, "index", "build", "--help")
    assert code == 0 and all(name in out for name in ("float16", "bfloat16", "int8", "float32"))


def test_a_folder_of_screenshots_becomes_searchable_with_a_text_model(tmp_path, capsys):
    """A text-only model says once that pictures are read through OCR, then finds the screenshot by its text."""
    from tests.frontdoor_helpers import mirror_text_model, text_page

    model_dir = tmp_path / "text-model"
    mirror_text_model(max_length=64).save_pretrained(model_dir)
    docs = tmp_path / "shots"
    docs.mkdir()
    text_page(["Quarterly revenue grew", "twelve percent"]).save(docs / "screenshot.png")
    (docs / "other.txt").write_text("Minutes of the garden committee.")
    (docs / "another.txt").write_text("Ferry timetable for the winter season.")
    out_index = tmp_path / "shots.index"
    code, out, err = run(capsys, "index", "build", "-m", model_dir, "-i", docs, "-o", out_index, "--dtype", "float32")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith(("note", "skipped"))]
    assert notes == ["note: the model reads text only: images and PDFs (1 files) are read through their text layer or OCR"]
    assert "3 items; 3 indexed (3 added" in out
    code, out, _ = run(capsys, "search", out_index, "Quarterly revenue grew\ntwelve percent", "--json")
    top = json.loads(out)["results"][0]
    assert top["id"] == "screenshot.png" and top["payload"]["ocr"] is True


def test_info_and_search_open_a_sharded_collection_without_ray(tmp_path, collection, capsys):
    from metaembed.distributed import ShardedIndex
    from metaembed.index import MultiVectorIndex

    root = tmp_path / "docs.collection"  # the items of the single index, split over 2 shards
    with MultiVectorIndex.open(collection.index) as single, ShardedIndex.create(
            root, num_shards=2, dim=single.dim, num_vectors=single.num_vectors, dtype=single.dtype,
            metadata=dict(single.metadata)) as sharded:
        for ids, vectors, payloads in single.export(payloads=True):
            sharded.add(ids, vectors, payloads)
        assert min(sharded.shard_sizes()) > 0

    infos = [json.loads(run(capsys, "index", "info", where, "--json")[1]) for where in (root, collection.index)]
    assert infos[0]["size"] == 7 and infos[0]["per_budget"] == infos[1]["per_budget"]
    assert (infos[0]["shards"], infos[1]["shards"]) == (2, 1)
    assert {k: v for k, v in infos[0].items() if k not in ("model", "source", "shards")} == \
        {k: v for k, v in infos[1].items() if k not in ("model", "source", "shards")}
    code, out, _ = run(capsys, "index", "info", root)
    assert code == 0 and "items:       7 in 2 shards" in out
    code, out, _ = run(capsys, "index", "info", collection.index)
    assert code == 0 and "items:       7\n" in out
    for options in (["--budget", "2,4"], ["--budget", "4,8", "--mode", "coarse"]):
        got, expected = (json.loads(run(capsys, "search", where, "cats sleeping", "-k", "7", "--json", *options)[1])
                         for where in (root, collection.index))
        assert [r["id"] for r in got["results"]] == [r["id"] for r in expected["results"]]
        assert [r["score"] for r in got["results"]] == pytest.approx([r["score"] for r in expected["results"]], abs=1e-5)
        assert got["results"][0]["payload"] == expected["results"][0]["payload"]
    code, out, _ = run(capsys, "search", root, "cats sleeping", "-k", "2")
    assert code == 0 and out.splitlines()[0].endswith("2 results")
