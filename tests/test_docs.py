"""The README and the documentation site: every Python block runs as written, the Markdown is
sound, the README is a front page whose commands CI runs, every benchmark script is documented,
and ``mkdocs build --strict`` passes.

Blocks fenced as ```python run here; blocks fenced as ```python no-run (commands that need a GPU,
a data set or hours; docs/contributing.md) are shown but not run.
"""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
NO_RUN = "python no-run"


def pages():
    """README.md and every page under docs/, in a stable order. docs/results is a link to
    benchmarks/results (generated tables, served by the site), not hand-written pages."""
    found = [README]
    for dirpath, dirnames, filenames in os.walk(DOCS):      # os.walk does not follow the link
        dirnames[:] = sorted(d for d in dirnames if not (pathlib.Path(dirpath) / d).is_symlink())
        found += [pathlib.Path(dirpath) / f for f in sorted(filenames) if f.endswith(".md")]
    return found


def page_id(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


PAGES = pages()


def fence_structure(text: str, name: str = "page"):
    """Walk the Markdown line by line: every ``` opens or closes a fence (a fence opener may name a
    language). Returns (blocks, headings, unclosed): code blocks as (language, first line, body),
    the headings seen outside code, and the line of a fence still open at the end (or None)."""
    blocks, headings = [], []
    open_at, lang, body = None, None, []
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if open_at is None:
                open_at, lang, body = i, line.strip()[3:].strip(), []
            else:
                if line.strip() != "```":
                    raise AssertionError(f"{name} line {i}: a closing fence carries text: {line!r}")
                blocks.append((lang, open_at, body))
                open_at = None
        elif open_at is None:
            if line.startswith("#"):
                headings.append((i, line))
        else:
            body.append(line)
    return blocks, headings, open_at


def runnable_blocks(text: str, name: str = "page"):
    """(first line, code) of every block fenced as ```python; ```python no-run blocks are left out."""
    blocks, _, _ = fence_structure(text, name)
    return [(line, "\n".join(body) + "\n") for lang, line, body in blocks if lang == "python"]


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_fences_are_closed_and_every_block_names_its_language(path):
    name = page_id(path)
    blocks, _, unclosed = fence_structure(path.read_text(), name)
    assert unclosed is None, f"{name}: the fence opened at line {unclosed} is never closed"
    for lang, line, _ in blocks:
        assert lang, f"{name} line {line}: a code block without a language (a stray fence?)"
        if lang.startswith("python"):
            assert lang in ("python", NO_RUN), (
                f"{name} line {line}: a python fence reads {lang!r}; write 'python' or '{NO_RUN}'")


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_no_heading_falls_inside_a_code_block(path):
    name = page_id(path)
    blocks, headings, _ = fence_structure(path.read_text(), name)
    for lang, line, body in blocks:
        for row in body:
            assert not re.match(r"#{1,6} [A-Z]", row), (
                f"{name}: the code block opened at line {line} ({lang}) swallows the heading {row!r}")
    assert headings and headings[0][1].startswith("# "), f"{name}: the page does not open with a # title"


def test_structure_check_catches_a_stray_fence():
    broken = "# T\n\n```python\nx = 1\n```\n\nprint(1)\n```\n\n## Benchmarks\ntext\n"
    blocks, headings, unclosed = fence_structure(broken)
    assert unclosed is not None or any(not lang for lang, _, _ in blocks)
    assert "## Benchmarks" not in [h for _, h in headings]


def test_no_run_blocks_are_shown_but_not_run():
    text = "# T\n\n```python\nx = 1\n```\n\n```python no-run\nraise SystemExit('needs a GPU')\n```\n"
    assert [code for _, code in runnable_blocks(text)] == ["x = 1\n"]
    assert [lang for lang, _, _ in fence_structure(text)[0]] == ["python", NO_RUN]


def test_readme_is_a_front_page():
    text = README.read_text()
    n_lines = len(text.splitlines())
    assert n_lines <= 200, f"README.md has {n_lines} lines; the details belong in docs/"
    titles = [h for _, h in fence_structure(text, "README.md")[1]]
    for needed in ("## Why scoresde", "## Install and test", "## The main job", "## Quick start", "## Results",
                   "## Documentation"):
        assert needed in titles, f"README: heading {needed!r} missing or inside a code block"
    assert "train.threads=1" in text, "README: the shared-CPU advice (train.threads=1) is missing"


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    blocks, _, _ = fence_structure(README.read_text(), "README.md")
    install = next(body for lang, _, body in blocks if lang == "bash" and body and body[0].startswith("pip install"))
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    commands = [c for c in ci if not c.startswith(("set ", "cd "))]
    assert commands == [line.strip() for line in install], (
        f".ci/run runs {commands}, the README says {install}")
    assert '.[dev,interop,docs]' in install[0], "the install command must bring the docs extra (the docs test)"


def test_each_python_example_appears_once():
    seen = {}
    for path in PAGES:
        for line, code in runnable_blocks(path.read_text(), page_id(path)):
            assert code not in seen, f"{page_id(path)} line {line} repeats the example of {seen[code]}"
            seen[code] = f"{page_id(path)} line {line}"


def _relative_links(text: str):
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


def test_readme_links_point_at_files_that_exist():
    for target in _relative_links(README.read_text()):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_every_benchmark_script_has_its_command_and_results_on_the_benchmarks_page():
    page = (DOCS / "benchmarks.md").read_text()
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        assert f"python benchmarks/{script.name}" in page, f"docs/benchmarks.md does not give {script.name}'s command"
    for target in _relative_links(page):
        if target.startswith("results/"):
            assert (ROOT / "benchmarks" / target).exists(), f"docs/benchmarks.md links to a missing {target}"


@pytest.mark.parametrize("path", [p for p in PAGES if runnable_blocks(p.read_text(), page_id(p))], ids=page_id)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    """Each block in a fresh namespace (a reader copies one block at a time), in a temporary cwd."""
    monkeypatch.chdir(tmp_path)
    for line, code in runnable_blocks(path.read_text(), page_id(path)):
        exec(compile(code, f"{path}:{line}", "exec"), {"__name__": "__docs__"})


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the docs extra: pip install -e '.[docs]')")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    assert (tmp_path / "site" / "reference" / "samplers" / "index.html").exists()
