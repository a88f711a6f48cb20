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


# ----------------------------------------------------------------------------- floors (docs/architecture.md)

ARCHITECTURE = ROOT.parent / "docs" / "architecture.md"


def _floors() -> dict[str, int]:
    """`ftcot_jax.<name>` -> floor, from the "Floors" table of docs/architecture.md."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Floors", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in cells[1].replace("`", "").split(","):
                floors[f"{PKG}.{name.strip()}"] = int(cells[0])
    return floors


def _floor_of(module: str, floors: dict[str, int]) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 1, -1):  # the longest listed prefix: a package's floor covers its modules
        if ".".join(parts[:n]) in floors:
            return floors[".".join(parts[:n])]
    return None


def _climbs(graph: dict[str, set[str]], floors: dict[str, int]) -> list[str]:
    out = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            fa, fb = _floor_of(a, floors), _floor_of(b, floors)
            if fa is not None and fb is not None and fb > fa:
                out.append(f"{a} (floor {fa}) imports {b} (floor {fb})")
    return out


def test_every_module_has_a_floor():
    floors = _floors()
    assert len(set(floors.values())) >= 5  # the table was found and read
    unplaced = [m for m in MODULES if m != PKG and _floor_of(m, floors) is None]
    assert unplaced == [], f"add these to the Floors table of docs/architecture.md: {unplaced}"


def test_no_import_climbs_a_floor():
    graph, _ = _edges()
    assert _climbs(graph, _floors()) == []


def test_the_floor_check_finds_a_climb():
    floors = {f"{PKG}.train": 5, f"{PKG}.trained": 6}
    graph = {f"{PKG}.train.loop": {f"{PKG}.trained"}, f"{PKG}.trained": {f"{PKG}.train.loop"}}
    assert _climbs(graph, floors) == [f"{PKG}.train.loop (floor 5) imports {PKG}.trained (floor 6)"]
