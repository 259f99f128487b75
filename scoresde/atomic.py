"""Files written atomically: a temporary file in the target's folder, flushed and fsynced, then
``os.replace``d over the target, so a reader (or a crash) never sees half a file: either the old
contents or the new.  Checkpoints, shards, statistics and the apps' JSON results all go through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

PathLike = Union[str, os.PathLike]

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json"]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(f)`` on a binary file that becomes ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: PathLike, obj: Any, **kwargs) -> Path:
    """Write ``obj`` as JSON (``json.dumps`` keyword arguments, e.g. ``indent=2``) atomically."""
    return atomic_write_bytes(path, json.dumps(obj, **kwargs).encode())
