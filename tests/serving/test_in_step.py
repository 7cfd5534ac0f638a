"""A running server stays in step: it serves what the CLI commits meanwhile, and a large addition
never holds a search behind its encoding."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx

from metaembed.retriever import Retriever
from metaembed.serving import create_app

from .conftest import API_KEY, Server, private_index


def _cli(*args: str) -> str:
    """Run the real ``metaembed`` command in another process; its stdout."""
    command = [sys.executable, "-c", "import sys; from metaembed.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_server_sees_cli_adds_and_deletes_without_a_restart(tmp_path, collection):
    index = private_index(collection, tmp_path / "live.index")
    more = tmp_path / "more"
    more.mkdir()
    (more / "zebra.txt").write_text("Zebras graze on the open savanna at dawn.\n")
    with Server(create_app(index, api_key=API_KEY)) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=120) as client:
            assert client.get("/health").json()["size"] == 7
            assert "1 added" in _cli("index", "add", str(index), "-i", str(more))
            assert client.get("/health").json()["size"] == 8
            assert client.get("/info").json()["size"] == 8
            assert client.get("/items/zebra.txt").status_code == 200
            hits = client.post("/search", json={"text": "Zebras graze on the open savanna at dawn.", "k": 8}).json()
            assert [h["id"] for h in hits["results"]][0] == "zebra.txt"
            conflict = client.post("/items", json={"items": [{"id": "zebra.txt", "text": "again"}]})
            assert conflict.status_code == 409 and "zebra.txt" in conflict.json()["detail"]

            _cli("index", "delete", str(index), "notes.txt")
            assert client.get("/health").json()["size"] == 7
            found = client.post("/search", json={"text": "Quarterly revenue grew", "k": 20}).json()["results"]
            assert "notes.txt" not in {h["id"] for h in found} and len(found) == 7
            assert client.get("/items/notes.txt").status_code == 404
            assert client.delete("/items/notes.txt").status_code == 404
            # the server's own writes go on from the state the CLI left
            assert client.put("/items/notes.txt", json={"text": "back again"}).status_code == 201
    with Retriever.open(index).index as reopened:
        assert sorted(reopened.ids) == sorted([*Retriever.open(collection.index).index.ids, "zebra.txt"])


def test_a_large_addition_does_not_hold_searches_behind_its_encoding(tmp_path, collection, monkeypatch):
    retriever = Retriever.open(private_index(collection, tmp_path / "busy.index"))
    encoding_time = 8.0  # an artificially slow candidate encode: the whole addition's encoding
    real_encode = retriever.model.encode_candidates
    encoding = threading.Event()

    def slow_encode(*args, **kwargs):
        encoding.set()
        time.sleep(encoding_time)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(retriever.model, "encode_candidates", slow_encode)
    with Server(create_app(retriever, api_key=API_KEY)) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=120) as client:
            client.post("/search", json={"text": "cats"})  # warm
            items = [{"id": f"bulk-{i}", "text": f"bulk note {i}"} for i in range(64)]
            added: dict = {}
            adder = threading.Thread(target=lambda: added.update(r=client.post("/items", json={"items": items})))
            adder.start()
            assert encoding.wait(30)
            started = time.monotonic()
            searched = [client.post("/search", json={"text": q, "k": 3}) for q in ("cats", "revenue", "red")]
            elapsed = time.monotonic() - started
            still_encoding = adder.is_alive()
            adder.join(60)
    assert [r.status_code for r in searched] == [200, 200, 200]
    # three searches finished while the addition was still encoding, in far less than its encoding time
    assert still_encoding and elapsed < encoding_time / 2, elapsed
    assert added["r"].status_code == 201 and len(retriever) == 7 + 64
