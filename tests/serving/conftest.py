"""Serving fixtures: a tiny collection on disk and a real uvicorn server on 127.0.0.1 (in a thread)."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from metaembed.retriever import Retriever, build_index
from metaembed.serving import create_app
from tests.frontdoor_helpers import BUDGETS, make_collection

API_KEY = "s3cret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``with Server(app) as url:`` serves ``app`` on a free 127.0.0.1 port for the block."""

    def __init__(self, app) -> None:
        self.port = free_port()
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


def png_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="session")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("serving"))


def private_index(collection, folder):
    """A fresh copy of the collection's index at ``folder``."""
    build_index(collection.model_dir, collection.docs, folder, budgets=BUDGETS, progress=False).index.close()
    return folder


@pytest.fixture
def served(tmp_path, collection):
    """A private copy of the collection's index, served with an API key: ``(client, retriever)``."""
    retriever = Retriever.open(private_index(collection, tmp_path / "served.index"))
    with Server(create_app(retriever, api_key=API_KEY)) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=120) as client:
            yield client, retriever
    retriever.index.close()
