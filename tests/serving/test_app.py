"""The HTTP service, driven over real HTTP on 127.0.0.1 (uvicorn in a thread)."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from metaembed.retriever import Retriever, build_index
from metaembed.serving import create_app
from tests.frontdoor_helpers import BUDGETS, make_collection, picture

API_KEY = "s3cret"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Server:
    def __init__(self, app) -> None:
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("serving"))


@pytest.fixture
def served(tmp_path, collection):
    """A private copy of the collection's index, served with an API key."""
    index = tmp_path / "served.index"
    build_index(collection.model_dir, collection.docs, index, budgets=BUDGETS, progress=False).index.close()
    retriever = Retriever.open(index)
    with _Server(create_app(retriever, api_key=API_KEY)) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=120) as client:
            yield client, retriever


def _b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_health_info_and_openapi(served):
    client, retriever = served
    assert client.get("/health").json() == {"status": "ok", "size": 7}
    info = client.get("/info").json()
    assert info["budgets"] == ["1,1", "2,4", "4,8"] and info["size"] == 7 and info["max_budget"] == "4,8"
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
    response = client.post("/search", json={"image": _b64(image), "text": "red", "k": 7})
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
    response = client.post("/items", json={"items": [new, {"id": "pic", "image": _b64(picture((1, 2, 3), 9))}]})
    assert response.status_code == 201 and response.json() == {"added": 2, "size": 9}
    hits = client.post("/search", json={"text": "a blue note", "k": 9}).json()["results"]
    assert {"blue-note", "pic"} <= {h["id"] for h in hits}
    assert next(h for h in hits if h["id"] == "blue-note")["payload"] == {"source": "test"}
    again = client.post("/items", json={"items": [new]})
    assert again.status_code == 409 and "blue-note" in again.text
    duplicated = client.post("/items", json={"items": [{"id": "d", "text": "a"}, {"id": "d", "text": "b"}]})
    assert duplicated.status_code == 422 and "repeated" in duplicated.text
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
        with _Server(create_app(source)) as url:
            assert httpx.get(f"{url}/health", timeout=60).json() == {"status": "ok", "size": 7}
            # no API key configured: everything is open
            assert httpx.get(f"{url}/info", timeout=60).status_code == 200


def test_metaembed_serve_command_serves_the_index(collection):
    import subprocess
    import sys

    port = _free_port()
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
