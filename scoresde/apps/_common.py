"""What the apps share: the config location, the run directory and errors as exit codes (scores
are loaded by :func:`scoresde.checkpoints.load_score`, the one loader of every format)."""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Callable

import torch
from hydra.core.hydra_config import HydraConfig

from ..checkpoints import CheckpointError
from ..training import TrainingDiverged
from . import schema  # noqa: F401  (registers every group's schema: conf/ cannot compose without it)

log = logging.getLogger("scoresde")

# Errors a user can cause (a wrong value, a missing or foreign checkpoint): one line and exit 1,
# not a traceback.  Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, TrainingDiverged)


def config_path() -> str:
    """Where every Hydra app finds conf/: the source checkout this package sits in, else the
    installed package (``pkg://scoresde.conf``, conf/ mapped into it by setuptools).

    The checkout comes first: where another checkout is installed in editable mode, its
    ``scoresde.conf`` is importable from everywhere, and a checkout running its own code (pytest's
    ``pythonpath``, ``python -m scoresde`` in its root) would otherwise read that tree's configs.
    """
    local = Path(__file__).resolve().parents[2] / "conf"
    if (local / "train.yaml").is_file():
        return str(local)
    try:
        if importlib.util.find_spec("scoresde.conf") is not None:
            return "pkg://scoresde.conf"
    except ModuleNotFoundError:
        pass
    return str(local)


def report_user_error(e: BaseException) -> int:
    """Log a user error, print it as one ``error: ...`` line on stderr; the exit code (1)."""
    log.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    return 1


def exit_on_user_error(fn: Callable) -> Callable:
    """Decorate an app body: a user error (:data:`USER_ERRORS`) is reported as one line and the
    process exits 1; any other exception keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            sys.exit(report_user_error(e))

    return wrapper


def run_dir() -> Path:
    """The run directory Hydra made for this job."""
    return Path(HydraConfig.get().runtime.output_dir)


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator: the samplers draw on it and move the noise, so results match across devices."""
    return torch.Generator().manual_seed(int(seed))
