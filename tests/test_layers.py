"""The package's three layers import one way only: apps -> bench -> core; and no two modules
import each other, directly or around a circle (:func:`test_no_import_cycles_between_modules`).

- the core (``scoresde/`` minus ``bench/`` and ``apps/``) never imports ``scoresde.bench`` or
  ``scoresde.apps`` (not even lazily inside a function), and imports neither Hydra (nor its
  OmegaConf) nor matplotlib at import time; matplotlib may be imported inside a plotting function;
- ``scoresde/bench/`` imports the core only: never ``scoresde.apps``, Hydra or OmegaConf, and
  matplotlib and scipy (a dev extra) only inside the functions that need them;
- ``scoresde/apps/`` (and the ``python -m scoresde`` dispatcher, ``__main__.py``) is the only place
  that imports Hydra.

The imports are read from the source with :mod:`ast` (every ``import`` statement, at any depth),
so a new module is checked without being listed here.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scoresde"
HYDRA = ("hydra", "omegaconf")
PLOTTING = ("matplotlib",)


def layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    if rel[0] in ("apps", "__main__.py"):
        return "apps"
    if rel[0] == "bench" or rel[0] == "bench.py":
        return "bench"
    return "core"


def module_name(path: Path) -> str:
    parts = ("scoresde",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[Tuple[str, int, bool]]:
    """Every module an ``import`` in ``path`` names, absolute, with its line and whether it runs at
    import time (outside any function body)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def walk(node: ast.AST, in_function: bool) -> Iterator[Tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno, not in_function
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                yield mod, child.lineno, not in_function
                for alias in child.names:  # `from . import bench` imports scoresde.bench
                    yield f"{mod}.{alias.name}", child.lineno, not in_function
            yield from walk(child, nested)

    yield from walk(tree, False)


def sources() -> List[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20, "the package's sources were not found"
    return files


def _is(mod: str, roots) -> bool:
    return any(mod == r or mod.startswith(r + ".") for r in roots)


def violations() -> List[str]:
    bad, seen = [], set()
    for path in sources():
        where = layer(path)
        for mod, line, at_import in imports(path):
            loc = f"{path.relative_to(PACKAGE.parent)}:{line} imports {mod}"
            if (path, line, mod.partition(".")[0] if not mod.startswith("scoresde.") else mod) in seen:
                continue  # `from a.b import c` names a.b and a.b.c: one report a line
            seen.add((path, line, mod.partition(".")[0] if not mod.startswith("scoresde.") else mod))
            if where == "core" and _is(mod, ("scoresde.bench", "scoresde.apps")):
                bad.append(f"{loc} (the core must not import bench or apps)")
            if where == "core" and at_import and _is(mod, HYDRA + PLOTTING):
                bad.append(f"{loc} at import time (the core loads no Hydra or matplotlib)")
            if where != "apps" and _is(mod, HYDRA):
                bad.append(f"{loc} (only scoresde/apps uses Hydra)")
            if where == "bench" and _is(mod, ("scoresde.apps",)):
                bad.append(f"{loc} (bench imports the core only)")
            if where == "bench" and at_import and _is(mod, PLOTTING + ("scipy",)):
                bad.append(f"{loc} at import time (bench imports matplotlib and scipy lazily)")
    return bad


def test_imports_point_down_only():
    bad = violations()
    assert not bad, "layering broken:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["scoresde", "scoresde.bench"])
def test_import_loads_neither_hydra_nor_matplotlib(package):
    code = (f"import sys, {package}\n"
            "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'matplotlib'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "", f"import {package} loaded {out.stdout.strip()}"


def test_every_layer_is_read():
    layers = {layer(p) for p in sources()}
    assert layers == {"core", "bench", "apps"}
    names = {p.stem for p in sources() if layer(p) == "bench"}
    assert {"grid", "problems", "runner", "tables", "plots", "likelihood", "overhead", "reference"} <= names
    mods = {m for m, _, _ in imports(PACKAGE / "bench" / "runner.py")}
    assert "scoresde.metrics" in mods and "scoresde.bench.grid" in mods   # relative imports resolved


def test_layer_check_sees_relative_lazy_and_from_imports(tmp_path, monkeypatch):
    """The checker itself can fail: a fake core module with each kind of forbidden import."""
    fake = tmp_path / "scoresde"
    (fake / "samplers").mkdir(parents=True)
    (fake / "bench").mkdir()
    (fake / "__init__.py").write_text("from . import bench\n")
    (fake / "samplers" / "__init__.py").write_text(
        "from ..apps.schema import X\n\ndef f():\n    import matplotlib\n    from hydra import main\n")
    (fake / "bench" / "__init__.py").write_text("import scoresde.apps.bench\n")
    for i in range(20):
        (fake / f"m{i}.py").write_text("import torch\nimport matplotlib.pyplot as plt\n" if i == 0 else "x = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    bad = "\n".join(violations())
    assert "scoresde/__init__.py:1 imports scoresde.bench" in bad
    assert "scoresde/samplers/__init__.py:1 imports scoresde.apps.schema" in bad
    assert "imports hydra (only scoresde/apps uses Hydra)" in bad
    assert "scoresde/m0.py:2 imports matplotlib.pyplot at import time" in bad
    assert "scoresde/bench/__init__.py:1 imports scoresde.apps.bench" in bad
    assert "samplers/__init__.py:4 imports matplotlib at import time" not in bad  # lazy is allowed


# -- no import circles between modules --------------------------------------------------------
def _module_files() -> dict:
    return {module_name(p): p for p in sources()}


def import_graph(files=None) -> dict:
    """Module -> the scoresde modules it imports (at import time or lazily inside a function).

    ``from pkg import name`` points at ``pkg`` (its ``__init__`` runs) and at ``pkg.name`` where that
    is a module.  A
    module importing one of its own ancestor packages is not an edge: the package's ``__init__``
    re-exports the module, so the import only reads names the package already holds.
    """
    files = files if files is not None else _module_files()
    graph = {}
    for mod, path in files.items():
        edges = set()
        for name, _, _ in imports(path):
            if not (name == "scoresde" or name.startswith("scoresde.")):
                continue
            while name not in files and "." in name:   # `pkg.name` where name is not a module
                name = name.rpartition(".")[0]
            if name == mod or mod.startswith(name + "."):
                continue
            edges.add(name)
        graph[mod] = edges
    return graph


def cycles(graph: dict) -> List[List[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a loop."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _loop(graph: dict, comp: List[str]) -> str:
    """One concrete circle inside a component, for the failure message: a -> b -> ... -> a."""
    start, inside = comp[0], set(comp)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in inside)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return " -> ".join(path + [start])
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return " <-> ".join(comp)
        path.append(fresh[0])
        seen.add(fresh[0])


def test_no_import_cycles_between_modules():
    graph = import_graph()
    assert len(graph) > 40 and "scoresde.likelihood.elbo" in graph
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(_loop(graph, c) for c in found)


def test_cycle_check_finds_a_lazy_circle_and_ignores_parent_packages(tmp_path, monkeypatch):
    """The checker itself can fail: a circle closed by a lazy import is found; a module importing
    its own package (which re-exports it) is not a circle."""
    fake = tmp_path / "scoresde"
    (fake / "fam").mkdir(parents=True)
    (fake / "__init__.py").write_text("from .fam import f\n")
    (fake / "fam" / "__init__.py").write_text("from .a import f\n")
    (fake / "fam" / "a.py").write_text("from . import b\n\ndef f():\n    from .. import fam\n")
    (fake / "fam" / "b.py").write_text("x = 1\n")
    (fake / "c.py").write_text("from .fam import b\n")
    (fake / "d.py").write_text("def g():\n    from .e import y\n")
    (fake / "e.py").write_text("from .d import g\ny = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    files = {module_name(p): p for p in sorted(fake.rglob("*.py"))}
    graph = import_graph(files)
    assert graph["scoresde.c"] == {"scoresde.fam", "scoresde.fam.b"}
    assert graph["scoresde.fam.a"] == {"scoresde.fam.b"}        # `from .. import fam`: its own package
    assert cycles(graph) == [["scoresde.d", "scoresde.e"]]
