"""``metaembed index check | repair | compact`` on an index built from a real folder with a tiny model."""

from __future__ import annotations

import shutil

import pytest

from metaembed.cli import main
from metaembed.index import MultiVectorIndex
from tests.frontdoor_helpers import make_collection


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
