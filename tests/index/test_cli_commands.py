"""``metaembed index check | repair | compact`` on an index built from a real folder with a tiny model."""

from __future__ import annotations

import json

import shutil

import pytest

from metaembed.cli import main
from metaembed.index import MultiVectorIndex
from tests.frontdoor_helpers import make_collection, write_jsonl


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("maintenance"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_then_repair_from_the_source_folder(tmp_path, collection, capsys) -> None:
    index = tmp_path / "copy.index"
    shutil.copytree(collection.index, index)
    with MultiVectorIndex.open(index) as opened:
        before = sorted(opened.ids)
        results_before = [(h.id, round(h.score, 4)) for h in opened.search(opened.vectors(before[:1])[:, :4], k=3)[0]]
    code, out, _ = run(capsys, "index", "check", index)
    assert code == 0 and f"sound ({len(before)} items" in out

    damaged = next(index.glob("seg-*.vec"))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 3] ^= 0x40
    damaged.write_bytes(bytes(data))
    code, out, err = run(capsys, "index", "check", index)
    assert code == 2 and damaged.name in out and "index repair" in err and "Traceback" not in err

    code, out, _ = run(capsys, "index", "repair", index, "--input", collection.docs)
    assert code == 0 and f"dropped {len(before)} damaged items" in out and f"re-embedded {len(before)} items" in out
    assert run(capsys, "index", "check", index)[0] == 0
    with MultiVectorIndex.open(index) as opened:
        assert sorted(opened.ids) == before
        after = [(h.id, round(h.score, 4)) for h in opened.search(opened.vectors(before[:1])[:, :4], k=3)[0]]
    assert [i for i, _ in after] == [i for i, _ in results_before]


def test_compact_reclaims_deleted_items(tmp_path, collection, capsys) -> None:
    index = tmp_path / "copy.index"
    shutil.copytree(collection.index, index)
    with MultiVectorIndex.open(index) as opened:
        ids = sorted(opened.ids)
        opened.delete(ids[:2])  # too few to pay for a rewrite on their own
    size = sum(p.stat().st_size for p in index.glob("seg-*"))
    code, out, _ = run(capsys, "index", "compact", index)
    assert code == 0
    assert sum(p.stat().st_size for p in index.glob("seg-*")) == size * (len(ids) - 2) // len(ids)
    with MultiVectorIndex.open(index) as opened:
        assert sorted(opened.ids) == ids[2:]


def test_check_of_a_damaged_configuration_says_rebuild(tmp_path, collection, capsys) -> None:
    import sqlite3

    index = tmp_path / "copy.index"
    shutil.copytree(collection.index, index)
    db = sqlite3.connect(index / "catalog.sqlite")
    db.execute("UPDATE config SET value = '7' WHERE key = 'num_vectors'")
    db.commit()
    db.close()
    for command in ("check", "repair"):
        code, _, err = run(capsys, "index", command, index)
        assert code == 2 and "catalog.sqlite" in err and "rebuild" in err and "Traceback" not in err


def _build_trained(tmp_path, collection, capsys, dtype: str, items: int):
    """``index build --dtype DTYPE`` of ``items`` short notes (the codec learns from the first batches, held back
    until they are enough), then info, check and a search; the index path and the source rows."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    rows = [{"id": f"t{i}", "text": f"{words[i % 8]} {words[(3 * i) % 8]} note {i}"} for i in range(items)]
    source = write_jsonl(tmp_path / "notes.jsonl", rows)
    index = tmp_path / f"{dtype}.index"
    code, out, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", source, "-o", index, "--dtype", dtype)
    assert code == 0, err
    assert f"{items} indexed" in out
    code, out, _ = run(capsys, "index", "info", index)
    assert f"storage:     {dtype}" in out
    assert run(capsys, "index", "check", index)[0] == 0
    code, out, _ = run(capsys, "search", index, "alpha beta note 0", "-k", "3", "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 3
    return index, rows


def _too_few(tmp_path, collection, capsys, dtype: str, rows: list) -> str:
    """The one-line error of building a ``dtype`` index from 5 items."""
    few = write_jsonl(tmp_path / "few.jsonl", rows[:5])
    code, _, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", few, "-o", tmp_path / "few.index",
                       "--dtype", dtype)
    assert code == 2 and len(err.strip().splitlines()) == 1
    return err


def test_build_with_a_product_quantiser(tmp_path, collection, capsys) -> None:
    """``--dtype pq2``: a damaged codebook is found by check; an unknown dtype and too few vectors are one-line errors."""
    index, rows = _build_trained(tmp_path, collection, capsys, "pq2", 40)
    (codebook,) = index.glob("codec-*.npz")
    data = bytearray(codebook.read_bytes())
    data[-40] ^= 0x10
    codebook.write_bytes(bytes(data))
    code, out, err = run(capsys, "index", "check", index)
    assert code == 2 and "codebook" in out + err and "Traceback" not in err
    source = tmp_path / "notes.jsonl"
    code, _, err = run(capsys, "index", "build", "-m", collection.model_dir, "-i", source, "-o", tmp_path / "x.index",
                       "--dtype", "pq3")
    assert code == 2 and "pq2" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.index").exists()
    assert "at least 256 vectors" in _too_few(tmp_path, collection, capsys, "pq2", rows)


def test_build_with_the_predictive_quantiser(tmp_path, collection, capsys) -> None:
    """``--dtype ppq2``: learnt from whole items (at least 256 of them), searched and checked like any index."""
    _, rows = _build_trained(tmp_path, collection, capsys, "ppq2", 300)
    assert "at least 256 items" in _too_few(tmp_path, collection, capsys, "ppq2", rows)
