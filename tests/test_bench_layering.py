"""scoresde/bench/ imports only the core: never scoresde.apps or Hydra, and matplotlib / scipy only
inside the functions that need them (read from the source, not from a list)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scoresde" / "bench"
FILES = sorted(BENCH.glob("*.py"))
LAZY = ("matplotlib", "scipy")          # heavy or dev-only: imported when a function runs
FORBIDDEN = ("hydra", "omegaconf")


def _imports(path: Path):
    """(absolute module name, at module level?) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = "scoresde.bench"  # the __package__ of every file here, __init__.py included
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            if node.module is None:  # from .. import metrics: the names are modules
                out += [(f"{mod}.{a.name}", id(node) in top) for a in node.names]
            else:
                out.append((mod, id(node) in top))
    return out


def test_the_bench_files_are_read():
    names = {p.stem for p in FILES}
    assert {"grid", "problems", "runner", "tables", "plots", "likelihood", "overhead", "reference"} <= names
    mods = dict.fromkeys(m for m, _ in _imports(BENCH / "runner.py"))
    assert "scoresde.metrics" in mods and "scoresde.bench.grid" in mods   # relative imports resolved


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_bench_imports_only_the_core_and_lazy_heavy_packages(path):
    for mod, at_top in _imports(path):
        root = mod.split(".")[0]
        assert root not in FORBIDDEN, f"{path.name} imports {mod}"
        assert not mod.startswith("scoresde.apps"), f"{path.name} imports {mod} (the apps sit above the engine)"
        assert mod != "scoresde.cli", f"{path.name} imports {mod}"
        if root in LAZY:
            assert not at_top, f"{path.name} imports {mod} at module level; import it inside the function"


def test_importing_the_engine_loads_neither_hydra_nor_matplotlib():
    code = ("import sys, scoresde.bench; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'matplotlib')))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"
