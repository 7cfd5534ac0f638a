"""Built-in MetaEmbed models: trained by this project, shipped inside the package, loaded offline.

A built-in model is a folder under ``metaembed/pretrained/<name>/`` in the layout that
:func:`metaembed.model.saving.save` writes (its backbone may be named by a packaged wheel
instead of being copied). ``MetaEmbedModel.from_pretrained(name)`` and every CLI ``--model``
option accept the name; :data:`DEFAULT_MODEL` is what they use when no model is given.
"""

from __future__ import annotations

from pathlib import Path

from metaembed.errors import InputError

#: The model every command uses when none is named.
DEFAULT_MODEL = "metaembed-minilm"

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"


def builtin_names() -> list[str]:
    """Names of the built-in models whose folders are present in this installation."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def is_builtin(name: str | Path) -> bool:
    """Whether ``name`` is spelled as a built-in model name (present or not)."""
    return isinstance(name, str) and "/" not in name and name.startswith("metaembed-")


def builtin_path(name: str) -> Path:
    """The folder of the built-in model ``name``; a clear error when it is not installed."""
    folder = PRETRAINED_DIR / name
    if not folder.is_dir():
        have = ", ".join(builtin_names()) or "none"
        raise InputError(f"no built-in model named {name!r} in this installation (built-in models: {have})")
    return folder


__all__ = ["DEFAULT_MODEL", "PRETRAINED_DIR", "builtin_names", "builtin_path", "is_builtin"]
