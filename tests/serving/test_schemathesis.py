"""A bounded schemathesis run (every check, all phases) against a real server on 127.0.0.1.

It fails on any 5xx, any status code, header or body the OpenAPI schema does not document, any
schema-valid request the server rejects and any schema-invalid one it accepts. Images are
generated as real PNGs (see ``schemathesis_hooks.py``); the run is seeded, so it is repeatable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from metaembed.retriever import Retriever
from metaembed.serving import create_app

from .conftest import API_KEY, Server, private_index

_ROOT = Path(__file__).resolve().parents[2]


def test_schemathesis_finds_no_mismatch_and_no_server_error(tmp_path, collection):
    retriever = Retriever.open(private_index(collection, tmp_path / "fuzzed.index"))
    with Server(create_app(retriever, api_key=API_KEY)) as url:
        command = [
            sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
            "run", f"{url}/openapi.json", "--header", f"X-API-Key: {API_KEY}",
            "--checks", "all", "--max-examples", "5", "--seed", "20261201", "--workers", "1",
            "--request-timeout", "60", "--no-color",
        ]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.serving.schemathesis_hooks",
               "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    assert "No issues found" in report
    retriever.index.close()
