"""The package's import graph has no cycle, read from the source with `ast` (no module is imported).

Every import statement counts: at module level, inside functions (a lazy import runs sooner or later, and then
the two modules need each other) and under ``if TYPE_CHECKING:`` (never run, but a cycle there is still two
concepts that each name the other, the layering this test keeps). ``from calib_checks.x import y`` is an edge
to ``calib_checks.x.y`` when that is a module, else to ``calib_checks.x``; and importing a submodule runs its
package's ``__init__`` first, so every ``pkg.sub`` has an edge to ``pkg``. Loading by a string
(``importlib.import_module("calib_checks.sources.checkpoint")``) is no edge: nothing names the module until then.
A cycle is a strongly connected component of more than one module; the failure names each one with the import
lines that close it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` at `line` of `source`'s file (0: the implicit edge of a submodule to its package)."""

    source: str
    target: str
    line: int


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package in folder `root` (a package is its
    ``__init__.py``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The modules of `known` that the import statement `node` in `module` names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: counted from the module's package (the module itself when it is one)
            parts = module.split(".")
            anchor = parts[: len(parts) - node.level + (1 if is_package else 0)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    targets = []
    for name in names:
        # `import a.b.c` names a.b.c; the packages above it come in through their submodule-to-package edges.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            targets.append(name)
    return targets


def import_graph(root: Path, package: str) -> list[Edge]:
    """Every import edge between the package's own modules (module docstring)."""
    known = modules_of(root, package)
    edges = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges += [Edge(module, t, node.lineno) for t in _imported(node, module, is_package, known)
                          if t != module]
        parent = module.rpartition(".")[0]
        if parent in known:
            edges.append(Edge(module, parent, 0))
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted, in sorted order."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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
            visit(node)
    return sorted(found)


def describe(component: list[str], edges: list[Edge], root: Path, package: str) -> str:
    """One cycle: its modules, then each import between them with where it is."""
    files = modules_of(root, package)
    inside = sorted({e for e in edges if e.source in component and e.target in component},
                    key=lambda e: (e.source, e.line, e.target))
    lines = [f"cycle: {', '.join(component)}"]
    for edge in inside:
        where = files[edge.source].relative_to(root.parent)
        how = "a submodule runs its package's __init__" if edge.line == 0 else f"{where}:{edge.line}"
        lines.append(f"    {edge.source} -> {edge.target} ({how})")
    return "\n".join(lines)


def test_the_package_has_no_import_cycle() -> None:
    root = REPO / "calib_checks"
    edges = import_graph(root, "calib_checks")
    assert len({e.source for e in edges}) > 20  # the walk read the package (a wrong root finds no cycle either)
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(describe(c, edges, root, "calib_checks") for c in found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # A lazy import inside a function closes a cycle with a module-level one.
        ({"__init__.py": "", "a.py": "import pkg.b\n", "b.py": "def f():\n    from pkg import a\n"},
         [["pkg.a", "pkg.b"]]),
        # `from pkg.sub import name` is an edge to pkg.sub (name is no module), and pkg.sub -> pkg is implied.
        ({"__init__.py": "", "sub/__init__.py": "def f():\n    from pkg.sub.leaf import X\n",
          "sub/leaf.py": "from pkg.sub import helper\n"},
         [["pkg.sub", "pkg.sub.leaf"]]),
        # A package's __init__ importing a submodule that imports nothing of it: still a cycle (the submodule runs
        # the __init__ first).
        ({"__init__.py": "from pkg import a\n", "a.py": "X = 1\n"}, [["pkg", "pkg.a"]]),
        # A relative import and an import under TYPE_CHECKING count too.
        ({"__init__.py": "", "a.py": "from . import b\n",
          "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import Y\n"},
         [["pkg.a", "pkg.b"]]),
        # No cycle: one-way imports, a string-loaded module, a third-party import.
        ({"__init__.py": "", "a.py": "import importlib\nimport numpy\nimportlib.import_module('pkg.b')\n",
          "b.py": "from pkg.a import Z\n"}, []),
    ],
)
def test_the_walk_finds_cycles_through_every_kind_of_import(tmp_path: Path, files: dict[str, str],
                                                            expected: list[list[str]]) -> None:
    root = tmp_path / "pkg"
    _write(root, files)
    edges = import_graph(root, "pkg")
    assert cycles(edges) == expected
    for component in expected:
        assert describe(component, edges, root, "pkg").startswith(f"cycle: {', '.join(component)}")
