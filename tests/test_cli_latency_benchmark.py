"""The CLI latency benchmark's large-index stand-in opens as the index it claims to be."""

from __future__ import annotations

from benchmarks.cli_latency import large_index, markdown
from metaembed.index import MultiVectorIndex


def test_the_large_index_holds_the_items_asked_for_in_several_segments(tmp_path) -> None:
    path = large_index(tmp_path / "large.index", {"model": "metaembed-minilm"}, items=1_000, segment=300)
    with MultiVectorIndex.open(path) as index:
        assert len(index) == 1_000 and index.metadata == {"model": "metaembed-minilm"}
        assert len(index._store.views) >= 2
        first = index.ids[0]
        assert index.payloads([first])[first]["path"] == first.split("#")[0]


def test_the_table_lists_every_timing_with_the_machine() -> None:
    result = {"model": "m", "machine": "AMD EPYC, family 23 model 1, AVX2, 2 logical CPUs",
              "load_average_1min_at_end": 0.2, "model_export_seconds": 9.0,
              "seconds": {"index info, 100,000 items (no model)": {"median": 1.25, "min": 1.2, "all": [1.2, 1.25, 1.3]}}}
    table = markdown(result)
    assert "family 23 model 1" in table and "| index info, 100,000 items (no model) | 1.250 | 1.200 |" in table
