"""The package's layers, checked on its source with the standard library's ``ast``.

Every ``import`` a module of ``metaembed`` runs (at the top or inside a function; only
``if TYPE_CHECKING:`` blocks are skipped, since they never run) is an edge of the runtime
import graph. The graph must have no cycle, and no module may import one of a higher layer
or of a peer of its own layer (``index`` and ``model`` know nothing of each other). The
layers are those of docs/architecture.md; a new top-level module or subpackage must be placed
in :data:`LAYERS` (the test names it otherwise).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "metaembed"

#: Bottom to top: a module may import its own top-level unit and the units of lower layers only.
LAYERS: list[set[str]] = [
    {"errors"},
    {"budget", "registry", "jsonl", "cache", "workers", "native", "ocr"},
    {"scoring"},
    {"index", "model"},
    {"training", "evaluation", "ingest"},
    {"retriever"},
    {"quickstart", "serving", "integrations", "client"},
    {"distributed"},  # serves the HTTP app on Ray, so it sits above serving; the CLI's --ray options call it
    {"cli"},
    {"__init__"},  # the lazy public facade: ``import metaembed`` imports nothing eagerly
]


def _module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["metaembed", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The metaembed modules that ``name`` (the module in ``path``) imports when it runs."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_node(other)
            else:
                visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # ``from a import b`` imports the module a.b when there is one
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = _module_files()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(unit: str) -> int:
    for rank, units in enumerate(LAYERS):
        if unit in units:
            return rank
    raise AssertionError(f"metaembed.{unit} is in no layer: place it in LAYERS here and in docs/architecture.md")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_import_graph_sees_lazy_imports_and_skips_type_checking_blocks() -> None:
    graph = import_graph()
    # a function-level import counts (the CLI imports the library inside its commands) ...
    assert "metaembed.retriever" in graph["metaembed.cli"]
    # ... ``from package import submodule`` points at the submodule, not the package ...
    assert "metaembed.native" in graph["metaembed.scoring.kernel"]
    # ... and an ``if TYPE_CHECKING:`` import does not (saving.py names the model class there only)
    assert "metaembed.model.saving" in graph and "metaembed.model.modeling" not in graph["metaembed.model.saving"]
    assert sum(len(targets) for targets in graph.values()) > 150


def test_no_import_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_no_import_runs_up_the_layers_or_across_to_a_peer() -> None:
    wrong = []
    for module, targets in sorted(import_graph().items()):
        mine = _unit(module)
        for target in sorted(targets):
            theirs = _unit(target)
            if theirs != mine and _layer(theirs) >= _layer(mine):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_docs_architecture_names_every_layer_unit() -> None:
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    present = {_unit(module) for module in import_graph()}
    missing = [unit for unit in sorted(present - {"__init__"}) if not re.search(rf"`{unit}(/|\.py)?`", text)]
    assert missing == []


def test_docs_architecture_paths_exist() -> None:
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"`(metaembed/[\w/.]*)`", text))
    assert len(paths) >= 8
    assert sorted(path for path in paths if not (PACKAGE.parent / path).exists()) == []
