"""Distributed encoding on a local Ray cluster: the same collection as the single-process build, resumable."""

from __future__ import annotations

import pytest

from metaembed.cli import main
from metaembed.distributed import ShardedIndex
from metaembed.distributed.keeper import NAMESPACE, actor_name
from metaembed.distributed.build import build_collection
from metaembed.retriever import Retriever, build_index

from tests.frontdoor_helpers import BUDGETS, write_docs, write_jsonl

pytestmark = pytest.mark.ray


def test_ray_build_equals_the_single_process_build_and_resumes(ray_cluster, tmp_path, capsys):
    from metaembed.model.testing import tiny_model

    model_dir = tmp_path / "model"
    tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8).save_pretrained(model_dir)
    docs = write_docs(tmp_path / "docs")  # images, text files and a 2-page PDF
    single = build_index(model_dir, docs, tmp_path / "single.index", budgets=BUDGETS, progress=False)

    out = tmp_path / "docs.collection"
    options = {"num_cpus": 0.1}
    collection = build_collection(model_dir, docs, out, num_shards=2, budgets=BUDGETS, batch_size=3,
                                  shard_options=options, progress=False)
    assert sorted(collection.ids) == sorted(single.index.ids) and len(collection) == 7
    assert collection.metadata == single.index.metadata
    # The same float16 vectors, up to one rounding step (the batches differ, so fp32 sums differ in the last bit).
    assert (collection.vectors(single.index.ids) - single.index.vectors(single.index.ids)).abs().max() < 1e-3
    sharded = Retriever(collection, single.model)
    for budget in ("1,1", "4,8"):
        got = sharded.search({"text": "revenue"}, k=7, budget=budget)
        expected = single.search({"text": "revenue"}, k=7, budget=budget)
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)
        assert {h.id for h in got} == {h.id for h in expected} and got[0].payload == expected[0].payload

    # The shard actors outlive the build's own handle: a second client keeps them, and the resumed
    # build below (in-process, so its handles go when it returns) is served by the same processes.
    serving = [collection.backend.submit(s, "process").result(30) for s in range(2)]
    reader = ShardedIndex.open(out, backend="ray", **options)
    collection.close()

    # Resume: only the new records are encoded and stored; a repeated id in the input is refused.
    more = write_jsonl(tmp_path / "more.jsonl", [{"id": "notes.txt", "text": "already there"},
                                                  {"id": "new-1", "text": "cats and dogs"}])
    assert main(["index", "build", "--ray", "local", "-m", str(model_dir), "-i", str(more), "-o", str(out)]) == 0
    assert "8 items in 2 shards" in capsys.readouterr().out
    assert len(reader) == 8 and "new-1" in reader
    # The same actors (ids), never restarted (pids), answer the reader after both builds.
    assert [reader.backend.submit(s, "process").result(30) for s in range(2)] == serving
    assert all(p["actor_id"] for p in serving)
    assert main(["index", "build", "--ray", "local", "-m", str(model_dir), "-i", str(more), "-o", str(tmp_path / "new")]) == 2
    assert "--shards" in capsys.readouterr().err
    assert reader.search(single.model.encode_queries(["x"]), k=8)[0]  # still searchable
    notes = [h for h in reader.search(single.index.vectors(["notes.txt"])[:, :4], k=1)[0]]
    assert notes[0].id == "notes.txt" and notes[0].payload["text"].startswith("Quarterly")
    reader.close()  # the last lease: the actors stop
    with pytest.raises(ValueError):
        ray_cluster.get_actor(actor_name(out, 0), namespace=NAMESPACE)
    single.index.close()
