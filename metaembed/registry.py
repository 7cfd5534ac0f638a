"""Named registries for the extension points: storage codecs, first stages, benchmark kinds.

Every extension point follows the pattern of the backbone families
(:mod:`metaembed.model.backbones`): one file per member in the extension point's package,
registered by name when that file is imported. A :class:`Registry` imports every module of
its package the first time it is asked for a name, so adding a member is one new file and
nothing else; code outside the package may also call :meth:`Registry.register` directly
(a test's toy member, a plug-in).

>>> shapes = Registry("shape")
>>> @shapes.register
... class Square:
...     name = "square"
>>> shapes.get("square") is Square, shapes.names()
(True, ['square'])
>>> shapes.get("circle")
Traceback (most recent call last):
...
metaembed.errors.InputError: unknown shape 'circle'; expected one of ['square']
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Any, Callable, Generic, TypeVar

from metaembed.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Members of one extension point by their ``name`` attribute.

    Args:
        kind: what a member is, for error messages ("storage codec", "first stage").
        package: the dotted name of the package whose modules define the members; each module
            is imported on the first lookup. ``None`` for a registry filled by hand.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._members: dict[str, T] = {}
        self._loaded = package is None
        self._lock = threading.Lock()

    def register(self, member: T) -> T:
        """Add ``member`` (a class or an instance with a ``name``) and return it: usable as a decorator.

        Registering a second member under a taken name replaces the first (a plug-in may
        override a built-in one deliberately), except that a built-in member (one defined in
        ``package``, imported lazily) never replaces a plug-in registered before it was imported.
        """
        name = getattr(member, "name", None)
        if not isinstance(name, str) or not name:
            raise InputError(f"a {self.kind} needs a non-empty string 'name', got {name!r}")
        taken = self._members.get(name)
        if taken is not None and self._builtin(member) and not self._builtin(taken):
            return member
        self._members[name] = member
        return member

    def _builtin(self, member: Any) -> bool:
        module = getattr(member, "__module__", None) or ""
        return self.package is not None and module.startswith(self.package + ".")

    def unregister(self, name: str) -> None:
        """Remove the member called ``name`` (tests use it to clean up a toy member)."""
        self._members.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
            self._loaded = True

    def get(self, name: str) -> T:
        """The member called ``name``; :class:`InputError` naming the known ones otherwise."""
        self._load()
        if not isinstance(name, str) or name not in self._members:
            raise InputError(f"unknown {self.kind} {name!r}; expected one of {self.names()}")
        return self._members[name]

    def names(self) -> list[str]:
        """Registered names: the built-in members in the order they were registered, then plug-ins."""
        self._load()
        builtin = [name for name, member in self._members.items() if self._builtin(member)]
        return builtin + [name for name in self._members if name not in builtin]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._members


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__`` that import ``exports`` on first use.

    ``exports`` maps each public name to the module that defines it, so importing the package
    costs nothing until a name is read (the CLI and Ray workers stay light).
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(list(namespace) + list(exports))

    return __getattr__, __dir__


__all__ = ["Registry", "lazy_exports"]
