"""Reading JSON-lines files with errors that name the file and the line.

Used wherever users hand metaembed a ``.jsonl`` file (index inputs, BEIR
corpora and queries, training pairs), so every reader reports a bad line the
same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from metaembed.errors import InputError


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of ``path``, streaming.

    Raises :class:`~metaembed.errors.InputError` for a missing file, a line that
    is not valid JSON, or a line that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}, line {number}: expected a JSON object")
            yield number, row


__all__ = ["iter_jsonl"]
