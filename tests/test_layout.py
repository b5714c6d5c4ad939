"""The package's shape, as the map in sentiment/__init__.py states it: one core, four wings
that import only the core, no import circle, and modules and functions small enough to read."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sentiment"
WINGS = ("train", "scoring", "serve", "evaluate")


def _modules() -> dict[str, Path]:
    """Dotted name below the package ("serve.app", "bundle") -> file."""
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """The package's own modules that ``name`` imports, relative imports resolved, wherever they stand."""
    here = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                parts = base + (node.module.split(".") if node.module else [])
                found.add(".".join(parts))
                found.update(".".join(parts + [alias.name]) for alias in node.names)
            elif node.module and node.module.startswith("sentiment"):
                parts = node.module.split(".")[1:]
                found.add(".".join(parts))
                found.update(".".join(parts + [alias.name]) for alias in node.names)
    modules = _modules()
    return {m for m in found if m in modules and m != name}


def _wing(name: str) -> str | None:
    first = name.split(".")[0]
    return first if first in WINGS and "." in name else None


def test_no_wing_imports_another_wing():
    crossings = [f"{name} imports {other}" for name, path in _modules().items() if _wing(name)
                 for other in _imports(name, path) if _wing(other) not in (None, _wing(name))]
    assert crossings == []


def test_the_core_imports_no_wing_except_the_command_line():
    reaching_up = [f"{name} imports {other}" for name, path in _modules().items()
                   if _wing(name) is None and name not in ("cli", "__main__") and "." not in name
                   for other in _imports(name, path) if _wing(other)]
    assert reaching_up == []


def test_no_import_circle():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else nxt)
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package's __init__ importing its own module is no circle in practice.
    assert [c for c in circles if "__init__" not in c] == []


def test_modules_and_functions_stay_readable():
    too_long = []
    for name, path in _modules().items():
        source = path.read_text()
        if source.count("\n") > 500:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []
