"""The house a newcomer walks: ``job/`` in packages by stage, imports one way (down the floors below), no circle of
imports, a short top level, and every package saying what it does and what it may import. ``docs/architecture.md``
draws the same floors."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A unit (a package or a top-level module of job/) may import only units on lower floors (and its own
# modules); the same table is drawn in docs/architecture.md.
FLOORS: list[tuple[str, ...]] = [
    ("errors",),
    ("values", "stopping"),
    ("config", "fsutil"),
    ("runfolder", "nuscenes"),
    ("status",),
    ("sources", "decode", "model", "index", "project", "publish"),
    ("embed", "curate", "search"),
    ("eval",),
    ("serve", "viz"),
    ("steps",),
    ("pipeline",),
    ("merge", "compare"),
    ("cli",),
    ("__main__",),
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def _modname(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every module of the tree that ``path`` imports: top level, inside functions and under TYPE_CHECKING alike."""
    me, is_pkg = _modname(path), path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = me.split(".") if is_pkg else me.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules)
    found.discard(me)
    return {m for m in found if not me.startswith(m + ".")}  # a module's own parent packages are loaded anyway


def _graph(top: str) -> dict[str, set[str]]:
    paths = {_modname(p): p for p in (REPO / top).rglob("*.py")}
    modules = set(paths)
    return {m: _imports(p, modules) for m, p in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                out.append(sorted([v, *comp]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_every_unit_of_the_job_has_a_floor() -> None:
    units = {p.stem if p.is_file() else p.name for p in (REPO / "job").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert units - set(FLOOR) == set()


def test_imports_point_down_the_floors() -> None:
    upward = sorted(f"{m} -> {t}" for m, targets in _graph("job").items() for t in targets
                    if _unit(t) != _unit(m) and m != "job" and FLOOR[_unit(t)] >= FLOOR[_unit(m)])
    assert upward == []


def test_no_circle_of_imports() -> None:
    assert _cycles(_graph("job")) == []


def test_the_top_level_is_short() -> None:
    top = sorted(p.name for p in (REPO / "job").glob("*.py"))
    assert len(top) <= 12, top


def test_every_package_says_what_it_does_and_may_import() -> None:
    quiet = []
    for init in sorted((REPO / "job").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if len(doc) < 80 or not re.search(r"May import:", doc):
            quiet.append(init.relative_to(REPO).as_posix())
    assert quiet == []


def test_the_architecture_page_draws_these_floors() -> None:
    page = (REPO / "docs" / "architecture.md").read_text()
    for i, units in enumerate(FLOORS):
        row = f"| {i} | " + ", ".join(f"`{u}`" for u in units) + " |"
        assert row in page, row
