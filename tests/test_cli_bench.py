"""'metaembed bench' finds the checkout it runs in, and says clearly when there is none."""

from __future__ import annotations

from pathlib import Path

import metaembed
from metaembed.cli import checkout_root, main

REPOSITORY = Path(__file__).resolve().parent.parent


def test_checkout_found_from_inside_it_or_from_an_editable_install(tmp_path) -> None:
    assert checkout_root(REPOSITORY / "metaembed" / "index", tmp_path / "site-packages" / "metaembed") == REPOSITORY
    assert checkout_root(tmp_path, REPOSITORY / "metaembed") == REPOSITORY
    # an installed package (site-packages has no benchmarks/) run outside any clone
    (tmp_path / "site-packages" / "metaembed").mkdir(parents=True)
    assert checkout_root(tmp_path, tmp_path / "site-packages" / "metaembed") is None


def test_bench_outside_a_checkout_says_it_needs_one(tmp_path, monkeypatch, capsys) -> None:
    installed = tmp_path / "site-packages" / "metaembed"
    installed.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("metaembed.cli.__file__", str(installed / "cli.py"))
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and "git clone" in err and "Traceback" not in err
    assert Path(metaembed.__file__).resolve().parent.parent == REPOSITORY  # the test ran against this checkout
