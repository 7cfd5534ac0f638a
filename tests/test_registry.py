"""Registries: built-in members load lazily, plug-ins registered before that keep their place and win."""

from __future__ import annotations

import importlib
import sys

import pytest

from metaembed.errors import InputError
from metaembed.registry import Registry


@pytest.fixture
def builtin_package(tmp_path, monkeypatch):
    """A package ``toyplugins`` whose module ``alpha`` registers two members into ``REGISTRY``."""
    root = tmp_path / "toyplugins"
    root.mkdir()
    (root / "__init__.py").write_text("from metaembed.registry import Registry\nREGISTRY = Registry('toy', __name__)\n")
    (root / "alpha.py").write_text(
        "from toyplugins import REGISTRY\n"
        "@REGISTRY.register\nclass A:\n    name = 'a'\n"
        "@REGISTRY.register\nclass B:\n    name = 'b'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("toyplugins").REGISTRY
    for name in [m for m in sys.modules if m.startswith("toyplugins")]:
        del sys.modules[name]


def test_a_plugin_registered_before_the_builtins_load_overrides_and_comes_after(builtin_package):
    class MyB:  # defined here, outside the package: a plug-in
        name = "b"

    class Extra:
        name = "extra"

    builtin_package.register(Extra)
    builtin_package.register(MyB)  # before anything was looked up: the built-ins are not imported yet
    assert builtin_package.names() == ["a", "extra", "b"]  # built-ins first, then plug-ins as registered
    assert builtin_package.get("b") is MyB  # the lazy import of alpha did not put the built-in back
    assert builtin_package.get("a").__module__ == "toyplugins.alpha"


def test_a_plugin_registered_after_loading_replaces_the_builtin(builtin_package):
    assert builtin_package.names() == ["a", "b"]

    class MyA:
        name = "a"

    builtin_package.register(MyA)
    assert builtin_package.get("a") is MyA
    with pytest.raises(InputError, match="unknown toy 'c'; expected one of"):
        builtin_package.get("c")
    with pytest.raises(InputError, match="needs a non-empty string 'name'"):
        Registry("toy").register(object())
