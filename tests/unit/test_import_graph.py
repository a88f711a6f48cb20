"""The package's import graph: no cycles, and imports of our own modules at module top.

Edges are read from the source (ast), so a cycle hidden in a function-level import counts too. The only
function-level imports of our modules allowed are in `ftcot_jax/cli/`, whose handlers defer heavy stages on
purpose so that `ftcot tasks list` starts without JAX.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ftcot_jax

ROOT = Path(ftcot_jax.__file__).parent
PKG = "ftcot_jax"


def module_name(path: Path) -> str:
    parts = (PKG, *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _targets(node: ast.AST, here: str, is_package: bool) -> list[str]:
    """The modules of ours that an import statement loads (a `from pkg import sub` names the submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == PKG or a.name.startswith(PKG + ".")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if not (mod == PKG or mod.startswith(PKG + ".")):
        return []
    out = []
    for a in node.names:
        sub = f"{mod}.{a.name}"
        out.append(sub if sub in MODULES else mod)
    return out


def _edges() -> tuple[dict[str, set[str]], list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    deferred = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        top = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # typing-only imports never run
            for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
                top.add(id(sub))
        for node in ast.walk(tree):
            targets = [t for t in _targets(node, mod, is_package) if t != mod]
            if not targets:
                continue
            graph[mod].update(t for t in targets if t in MODULES)
            if id(node) not in top and not mod.startswith(f"{PKG}.cli"):
                deferred.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)}")
    return graph, deferred


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_the_package():
    graph, _ = _edges()
    assert f"{PKG}.cli" in graph and f"{PKG}.models.api" in graph
    assert f"{PKG}.models.api" in graph[f"{PKG}.evaluation"]  # a known edge is found


def test_no_import_cycles():
    graph, _ = _edges()
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_our_imports_are_at_module_top_outside_the_cli():
    _, deferred = _edges()
    assert deferred == []
