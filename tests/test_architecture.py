"""The layout holds: no import cycles, ``serving`` never imports ``training``, nothing imports ``benchmarks``.

The import graph is read from the source (``ast``), not by importing, and counts every import,
including those under ``TYPE_CHECKING`` and inside functions: a cycle hidden behind a lazy import
is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("serving", "training", "benchmarks")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_proto" in path.parts:
                continue  # generated code
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports (a ``from pkg import sub`` counts as ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets = [source]
            targets += [
                f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules
            ]
        else:
            continue
        for target in targets:
            # `import a.b.c` and `from a.b.c import x` depend on the deepest project module named.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path, _modules()) for name, path in _modules().items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_graph_is_read() -> None:
    assert "serving.recommend.engine" in GRAPH
    assert "serving.bundle.format" in GRAPH["serving.recommend.engine"]
    assert "serving.model.features" in GRAPH["training.features"]


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(GRAPH) == []


def test_serving_never_imports_training_or_benchmarks() -> None:
    bad = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.startswith("serving")
        for target in targets
        if target.split(".")[0] in ("training", "benchmarks")
    }
    assert bad == set()


def test_training_never_imports_benchmarks() -> None:
    bad = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.startswith("training")
        for target in targets
        if target.startswith("benchmarks")
    }
    assert bad == set()


def test_the_model_file_imports_only_torch_and_the_standard_library() -> None:
    tree = ast.parse((ROOT / "serving" / "model" / "towers.py").read_text())
    roots = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    roots |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert roots <= {"torch", "__future__", "dataclasses", "math", "typing", "collections", "enum"}


@pytest.mark.parametrize(
    "package", sorted(n for n, p in _modules().items() if p.name == "__init__.py" and n != "benchmarks")
)
def test_every_package_says_what_it_owns_and_exports_explicitly(package: str) -> None:
    path = _modules()[package]
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path} has no docstring"
    exported = [
        node
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
    ]
    assert exported, f"{path} has no __all__"


def test_mlflow_folder_holds_no_python() -> None:
    assert not list((ROOT / "mlflow").rglob("*.py"))


def test_no_flat_folder_of_dozens_of_modules() -> None:
    for package in ("serving", "training"):
        for folder in [ROOT / package, *[p for p in (ROOT / package).rglob("*") if p.is_dir()]]:
            if "_proto" in folder.parts or "__pycache__" in folder.parts:
                continue
            assert len(list(folder.glob("*.py"))) <= 15, f"{folder} has more than 15 modules"
