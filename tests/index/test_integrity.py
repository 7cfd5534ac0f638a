"""Damage is detected, named and repairable: checksums of segment files and catalog rows.

Each test writes a real index, damages one thing the way a disk, a copy or a
person would (a flipped byte, 4 KiB of random bytes, NaN/inf written into the
vectors or the int8 scales, an edited catalog row), and checks that reading it
raises :class:`IndexCorruptError` naming the damaged file, that ``check`` lists
it, and that ``repair`` drops exactly what was lost while the rest still
searches like a brute-force reference.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from metaembed.errors import IndexCorruptError, IndexStateError, InputError
from metaembed.index import MultiVectorIndex
from metaembed.index.catalog import FORMAT_VERSION
from metaembed.index.checksum import row_check

from .conftest import brute_force, stored_values, unit_vectors

DIM, NUM_VECTORS = 16, 4
IDS = [f"doc-{i}" for i in range(50)]
VECTORS = unit_vectors(11, 50, NUM_VECTORS, DIM)
QUERIES = unit_vectors(12, 3, 2, DIM)


def build(path: Path, dtype: str = "float16") -> Path:
    """Two segments (doc-0..24, doc-25..49) with payloads."""
    with MultiVectorIndex.create(path, dim=DIM, num_vectors=NUM_VECTORS, dtype=dtype, metadata={"m": 1}) as index:
        index.add(IDS[:25], VECTORS[:25], payloads=[{"n": i} for i in range(25)])
        index.add(IDS[25:], VECTORS[25:], payloads=[{"n": i} for i in range(25, 50)])
    return path


def segment_file(path: Path, holding: str, suffix: str = ".vec") -> Path:
    """The file (``.vec`` / ``.scale``) of the segment that holds item ``holding``."""
    db = sqlite3.connect(path / "catalog.sqlite")
    (name,) = db.execute("SELECT segment FROM items WHERE id = ?", (holding,)).fetchone()
    db.close()
    return path / f"{name}{suffix}"


def full_read(path: Path) -> list:
    """Open, search at the full budget (reads every chunk) and fetch payloads."""
    with MultiVectorIndex.open(path) as index:
        return [[(r.id, round(r.score, 5), r.payload) for r in row] for row in index.search(QUERIES, k=5)]


def assert_damage_named(path: Path, damaged: Path) -> None:
    with pytest.raises(IndexCorruptError, match=damaged.name):
        full_read(path)
    found = MultiVectorIndex.check(path)
    assert found and all(damaged.name in d.file or damaged.name in d.message for d in found), found


def test_a_sound_index_checks_clean_and_reads_the_same(tmp_path) -> None:
    path = build(tmp_path / "idx")
    assert MultiVectorIndex.check(path) == []
    expected = brute_force(QUERIES, stored_values(VECTORS, "float16"), IDS, 2, NUM_VECTORS, 5)
    got = full_read(path)
    assert [[i for i, _, _ in row] for row in got] == [[i for i, _ in row] for row in expected]
    np.testing.assert_allclose([[s for _, s, _ in row] for row in got], [[s for _, s in row] for row in expected],
                               atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32", "bfloat16"])
def test_a_flipped_byte_in_a_vector_file_is_detected(tmp_path, dtype: str) -> None:
    path = build(tmp_path / "idx", dtype)
    damaged = segment_file(path, "doc-30")
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    assert_damage_named(path, damaged)


def test_4_kib_of_random_bytes_are_detected(tmp_path) -> None:
    path = build(tmp_path / "idx", "float32")
    damaged = segment_file(path, "doc-3")
    with open(damaged, "r+b") as handle:
        handle.seek(256)
        handle.write(random.Random(0).randbytes(4096))
    assert_damage_named(path, damaged)


def test_nan_written_into_vectors_is_detected(tmp_path) -> None:
    path = build(tmp_path / "idx", "float16")
    damaged = segment_file(path, "doc-3")
    codes = np.memmap(damaged, dtype=np.float16, mode="r+")
    codes[5:40] = np.nan
    codes.flush()
    del codes
    assert_damage_named(path, damaged)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_written_into_int8_scales_is_detected(tmp_path, value: float) -> None:
    path = build(tmp_path / "idx", "int8")
    damaged = segment_file(path, "doc-40", ".scale")
    scales = np.memmap(damaged, dtype=np.float32, mode="r+")
    scales[3] = value
    scales.flush()
    del scales
    assert_damage_named(path, damaged)


def test_a_truncated_vector_file_is_named_at_open(tmp_path) -> None:
    path = build(tmp_path / "idx")
    damaged = segment_file(path, "doc-3")
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(IndexCorruptError, match=damaged.name):
        MultiVectorIndex.open(path)


def edit_catalog(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path / "catalog.sqlite")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def test_a_changed_catalog_dimension_is_detected(tmp_path) -> None:
    path = build(tmp_path / "idx")
    edit_catalog(path, "UPDATE config SET value = '8' WHERE key = 'dim'")
    with pytest.raises(IndexCorruptError, match=r"catalog\.sqlite.*'dim' fails its checksum.*rebuild"):
        MultiVectorIndex.open(path)
    with pytest.raises(IndexCorruptError, match="dim"):
        MultiVectorIndex.check(path)


def test_swapped_item_rows_are_detected_and_repaired(tmp_path) -> None:
    path = build(tmp_path / "idx")
    edit_catalog(
        path,
        "UPDATE items SET row = -1 WHERE id = 'doc-1'",
        "UPDATE items SET row = 1 WHERE id = 'doc-2'",
        "UPDATE items SET row = 2 WHERE id = 'doc-1'",
    )
    with pytest.raises(IndexCorruptError, match=r"catalog\.sqlite.*doc-[12]"):
        MultiVectorIndex.open(path)
    found = MultiVectorIndex.check(path)
    assert sorted(i for d in found for i in d.ids) == ["doc-1", "doc-2"]
    assert MultiVectorIndex.repair(path) == ["doc-1", "doc-2"]
    assert MultiVectorIndex.check(path) == []
    live = [i for i in IDS if i not in ("doc-1", "doc-2")]
    with MultiVectorIndex.open(path) as index:
        assert sorted(index.ids) == sorted(live)


def resealed(path: Path, item_id: str, row: object) -> str:
    """SQL that moves ``item_id`` to ``row`` and recomputes its checksum, so only the place check can object."""
    db = sqlite3.connect(path / "catalog.sqlite")
    (segment,) = db.execute("SELECT segment FROM items WHERE id = ?", (item_id,)).fetchone()
    db.close()
    value = f"'{row}'" if isinstance(row, str) else str(row)
    return f"UPDATE items SET row = {value}, crc = {row_check(item_id, segment, row)} WHERE id = '{item_id}'"


@pytest.mark.parametrize(
    "row, problem",
    [(25, "points at row 25"), (-1, "points at row -1"), (2, "points at row 2"), ("two", "fails its checksum")],
    ids=["past-the-segment", "negative", "taken-by-another", "stored-as-text"],
)
def test_an_item_row_with_a_matching_checksum_but_a_wrong_place_is_detected(tmp_path, row, problem) -> None:
    path = build(tmp_path / "idx")
    edit_catalog(path, resealed(path, "doc-1", row))
    with pytest.raises(IndexCorruptError, match=rf"catalog\.sqlite.*{problem}"):
        MultiVectorIndex.open(path)
    found = MultiVectorIndex.check(path)  # one item lost: doc-1, or doc-2 whose row it took
    assert len(found) == 1 and found[0].ids in {("doc-1",), ("doc-2",)}, found


def test_a_changed_segment_row_count_is_detected(tmp_path) -> None:
    path = build(tmp_path / "idx")
    name = segment_file(path, "doc-3").stem
    edit_catalog(path, f"UPDATE segments SET rows = 20 WHERE name = '{name}'")
    with pytest.raises(IndexCorruptError, match=rf"catalog\.sqlite.*{name}"):
        MultiVectorIndex.open(path)


def test_a_changed_payload_is_detected_when_read(tmp_path) -> None:
    path = build(tmp_path / "idx")
    edit_catalog(path, "UPDATE items SET payload = '{\"n\": 999}' WHERE id = 'doc-7'")
    with MultiVectorIndex.open(path) as index:
        with pytest.raises(IndexCorruptError, match="payload of item 'doc-7'"):
            index.search(VECTORS[7:8, :2], k=1)
    assert [d.ids for d in MultiVectorIndex.check(path)] == [("doc-7",)]


def test_repair_drops_a_damaged_segment_and_keeps_the_rest_exact(tmp_path) -> None:
    path = build(tmp_path / "idx", "int8")
    damaged = segment_file(path, "doc-30")
    data = bytearray(damaged.read_bytes())
    data[10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert MultiVectorIndex.repair(path) == sorted(IDS[25:])
    assert not damaged.exists() and MultiVectorIndex.check(path) == []
    with MultiVectorIndex.open(path) as index:
        assert index.ids == IDS[:25]
        got = index.search(QUERIES, k=5, budget="2,4")
        want = brute_force(QUERIES, stored_values(VECTORS[:25], "int8"), IDS[:25], 2, 4, 5)
        assert [[r.id for r in row] for row in got] == [[i for i, _ in row] for row in want]
        index.add(IDS[25:], VECTORS[25:])  # added again from their source
        assert len(index) == 50


def test_random_damage_to_the_catalog_is_an_index_error_or_harmless(tmp_path) -> None:
    original = build(tmp_path / "idx")
    reference = full_read(original)
    catalog = (original / "catalog.sqlite").read_bytes()
    rng = random.Random(1)
    used = [i for i in range(100, len(catalog) - 64) if catalog[i]]  # damage what is written, not free space
    outcomes = {"detected": 0, "harmless": 0}
    for attempt in range(40):
        path = tmp_path / f"copy{attempt}"
        path.mkdir()
        for source in original.iterdir():
            (path / source.name).write_bytes(source.read_bytes())
        data = bytearray(catalog)
        start = rng.choice(used)
        for offset in range(start, start + rng.choice([1, 8, 64])):
            data[offset] = rng.randrange(256)
        (path / "catalog.sqlite").write_bytes(bytes(data))
        try:
            got = full_read(path)
        except IndexStateError:
            outcomes["detected"] += 1
            continue
        assert got == reference, f"attempt {attempt}: damage at byte {start} changed the results silently"
        outcomes["harmless"] += 1
    print(outcomes)
    assert outcomes["detected"] > 0


def test_non_finite_vectors_are_refused_before_anything_is_written(tmp_path) -> None:
    path = build(tmp_path / "idx", "bfloat16")
    bad = VECTORS[:2].clone()
    bad[1, 3, 7] = float("inf")
    with MultiVectorIndex.open(path) as index:
        with pytest.raises(InputError, match="NaN or inf"):
            index.add(["x", "y"], bad)
        assert len(index) == 50
    assert sorted(p.suffix for p in path.iterdir() if p.name.startswith("seg-")) == [".vec", ".vec"]


def downgrade_to_format_2(path: Path) -> None:
    """What an index written before checksums looks like: format 2's tables, no checksum columns."""
    edit_catalog(
        path,
        "ALTER TABLE config DROP COLUMN crc",
        "ALTER TABLE segments DROP COLUMN checks",
        "ALTER TABLE segments DROP COLUMN crc",
        "ALTER TABLE items DROP COLUMN crc",
        "ALTER TABLE items DROP COLUMN payload_crc",
        "DELETE FROM config WHERE key = 'generation'",
        "UPDATE config SET value = '2' WHERE key = 'format_version'",
    )


def test_an_index_of_the_previous_format_opens_and_is_upgraded_by_its_first_write(tmp_path) -> None:
    path = build(tmp_path / "idx", "int8")
    before = full_read(path)
    downgrade_to_format_2(path)
    assert full_read(path) == before
    with MultiVectorIndex.open(path) as index:
        index.add(["new"], VECTORS[:1])
    db = sqlite3.connect(path / "catalog.sqlite")
    assert db.execute("SELECT value FROM config WHERE key = 'format_version'").fetchone() == (str(FORMAT_VERSION),)
    db.close()
    assert MultiVectorIndex.check(path) == []
    damaged = segment_file(path, "doc-3")
    data = bytearray(damaged.read_bytes())
    data[0] ^= 1
    damaged.write_bytes(bytes(data))
    assert_damage_named(path, damaged)  # the upgrade gave the old segments checksums


def test_nan_in_an_index_of_the_previous_format_is_detected(tmp_path) -> None:
    path = build(tmp_path / "idx", "float16")
    damaged = segment_file(path, "doc-3")
    downgrade_to_format_2(path)
    codes = np.memmap(damaged, dtype=np.float16, mode="r+")
    codes[0] = np.inf
    codes.flush()
    del codes
    assert_damage_named(path, damaged)
    with MultiVectorIndex.open(path) as index, pytest.raises(IndexCorruptError, match=damaged.name):
        index.add(["new"], VECTORS[:1])  # the upgrade refuses to checksum damaged data


def test_a_payload_that_is_not_one_json_value_in_an_unchecked_catalog_is_an_error_not_a_shift(tmp_path) -> None:
    path = build(tmp_path / "idx", "float16")
    downgrade_to_format_2(path)  # no checksums: only the parse can notice
    edit_catalog(path, "UPDATE items SET payload = '{\"n\": 7}, {\"n\": 8}' WHERE id = 'doc-7'")
    with MultiVectorIndex.open(path) as index:
        assert index.payloads(["doc-6", "doc-8"]) == {"doc-6": {"n": 6}, "doc-8": {"n": 8}}
        with pytest.raises(IndexCorruptError, match="catalog"):
            index.payloads(["doc-6", "doc-7", "doc-8"])


def test_an_index_of_a_newer_format_says_what_to_do(tmp_path) -> None:
    path = build(tmp_path / "idx")
    edit_catalog(path, f"UPDATE config SET value = '{FORMAT_VERSION + 1}' WHERE key = 'format_version'")
    with pytest.raises(IndexStateError, match="upgrade metaembed, or rebuild"):
        MultiVectorIndex.open(path)


def test_vectors_read_by_id_are_verified(tmp_path) -> None:
    path = build(tmp_path / "idx", "float32")
    damaged = segment_file(path, "doc-30")
    codes = np.memmap(damaged, dtype=np.float32, mode="r+")
    codes[-1] = 0.5
    codes.flush()
    del codes
    with MultiVectorIndex.open(path) as index:
        torch.testing.assert_close(index.vectors(["doc-3"]), VECTORS[3:4])
        with pytest.raises(IndexCorruptError, match=damaged.name):
            index.vectors(["doc-30"])
