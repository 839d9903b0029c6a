"""The staircase holds: no import cycle inside src/gpuprov (function-local imports counted), nothing below the
facade imports it, the product never imports the lab, and no function runs over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from ..conftest import REPO

PKG = REPO / "src" / "gpuprov"
MAX_LINES = 80


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        mods[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = _modules()

    def targets(cur: str, n: ast.AST) -> list[str]:
        pkg = cur if mods[cur].name == "__init__.py" else cur.rsplit(".", 1)[0]
        if isinstance(n, ast.ImportFrom):
            if n.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - n.level + 1] + ([n.module] if n.module else []))
            else:
                base = n.module or ""
            return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in n.names]
        return [a.name for a in n.names]  # type: ignore[attr-defined]

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                for t in targets(m, n):
                    while t and t not in mods and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t in mods and t != m and not (mods[t].name == "__init__.py" and m.startswith(t + ".")):
                        graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_a_cycle_is_seen():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_below_the_facade_imports_it_and_the_product_never_imports_the_lab():
    graph = import_graph()
    assert [m for m, deps in graph.items() if "gpuprov.api" in deps] == []
    product = [m for m in graph if not m.startswith("gpuprov.sim")]
    assert [m for m in product if any(d.startswith("gpuprov.sim") for d in graph[m])] == []


def test_no_function_over_80_lines():
    files = [*PKG.rglob("*.py"), REPO / "tasks.py", *(REPO / "bench").rglob("*.py")]
    long = []
    for p in files:
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES:
                long.append(f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert long == []
