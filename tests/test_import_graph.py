"""The project's import graph, read from the source with ast: acyclic, and the runner layered."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "methods")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def imported(path: Path, name: str, modules: dict[str, Path], *, lazy: bool) -> set[str]:
    """Project modules `path` imports (never counting `if TYPE_CHECKING:`); `lazy` adds imports inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(t for t in _targets(node, package, modules) if t in modules and t != name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(*, lazy: bool = False) -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(path, name, modules, lazy=lazy) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of modules (first == last), or None (iterative DFS)."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the stack, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return [*path[path.index(child):], child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_project_import_graph_is_acyclic():
    """Module-level imports: the ones whose order matters when a module is first imported."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_project_is_acyclic_counting_imports_inside_functions_too():
    """A function-level import hides a cycle from the interpreter, not from the design: none anywhere."""
    graph = import_graph(lazy=True)
    assert {"harness.runner.run", "harness.final", "methods.registry"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (counting imports inside functions): " + " -> ".join(cycle or [])


def test_function_level_imports_are_counted():
    lazy, eager = import_graph(lazy=True), import_graph()
    assert any(lazy[m] - eager[m] for m in lazy), "the lazy graph sees the imports inside functions"


def test_runner_layers():
    graph = import_graph(lazy=True)
    backends = {m for m in graph if m.startswith(("harness.runner.optuna_backend", "harness.runner.ray_backend",
                                                   "harness.runner.local"))}
    assert not graph["harness.runner.common"] & backends, "common imports no backend"
    assert not graph["harness.runner.registry"] & backends, "the registry finds backends by module name only"
    assert not {m for m in graph["harness.runner.ray_backend"] if m.startswith("harness.runner.optuna_backend")}
    assert not {m for m in graph["harness.search"] if m.startswith("harness.runner")}
    search_source = (ROOT / "harness" / "search.py").read_text()
    assert "import optuna" not in search_source and "from optuna" not in search_source
