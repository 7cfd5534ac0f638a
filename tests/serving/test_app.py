"""The HTTP service, driven over real HTTP on 127.0.0.1 (uvicorn in a thread)."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from metaembed.serving import create_app
from tests.frontdoor_helpers import picture

from .conftest import API_KEY, Server, free_port, png_b64


def test_health_info_and_openapi(served):
    client, retriever = served
    assert client.get("/health").json() == {"status": "ok", "size": 7}
    info = client.get("/info").json()
    assert info["budgets"] == ["1,1", "2,4", "4,8"] and info["size"] == 7 and info["max_budget"] == "4,8"
    assert info["shards"] == 1
    assert [row["memory_bytes"] for row in info["per_budget"]] == [retriever.index.memory_bytes(b) for b in retriever.ladder]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/items", "/items/{item_id}", "/health", "/info"} <= set(paths)


def test_search_text_and_image_match_the_library(served, collection):
    client, retriever = served
    response = client.post("/search", json={"text": "cats", "k": 3, "budget": "2,4"})
    assert response.status_code == 200
    expected = retriever.search("cats", k=3, budget="2,4")
    body = response.json()
    assert body["budget"] == "2,4"
    assert [(h["id"], round(h["score"], 4)) for h in body["results"]] == [(h.id, round(h.score, 4)) for h in expected]
    image = picture((200, 30, 30), 5)
    response = client.post("/search", json={"image": png_b64(image), "text": "red", "k": 7})
    expected = retriever.search({"image": image, "text": "red"}, k=7)
    assert [h["id"] for h in response.json()["results"]] == [h.id for h in expected]


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"text": "q", "budget": "5,8"}, 422, "r_q can be 1..4"),
        ({"text": "q", "budget": "1,9"}, 422, "r_c can be 1..8"),
        ({"text": "q", "budget": "x"}, 422, "cannot read budget"),
        ({"text": "q", "k": 0}, 422, "greater than or equal to 1"),
        ({"text": "q", "k": "ten"}, 422, "valid integer"),
        ({"image": "not base64!!"}, 422, "not valid base64"),
        ({"image": base64.b64encode(b"plain text").decode()}, 422, "could not be decoded"),
        ({}, 422, "give 'text', 'image' or both"),
        ({"text": "q", "mode": "fast"}, 422, "mode: Input should be 'exact'"),
        ({"text": "q", "mode": "coarse", "shortlist": 0}, 422, "shortlist: Input should be greater than or equal to 1"),
        ({"text": None}, 422, "text: Input should be a valid string"),
        ({"text": "q", "filter": {"lang": {"gt": 1}}}, 422, "filter.lang"),
        ({"text": "q", "filter": {"lang": ["en"]}}, 422, "filter.lang"),
        ({"vectors": [[0.1] * 64] * 4, "text": "q"}, 422, "not both"),
        ({"vectors": [[0.1] * 63] * 4}, 422, "shape (R_q, 64)"),
        ({"vectors": [[0.1] * 64] * 2}, 422, "send all 4 query vectors"),
        ({"vectors": [[0.1] * 64, [0.1] * 63]}, 422, "same length"),
        ({"text": "q", "extra": 1}, 422, "Extra inputs are not permitted"),
        ({"text": "x" * 9000}, 422, "at most 8192 characters"),
    ],
)
def test_bad_requests_get_clear_4xx(served, body, status, message):
    client, _ = served
    response = client.post("/search", json=body)
    assert response.status_code == status
    assert message in response.text


def test_api_key_is_required_except_for_health(served):
    client, _ = served
    bare = httpx.Client(base_url=str(client.base_url), timeout=60)
    assert bare.get("/health").status_code == 200
    assert bare.get("/info").status_code == 401
    assert bare.post("/search", json={"text": "q"}, headers={"X-API-Key": "wrong"}).status_code == 401


def test_add_search_delete_items(served):
    client, retriever = served
    new = {"id": "blue-note", "text": "a blue note", "payload": {"source": "test"}}
    response = client.post("/items", json={"items": [new, {"id": "pic", "image": png_b64(picture((1, 2, 3), 9))}]})
    assert response.status_code == 201 and response.json() == {"added": 2, "size": 9}
    hits = client.post("/search", json={"text": "a blue note", "k": 9}).json()["results"]
    assert {"blue-note", "pic"} <= {h["id"] for h in hits}
    assert next(h for h in hits if h["id"] == "blue-note")["payload"] == {"source": "test"}
    again = client.post("/items", json={"items": [new]})
    assert again.status_code == 409 and "blue-note" in again.text
    duplicated = client.post("/items", json={"items": [{"id": "d", "text": "a"}, {"id": "d", "text": "b"}]})
    assert duplicated.status_code == 409 and "repeated" in duplicated.text
    assert client.delete("/items/blue-note").json() == {"deleted": "blue-note", "size": 8}
    assert client.delete("/items/blue-note").status_code == 404
    # ids with slashes and '#' (folder paths, PDF pages) are addressable
    assert client.delete("/items/photos/blue.png").status_code == 200
    assert client.delete("/items/report.pdf%23page=2").status_code == 200
    assert len(retriever) == 6


def test_concurrent_searches_and_additions(served):
    client, retriever = served
    baseline = {h.id: h.score for h in retriever.search("cats", k=7, budget="4,8")}

    def search(_: int) -> dict:
        response = client.post("/search", json={"text": "cats", "k": 20, "budget": "4,8"})
        assert response.status_code == 200
        return {h["id"]: h["score"] for h in response.json()["results"]}

    def add(n: int) -> int:
        return client.post("/items", json={"items": [{"id": f"new-{n}", "text": f"note {n}"}]}).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        searches = [pool.submit(search, i) for i in range(12)]
        additions = [pool.submit(add, n) for n in range(6)]
        results = [f.result() for f in searches]
        statuses = [f.result() for f in additions]
    assert statuses == [201] * 6
    assert len(retriever) == 13 and client.get("/health").json()["size"] == 13
    for result in results:
        # every search saw a consistent snapshot: the original items with unchanged scores,
        # plus some subset of the new ones
        assert set(baseline) <= set(result)
        assert all(abs(result[i] - s) < 1e-4 for i, s in baseline.items())
        assert all(i in baseline or i.startswith("new-") for i in result)


def test_app_from_an_index_path_or_an_open_index(collection):
    from metaembed.retriever import open_index

    for source in (collection.index, open_index(collection.index)):
        with Server(create_app(source)) as url:
            assert httpx.get(f"{url}/health", timeout=60).json() == {"status": "ok", "size": 7}
            # no API key configured: everything is open
            assert httpx.get(f"{url}/info", timeout=60).status_code == 200


def test_metaembed_serve_command_serves_the_index(collection):
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "metaembed.serving", str(collection.index), "--port", str(port), "--api-key", API_KEY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(process.stdout.read().decode() if process.poll() is not None else "no server")
                time.sleep(0.2)
        assert health.json() == {"status": "ok", "size": 7}
        found = httpx.post(f"http://127.0.0.1:{port}/search", json={"text": "cats", "k": 2},
                           headers={"X-API-Key": API_KEY}, timeout=60)
        assert found.status_code == 200 and len(found.json()["results"]) == 2
    finally:
        process.terminate()
        process.wait(timeout=30)


def _raw_post(client, path: str, body: str) -> httpx.Response:
    """POST a JSON text as is: Python's json module reads the 'Infinity' and lone-surrogate escapes."""
    return client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/search", '{"text": "\\ud800"}', "lone surrogate"),
        ("/search", '{"text": "a", "k": Infinity}', "k: Input should be a finite number"),
        ("/search", '{"text": "a", "k": NaN}', "k: Input should be a finite number"),
        ("/search", '{"vectors": [[Infinity]]}', "finite number"),
        ("/search", '{"text": "a", "filter": {"x\\udfff": 1}}', "lone surrogate"),
        ("/items", '{"items": [{"id": "\\ud800", "text": "a"}]}', "lone surrogate"),
        ("/items", '{"items": [{"id": "a", "text": "a", "payload": {"p": ["\\udc80"]}}]}', "lone surrogate"),
    ],
)
def test_what_json_carries_but_the_index_cannot_hold_is_a_422(served, path, body, message):
    client, retriever = served
    response = _raw_post(client, path, body)
    assert response.status_code == 422 and message in response.json()["detail"]
    assert len(retriever) == 7


@pytest.mark.parametrize("size", [(1, 1000), (100000, 1)])
def test_images_the_model_cannot_read_are_a_422(served, size):
    client, _ = served
    from PIL import Image

    image = png_b64(Image.new("RGB", size, (10, 20, 30)))
    response = client.post("/search", json={"image": image})
    assert response.status_code == 422 and f"{size[0]}x{size[1]}" in response.json()["detail"]
    added = client.post("/items", json={"items": [{"id": "thin", "image": image}]})
    assert added.status_code == 422 and "aspect ratio" in added.json()["detail"]


def test_keys_docs_and_schema(served):
    client, _ = served
    url = str(client.base_url)
    for path in ("/docs", "/openapi.json", "/info"):
        assert httpx.get(url + path, timeout=60).status_code == 401
        assert httpx.get(url + path, headers={"X-API-Key": API_KEY}, timeout=60).status_code == 200
    # /docs loads Swagger UI from this server, never from a CDN (it must render offline)
    page = httpx.get(url + "/docs", headers={"X-API-Key": API_KEY}, timeout=60).text
    assert "/docs/swagger-ui-bundle.js" in page and "/docs/swagger-ui.css" in page and "cdn" not in page.lower()
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css"), ("favicon-32x32.png", "png")):
        response = httpx.get(url + "/docs/" + asset, timeout=60)
        assert response.status_code == 200 and kind in response.headers["content-type"] and len(response.content) > 500
    assert "SwaggerUIBundle" in httpx.get(url + "/docs/swagger-ui-bundle.js", timeout=60).text
    assert httpx.get(url + "/docs/..%2Fpyproject.toml", timeout=60).status_code == 404
    assert httpx.get(url + "/docs/index.html", timeout=60).status_code == 404
    # a header that is not ASCII (latin-1 and UTF-8 bytes) is a wrong key, not a crash
    for raw in ("é".encode("latin-1"), "ключ".encode()):
        response = httpx.get(url + "/info", headers=[(b"X-API-Key", raw)], timeout=60)
        assert response.status_code == 401 and response.json() == {"detail": "missing or wrong X-API-Key header"}
    schema = client.get("/openapi.json").json()
    documented = {(path, method): set(spec["responses"]) for path, ops in schema["paths"].items()
                  for method, spec in ops.items()}
    assert documented[("/items", "post")] >= {"201", "401", "409", "422", "503", "507"}
    assert documented[("/items/{item_id}", "put")] >= {"200", "201", "507"}
    assert documented[("/items/{item_id}", "get")] >= {"200", "404"}
    vectors = schema["components"]["schemas"]["SearchRequest"]["properties"]["vectors"]
    assert vectors["minItems"] == 4 and vectors["items"]["minItems"] == vectors["items"]["maxItems"] == 64
    # every method of a path is allowed in a 405's Allow header
    response = client.request("PATCH", "/items/x")
    assert response.status_code == 405 and set(response.headers["allow"].split(", ")) == {"GET", "PUT", "DELETE"}


def test_batch_and_vector_search_match_the_library(served):
    client, retriever = served
    queries = ["cats", {"text": "red", "image": picture((200, 30, 30), 5)}, "revenue"]
    expected = retriever.search_many(queries, k=4, budget="2,4")
    encoded = retriever.encode_queries(["revenue"], None)[0]  # all 4 query vectors
    body = {"queries": [{"text": "cats"}, {"text": "red", "image": png_b64(picture((200, 30, 30), 5))},
                        {"vectors": encoded.tolist()}], "k": 4, "budget": "2,4"}
    response = client.post("/search/batch", json=body)
    assert response.status_code == 200 and response.json()["budget"] == "2,4"
    got = response.json()["results"]
    assert [[h["id"] for h in row] for row in got] == [[h.id for h in row] for row in expected]
    for row, want in zip(got, expected):
        assert [round(h["score"], 4) for h in row] == [round(h.score, 4) for h in want]
    single = client.post("/search", json={"vectors": encoded.tolist(), "k": 4, "budget": "2,4"}).json()["results"]
    assert single == got[2]
    for mode in ("exact", "coarse", "ann"):  # every mode the CLI has; 7 items fit any shortlist
        found = client.post("/search", json={"text": "cats", "k": 7, "mode": mode}).json()["results"]
        assert sorted(h["id"] for h in found) == sorted(retriever.index.ids)
    first = client.post("/search", json={"text": "cats", "k": 2, "budget": "1,1"}).json()["results"]
    narrow = client.post("/search", json={"text": "cats", "k": 2, "budget": "4,8", "mode": "coarse", "shortlist": 2})
    assert {h["id"] for h in narrow.json()["results"]} == {h["id"] for h in first}  # only the shortlist re-ranked


def test_filter_applies_before_top_k(served):
    client, retriever = served
    items = [{"id": f"note-{i}", "text": f"note number {i}", "payload": {"kind": "note", "n": i % 3}} for i in range(12)]
    assert client.post("/items", json={"items": items}).status_code == 201
    everything = retriever.search("note number 4", k=100)
    for spec in ({"kind": "note"}, {"n": 1}, {"n": {"in": [0, 2]}, "kind": "note"}, {"page": 2}):
        wanted = [h.id for h in everything if all(
            h.payload.get(f) in (v["in"] if isinstance(v, dict) else [v]) for f, v in spec.items())]
        response = client.post("/search", json={"text": "note number 4", "k": 3, "filter": spec})
        assert response.status_code == 200
        # the best 3 of the matching items, not the matching part of an unfiltered top 3
        assert [h["id"] for h in response.json()["results"]] == wanted[:3]
    batch = client.post("/search/batch", json={"queries": [{"text": "cats"}], "k": 20, "filter": {"kind": "note"}})
    assert len(batch.json()["results"][0]) == 12


def test_get_put_items(served):
    client, retriever = served
    item = client.get("/items/notes.txt").json()
    assert item["id"] == "notes.txt" and item["payload"] == retriever.index.payloads(["notes.txt"])["notes.txt"]
    assert "vectors" not in item
    stored = client.get("/items/notes.txt", params={"vectors": "true"}).json()["vectors"]
    assert stored == retriever.index.vectors(["notes.txt"])[0].tolist()
    assert client.get("/items/nothing-here").status_code == 404
    assert client.get("/items/report.pdf%23page=2").json()["id"] == "report.pdf#page=2"

    created = client.put("/items/fresh", json={"text": "a brand new violin sonata", "payload": {"v": 1}})
    assert created.status_code == 201 and created.json() == {"id": "fresh", "created": True, "size": 8}
    replaced = client.put("/items/notes.txt", json={"text": "a violin sonata in G", "payload": {"v": 2}})
    assert replaced.status_code == 200 and replaced.json() == {"id": "notes.txt", "created": False, "size": 8}
    assert client.get("/items/notes.txt").json()["payload"] == {"v": 2}
    # the new vectors are those of the new text: the same as encoding it afresh
    fresh = retriever.model.encode_candidates(["a violin sonata in G"], show_progress_bar=False)[0]
    assert abs(retriever.index.vectors(["notes.txt"])[0] - fresh).max() < 1e-2  # float16 storage
    top = client.post("/search", json={"text": "a violin sonata in G", "k": 1}).json()["results"][0]
    assert top["id"] == "notes.txt"


def test_storage_errors_have_their_own_status(served, monkeypatch):
    """The mapping of the storage layer's errors (raised by the index itself in its own tests)."""
    from metaembed.errors import IndexBusyError, IndexCorruptError, StorageFullError

    client, retriever = served
    cases = [(StorageFullError("no space left on device writing seg-1.vec"), 507, "not enough disk space"),
             (IndexBusyError("another process holds the writer lock"), 503, "the index is busy"),
             (IndexCorruptError("seg-1.vec fails its checksum"), 500, "the index data is damaged")]
    for error, status, message in cases:
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(retriever.index, "add", fail)
        monkeypatch.setattr(retriever.index, "upsert", fail)
        for response in (client.post("/items", json={"items": [{"id": "x", "text": "x"}]}),
                         client.put("/items/x", json={"text": "x"})):
            assert response.status_code == status and response.json()["detail"].startswith(message)
            assert str(error) in response.json()["detail"]
        assert ("retry-after" in response.headers) == (status == 503)
    assert len(retriever) == 7
