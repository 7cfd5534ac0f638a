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
