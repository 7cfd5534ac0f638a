"""Run the HTTP service: :func:`serve` (what ``metaembed serve`` calls) and ``python -m metaembed.serving``.

``python -m metaembed.serving INDEX [--host H] [--port N] [--api-key KEY]`` is the same as
``metaembed serve INDEX ...``; it parses its own few arguments so that the service does not
import the CLI that sits above it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from metaembed.errors import MetaEmbedError

if TYPE_CHECKING:
    from metaembed.model import MetaEmbedModel

API_KEY_ENV = "METAEMBED_API_KEY"


def serve(
    index: str | Path,
    *,
    model: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the index folder ``index`` over HTTP until interrupted.

    ``model`` defaults to the model folder the index records; ``api_key`` and the app are as
    in :func:`~metaembed.serving.create_app`; ``log_level`` is uvicorn's.
    """
    import uvicorn

    from metaembed.serving.app import create_app

    uvicorn.run(create_app(index, model=model, api_key=api_key), host=host, port=port, log_level=log_level)


def main(argv: list[str] | None = None) -> int:
    """``python -m metaembed.serving``: user errors print ``error: ...`` and return 2."""
    parser = argparse.ArgumentParser(prog="python -m metaembed.serving", description="Serve an index over HTTP.")
    parser.add_argument("index", type=Path, help="index folder to serve")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"required in the X-API-Key header of every request but GET /health (also ${API_KEY_ENV})")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be 1..65535, got {args.port}")
    try:
        serve(args.index, host=args.host, port=args.port, api_key=args.api_key)
    except (MetaEmbedError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["serve", "main", "API_KEY_ENV"]
