"""The README's Python examples run as written, and its Markdown structure is sound."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def fence_structure(text: str):
    """Walk the Markdown line by line: every ``` opens or closes a fence (a fence opener may name a
    language). Returns (blocks, headings, unclosed): code blocks as (language, first line, body),
    the headings seen outside code, and the line of a fence still open at the end (or None).
    Also returns every line inside a code block that reads like a Markdown heading followed by
    prose, which in a bash block would be a comment but in a language-less block means a heading
    was swallowed."""
    blocks, headings = [], []
    open_at, lang, body = None, None, []
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if open_at is None:
                open_at, lang, body = i, line.strip()[3:].strip(), []
            else:
                if line.strip() != "```":
                    raise AssertionError(f"README line {i}: a closing fence carries text: {line!r}")
                blocks.append((lang, open_at, body))
                open_at = None
        elif open_at is None:
            if line.startswith("#"):
                headings.append((i, line))
        else:
            body.append(line)
    return blocks, headings, open_at


def test_readme_fences_are_closed_and_every_block_names_its_language():
    blocks, headings, unclosed = fence_structure(README.read_text())
    assert unclosed is None, f"README: the fence opened at line {unclosed} is never closed"
    for lang, line, _ in blocks:
        assert lang, f"README line {line}: a code block without a language (a stray fence?)"


def test_readme_no_heading_falls_inside_a_code_block():
    blocks, headings, _ = fence_structure(README.read_text())
    for lang, line, body in blocks:
        for row in body:
            assert not re.match(r"#{1,6} [A-Z]", row), (
                f"README: the code block opened at line {line} ({lang}) swallows the heading {row!r}")
    titles = [h for _, h in headings]
    for needed in ("## Install and test", "## Sampling", "## Likelihoods", "## Training", "## Benchmarks"):
        assert needed in titles, f"README: heading {needed!r} missing or inside a code block"


def test_readme_structure_check_catches_a_stray_fence():
    broken = "# T\n\n```python\nx = 1\n```\n\nprint(1)\n```\n\n## Benchmarks\ntext\n"
    blocks, headings, unclosed = fence_structure(broken)
    assert unclosed is not None or any(not lang for lang, _, _ in blocks)
    assert "## Benchmarks" not in [h for _, h in headings]


def test_readme_each_python_example_appears_once():
    blocks, _, _ = fence_structure(README.read_text())
    bodies = ["\n".join(b) for lang, _, b in blocks if lang == "python"]
    assert len(bodies) == len(set(bodies)), "README repeats a python example"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
