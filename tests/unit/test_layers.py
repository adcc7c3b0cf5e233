"""The shape of the house (issue 31, docs/architecture.md): no import circle between the files of
``edge/``, nothing from ``training/`` or ``build_engines/``, no module over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDGE = ROOT / "edge"
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, run_time_only: bool) -> set[str]:
    """Modules a file imports: at import time only (module level, not under TYPE_CHECKING), or anywhere."""
    tree = ast.parse(path.read_text())
    nodes: list[ast.AST] = []
    if run_time_only:
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            nodes.extend(ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node])
    else:
        nodes = list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in EDGE.rglob("*.py")}
    return {name: {m for m in _imports(path, True) if m in files and m != name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_between_the_files_of_edge():
    graph = _graph()
    assert len(graph) > 80  # the walk found the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_walk_finds_a_circle_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_edge_imports_nothing_from_training_or_build_engines():
    wrong = {
        str(p.relative_to(ROOT)): sorted(
            m for m in _imports(p, False) if m.split(".")[0] in ("training", "build_engines")
        )
        for p in EDGE.rglob("*.py")
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_no_module_of_edge_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n for p in EDGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
    assert len((EDGE / "cli.py").read_text().splitlines()) <= 350
