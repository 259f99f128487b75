"""docs/metrics.md: every python block not marked no-run runs (each in a fresh namespace)."""
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_runnable_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_metrics_page_example_runs(i, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"docs/metrics.md block {i}", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert out.strip(), "an example should show its result"
