"""One local Ray cluster for every Ray test of the session (started on first use, always shut down)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """``ray`` initialised on a local 2-CPU cluster with a small object store; no dashboard, no external services."""
    import ray

    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    try:
        yield ray
    finally:
        if "ray.serve" in __import__("sys").modules:
            from ray import serve

            serve.shutdown()
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
