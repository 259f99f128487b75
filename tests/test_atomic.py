"""Atomic writes (scoresde/atomic.py): the target holds the old or the new contents, never a part."""
import json

import pytest

from scoresde.atomic import atomic_write, atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_the_file_whole(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic_write_json(p, {"x": 1}, indent=2)
    assert json.loads(p.read_text()) == {"x": 1}
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "ckpt.pt"
    atomic_write_bytes(p, b"old contents")

    def half_then_fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, half_then_fail)
    assert p.read_bytes() == b"old contents"
    assert [q.name for q in tmp_path.iterdir()] == ["ckpt.pt"]
