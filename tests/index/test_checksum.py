"""The bulk check of catalog item rows agrees with the per-row checksum it stands in for."""

from __future__ import annotations

import pytest

from metaembed.index.checksum import item_rows_sound, payload_rows_sound, row_check

ODD_IDS = ["doc-1", "", "sp ace", "unit\x1fsep", "naïve/日本語.txt#3", "lone\udcffsurrogate", "1e5"]


@pytest.mark.parametrize("item_id", ODD_IDS)
def test_a_row_sealed_by_row_check_is_sound(item_id: str) -> None:
    rows = [(item_id, "seg-a", row, row_check(item_id, "seg-a", row)) for row in (0, 7, 123456789)]
    assert item_rows_sound(rows)
    assert item_rows_sound(rows, checked=False)


@pytest.mark.parametrize(
    "row",
    [("doc-1", "seg-a", 3, row_check("doc-1", "seg-a", 4)),  # another row's checksum
     ("doc-1", "seg-a", 3, None),  # no checksum
     ("doc-1", "seg-a", "3", row_check("doc-1", "seg-a", "3")),  # text where an integer belongs
     ("doc-1", "seg-a", 3.0, row_check("doc-1", "seg-a", 3.0)),
     (b"doc-1", "seg-a", 3, row_check(b"doc-1", "seg-a", 3)),
     ("doc-1", None, 3, row_check("doc-1", None, 3))],
    ids=["wrong-check", "no-check", "text-row", "real-row", "bytes-id", "null-segment"],
)
def test_one_unsound_row_among_sound_ones_is_found(row: tuple) -> None:
    sound = [(f"d{i}", "seg-a", i, row_check(f"d{i}", "seg-a", i)) for i in range(100)]
    assert item_rows_sound(sound)
    assert not item_rows_sound(sound[:50] + [row] + sound[50:])


def test_without_checksums_only_the_types_are_checked() -> None:
    assert item_rows_sound([("doc-1", "seg-a", 3, None)], checked=False)
    assert not item_rows_sound([("doc-1", "seg-a", "3", None)], checked=False)


@pytest.mark.parametrize("payload", ['{"path": "a.txt", "text": "x\\u001fy"}', None, "null", '"naïve \\ud800"', "[1, 2]"])
def test_a_payload_row_sealed_by_row_check_is_sound(payload: str | None) -> None:
    rows = [(item_id, payload, row_check(item_id, payload)) for item_id in ODD_IDS]
    assert payload_rows_sound(rows)
    assert not payload_rows_sound(rows[:3] + [(rows[3][0], payload, rows[3][2] ^ 1)] + rows[4:])


def test_a_payload_row_with_another_items_check_or_a_wrong_type_is_unsound() -> None:
    assert not payload_rows_sound([("a", '{"n": 1}', row_check("b", '{"n": 1}'))])
    assert not payload_rows_sound([("a", b'{"n": 1}', row_check("a", b'{"n": 1}'))])
    assert not payload_rows_sound([("a", 1, row_check("a", 1))])
