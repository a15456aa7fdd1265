"""The import graph of accord's own packages, read from the source with `ast` (nothing is
imported, so a module that would fail to import is still checked).

Two rules keep the floors apart:
- the lower floors (actors, learner, envs, replay, models, combiners) never import `accord`,
  the launcher package on top of them: what they need lives on their own floor or below, so
  a learner or an env can be used and tested without the launcher;
- no import circle among the project's modules. Imports inside functions count too: they
  only defer the circle to the first call, and they hide which module really depends on which.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("accord", "actors", "learner", "envs", "replay", "models", "combiners", "ingest", "bench")
LOWER_FLOORS = ("actors", "learner", "envs", "replay", "models", "combiners")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name `from ... import` reads from (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a module's `.` is its package
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of the project's modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, modules: dict[str, Path]) -> dict[str, int]:
    """Project modules that `module` imports, anywhere in its body, with the first line."""
    path = modules[module]
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, module, is_package)
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [f"{source}.{alias.name}" for alias in node.names] + [source]
        for name in names:
            target = _project_module(name, modules)
            if target is not None and target != module:
                found.setdefault(target, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    return {m: imports_of(m, modules) for m in modules}


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_lower_floors_never_import_the_launcher():
    upward = [f"{m}:{line} imports {t}" for m, targets in graph().items()
              if m.split(".")[0] in LOWER_FLOORS
              for t, line in targets.items() if t.split(".")[0] == "accord"]
    assert upward == []


def test_no_import_circles():
    edges = graph()
    circles = _cycles(edges)
    described = [" <-> ".join(c) + ": " + "; ".join(f"{a} -> {b} (line {edges[a][b]})"
                                                   for a in c for b in edges[a] if b in c)
                 for c in circles]
    assert described == []


def test_the_graph_sees_both_kinds_of_import():
    """The parser finds module-level, function-level and relative imports (else the two tests
    above would pass on an empty graph)."""
    edges = graph()
    assert "envs.base" in edges["envs.gridworld"]                    # relative, module level
    assert "accord.config" in edges["accord.cli"]                    # absolute, module level
    assert "accord.driver" in edges["accord.cli"]                    # inside a function
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
