"""Which checkpoints a run keeps, and which one ``train.resume=auto`` continues from.

Layout of ``<run dir>/checkpoints/``:

* ``last.pt``: the newest checkpoint (always);
* ``step_000001000.pt``, ...: with ``train.keep = k > 1``, the k - 1 checkpoints before it.  Each
  save renames the previous ``last.pt`` to its step's name (a rename: no second write), writes
  the new ``last.pt`` atomically, then deletes the oldest beyond k - 1;
* ``best.pt``: with ``train.best_metric``, the checkpoint of the evaluation with the best value.

Resuming (``train.resume=auto``): ``last.pt``, then the step files from the newest.  A file that
cannot be read (truncated by a full disk, corrupt) is reported with a warning and the next one
is tried; when checkpoints exist but none can be read (with k = 1 there is only ``last.pt``) the
run stops with a :class:`~scoresde.checkpoints.CheckpointError` naming the files: never a silent
restart from step 0, and never a crash loop of restarts that each overwrite the evidence.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..checkpoints import CheckpointError, load_checkpoint

log = logging.getLogger("scoresde")

__all__ = ["step_path", "kept_steps", "rotate", "resume_candidates", "load_resumable"]

_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def step_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{int(step):09d}.pt"


def kept_steps(folder: Path) -> List[Tuple[int, Path]]:
    """``(step, path)`` of the step files in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / n) for n in os.listdir(folder) if (m := _STEP_FILE.match(n))]
    return sorted(found, reverse=True)


def rotate(last: Path, previous_step: Optional[int], keep: int) -> None:
    """Before a new ``last.pt`` is written: keep the current one as its step file (``keep > 1``
    and its step known) and delete step files beyond the newest ``keep - 1``."""
    last = Path(last)
    if keep > 1 and previous_step is not None and last.is_file():
        os.replace(last, step_path(last.parent, previous_step))
    for _, p in kept_steps(last.parent)[max(keep - 1, 0):]:
        p.unlink(missing_ok=True)


def resume_candidates(last: Path) -> List[Path]:
    """What ``resume=auto`` tries, in order: ``last.pt``, then the step files from the newest."""
    last = Path(last)
    return ([last] if last.is_file() else []) + [p for _, p in kept_steps(last.parent)]


def load_resumable(last: Path, keep: int) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest readable checkpoint as ``(path, state)``; None when there is none at all."""
    tried: List[str] = []
    for path in resume_candidates(last):
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            tried.append(f"{path} ({e})")
            msg = f"cannot resume from {path}: {e}; trying the previous checkpoint"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
            continue
        if tried:
            msg = f"resuming from {path} (step {state['step']}) instead of the unreadable {tried[0].split(' (')[0]}"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
        return path, state
    if tried:
        hint = ("train.keep=1 keeps no earlier checkpoint; " if keep <= 1 else "")
        raise CheckpointError("train.resume=auto: no checkpoint can be read: " + "; ".join(tried) + ". "
                              + hint + "restore a copy, or remove these files to start again from step 0 "
                              "(refusing to do that silently)")
    return None
