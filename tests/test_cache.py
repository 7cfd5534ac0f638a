"""One cache root for everything metaembed derives."""

from __future__ import annotations

from pathlib import Path

from metaembed.cache import cache_root


def test_the_root_follows_the_environment_at_each_call(monkeypatch, tmp_path):
    monkeypatch.setenv("METAEMBED_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.setenv("METAEMBED_CACHE", "")  # empty = unset, not the current directory
    assert cache_root() == Path.home() / ".cache" / "metaembed"
    monkeypatch.delenv("METAEMBED_CACHE")
    assert cache_root() == Path.home() / ".cache" / "metaembed"


def test_query_encoder_exports_live_under_the_root(monkeypatch, tmp_path):
    from metaembed.model.query_encoder import exports_root

    monkeypatch.delenv("METAEMBED_QUERY_ENCODERS", raising=False)
    monkeypatch.setenv("METAEMBED_CACHE", str(tmp_path))
    assert exports_root() == tmp_path / "query-encoders"


def test_usage_and_clear_cover_every_folder_and_only_those_named(monkeypatch, tmp_path):
    import pytest

    from metaembed.cache import FOLDERS, cache_folder, clear, usage
    from metaembed.errors import InputError

    for variable in ("METAEMBED_QUERY_ENCODERS", "METAEMBED_ANN_GRAPHS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("METAEMBED_CACHE", str(tmp_path / "c"))
    (cache_folder("ann-graphs") / "sub").mkdir(parents=True)
    (cache_folder("ann-graphs") / "a.faiss").write_bytes(b"x" * 100)
    (cache_folder("ann-graphs") / "sub" / "b").write_bytes(b"y" * 20)
    cache_folder("quickstart").mkdir()
    (cache_folder("quickstart") / "results.json").write_text("{}")
    rows = {row.name: row for row in usage()}
    assert list(rows) == list(FOLDERS)
    assert (rows["ann-graphs"].bytes, rows["ann-graphs"].files) == (120, 2)
    assert (rows["quickstart"].bytes, rows["quickstart"].files) == (2, 1)
    assert (rows["query-encoders"].bytes, rows["query-encoders"].files) == (0, 0)  # not made yet
    with pytest.raises(InputError, match="no cache folder 'graphs'; the folders are quickstart, query-encoders"):
        clear(["ann-graphs", "graphs"])
    assert cache_folder("ann-graphs").exists()  # nothing deleted on a bad name
    assert clear(["ann-graphs", "ann-graphs"]) == ([tmp_path / "c" / "ann-graphs"], [])
    assert not cache_folder("ann-graphs").exists() and cache_folder("quickstart").exists()
    outside = tmp_path / "mine"
    outside.mkdir()
    monkeypatch.setenv("METAEMBED_ANN_GRAPHS", str(outside))  # a folder of the user's: never deleted
    assert clear(list(FOLDERS)) == ([tmp_path / "c" / "quickstart"], [outside])
    assert outside.exists() and not cache_folder("quickstart").exists()


def test_the_cache_commands(monkeypatch, tmp_path, capsys):
    import json

    from metaembed.cli import app

    for variable in ("METAEMBED_QUERY_ENCODERS", "METAEMBED_ANN_GRAPHS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("METAEMBED_CACHE", str(tmp_path))
    (tmp_path / "ann-graphs").mkdir()
    (tmp_path / "ann-graphs" / "g.faiss").write_bytes(b"z" * 2048)

    def run(*argv: str) -> int:
        try:
            app(list(argv), standalone_mode=False)
        except SystemExit as stop:
            return int(stop.code or 0)
        return 0

    assert run("cache", "info", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["root"] == str(tmp_path)
    assert {row["name"]: row["bytes"] for row in info["folders"]}["ann-graphs"] == 2048
    assert run("cache", "info") == 0 and "ann-graphs" in capsys.readouterr().out
    assert run("cache", "clear", "ann-graphs") == 0
    assert "cleared 1 folder(s)" in capsys.readouterr().out and not (tmp_path / "ann-graphs").exists()
