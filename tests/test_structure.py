"""The package's shape: no import circle, and a layered charge path (issue "one charge path")."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "llmctx"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module_graph() -> dict[str, set[str]]:
    files = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package[: len(package) - node.level + 1] + ([base] if base else [])
                    )
                for target in (base, *(f"{base}.{a.name}" for a in node.names)):
                    if target in files and target != name:
                        deps.add(target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
        graph[name] = deps
    return graph


def test_no_import_circle() -> None:
    """No llmctx module imports, at module level, a module that imports it back."""
    graph = _module_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if node.startswith(dep + "."):
                continue  # a module importing its own package's __init__ is not a circle
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_a_budgeted_call_walks_a_short_layered_path() -> None:
    """One budgeted chat.completions.create runs through at most 8 llmctx files that call
    others, and no file calls back up into one the walk came down through."""
    pytest.importorskip("openai")
    pytest.importorskip("httpx2")
    spec = importlib.util.spec_from_file_location("walk", BENCHMARKS / "walk_charge_path.py")
    assert spec is not None and spec.loader is not None
    walk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(walk)
    result = walk.walk()
    assert "llmctx/_charge.py" in result["path"]
    assert len(result["path"]) <= 8, result["path"]
    assert result["returns"] == []
