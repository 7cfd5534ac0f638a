"""A small HTTP client of ``metaembed serve``: search a running server without loading a model.

Used by ``metaembed search --server URL``; standard library only, so asking a warm server costs
a process start and one round trip, not a model load.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from metaembed.errors import InputError, MetaEmbedError

#: Seconds to wait for the server's answer.
TIMEOUT_S = 60.0


class ServerError(MetaEmbedError):
    """The server could not be reached or refused the request; the message says which and why."""


def search_server(
    url: str,
    text: str | None = None,
    image: str | Path | None = None,
    *,
    k: int = 10,
    budget: str | None = None,
    mode: str = "exact",
    shortlist: int | None = None,
    api_key: str | None = None,
    timeout: float = TIMEOUT_S,
) -> dict[str, Any]:
    """``POST {url}/search`` with text and/or an image file; the server's JSON answer
    (``{"budget": "r_q,r_c", "results": [{"rank", "id", "score", "payload"}, ...]}``). ``shortlist``
    (``None``: the server's default) sizes a ``coarse`` / ``ann`` search's re-rank."""
    if not url.startswith(("http://", "https://")):
        raise InputError(f"--server must be an http:// or https:// URL, got {url!r}")
    body: dict[str, Any] = {"k": k, "mode": mode}
    if text is not None:
        body["text"] = text
    if image is not None:
        body["image"] = base64.b64encode(Path(image).read_bytes()).decode("ascii")
    if budget is not None:
        body["budget"] = budget
    if shortlist is not None:
        body["shortlist"] = shortlist
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["X-API-Key"] = api_key
    request = urllib.request.Request(
        url.rstrip("/") + "/search", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise ServerError(f"the server at {url} answered {error.code}: {_detail(error)}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(f"cannot reach the server at {url}: {reason}") from None


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(error.read()).get("detail", "")
    except (ValueError, AttributeError):
        return error.reason
    if isinstance(detail, list):  # FastAPI's validation errors: a list of {"loc", "msg"}
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail) or str(error.reason)


__all__ = ["ServerError", "search_server"]
