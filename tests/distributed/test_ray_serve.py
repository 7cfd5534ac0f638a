"""The Ray Serve app over real HTTP on 127.0.0.1: same schemas and API key as ``metaembed serve``, batched encoding."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from metaembed.distributed import ShardedIndex
from metaembed.retriever import Retriever, build_index

from tests.frontdoor_helpers import BUDGETS, write_docs

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_app_answers_like_the_single_index_service(ray_cluster, tmp_path):
    from ray import serve

    from metaembed.distributed import serve as distributed_serve
    from metaembed.model.testing import tiny_model

    model_dir = tmp_path / "model"
    tiny_model("qwen2_vl", num_query_tokens=4, num_candidate_tokens=8).save_pretrained(model_dir)
    single = build_index(model_dir, write_docs(tmp_path / "docs"), tmp_path / "single.index", budgets=BUDGETS,
                         progress=False)
    root = tmp_path / "docs.collection"
    with ShardedIndex.create(root, num_shards=2, dim=64, num_vectors=8, metadata=dict(single.index.metadata)) as local:
        for ids, vectors in single.index.export():
            local.add(ids, vectors, [single.index.payloads([i])[i] for i in ids])

    port = _free_port()
    distributed_serve.run(root, port=port, api_key="secret", encoder_options={"num_cpus": 0.5},
                          gateway_options={"num_cpus": 0.25}, shard_options={"num_cpus": 0.1},
                          max_batch_size=8, batch_wait_timeout_s=0.2, timeout=5.0)
    try:
        base, key = f"http://127.0.0.1:{port}", {"X-API-Key": "secret"}
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.get("/health").json() == {"status": "ok", "size": 7}
            assert client.post("/search", json={"text": "revenue"}).status_code == 401
            assert client.post("/search", json={"text": "x", "budget": "9,9"}, headers=key).status_code == 422

            queries = ["quarterly revenue", "cats", "a red picture", "report page", "blue", "green photo"]

            def ask(text: str) -> dict:
                response = client.post("/search", json={"text": text, "k": 7, "budget": "4,8"}, headers=key)
                assert response.status_code == 200, response.text
                return response.json()

            with ThreadPoolExecutor(len(queries)) as pool:  # concurrent requests: the encoder batches them
                answers = list(pool.map(ask, queries))
            for text, answer in zip(queries, answers):
                expected = single.search({"text": text}, k=7, budget="4,8")
                assert answer["budget"] == "4,8"
                assert [hit["id"] for hit in answer["results"]] == [hit.id for hit in expected]
                assert [hit["score"] for hit in answer["results"]] == pytest.approx([h.score for h in expected], abs=1e-4)
                assert answer["results"][0]["payload"] == expected[0].payload
            coarse = client.post("/search", json={"text": "cats", "k": 3, "mode": "coarse"}, headers=key).json()
            assert [h["id"] for h in coarse["results"]] == [h.id for h in single.search({"text": "cats"}, k=3, mode="coarse")]

            added = client.post("/items", json={"items": [{"id": "new", "text": "zebra stripes", "payload": {"p": 1}}]},
                                headers=key)
            assert added.status_code == 201 and added.json()["size"] == 8
            assert client.post("/items", json={"items": [{"id": "new", "text": "again"}]}, headers=key).status_code == 409
            top = client.post("/search", json={"text": "zebra stripes", "k": 1}, headers=key).json()["results"][0]
            assert top["id"] == "new" and top["payload"] == {"p": 1}
            assert client.delete("/items/new", headers=key).json()["size"] == 7
            assert client.delete("/items/new", headers=key).status_code == 404

        encoder = serve.get_deployment_handle("QueryEncoder", app_name=distributed_serve.APP_NAME)
        assert encoder.stats.remote().result()["largest_batch"] > 1
    finally:
        distributed_serve.shutdown(root)
        serve.shutdown()
    with ShardedIndex.open(root) as reopened:  # the actors wrote the add and the delete to the shard folders
        assert len(reopened) == 7 and "new" not in reopened
    single.index.close()
