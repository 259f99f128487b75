"""What the apps share: the config location, the run directory, errors as exit codes, and the one
loader of a score from a checkpoint (ours, or a diffusers model folder)."""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
from hydra.core.hydra_config import HydraConfig

from ..sde import SDE
from ..train import CheckpointError, TrainingDiverged, load_model, resolve_device
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


def checkpoint_path(path: str) -> Path:
    """``path`` as given, or relative to Hydra's original working directory; a clear error if absent."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (give checkpoint=PATH to a file written "
                                f"by scoresde-train, e.g. outputs/train/<date>/<time>/checkpoints/last.pt, or "
                                f"checkpoint=diffusers:FOLDER for a diffusers model)")
    return p


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator: the samplers draw on it and move the noise, so results match across devices."""
    return torch.Generator().manual_seed(int(seed))


DIFFUSERS_PREFIX = "diffusers:"


class LoadedScore(NamedTuple):
    """What :func:`load_score` returns (unpacks as ``score_fn, sde, event_shape, meta``).

    ``meta``: ``source`` ("scoresde" or "diffusers"), ``path``, ``step`` (None for diffusers),
    ``data`` (the data set config the model was trained on, None for diffusers: the apps then
    need ``data=``), ``data_name``, ``scaler`` (``{"shift", "scale"}``: data space to model
    space) and ``config`` (the training config, None for diffusers).
    """

    score_fn: Any
    sde: SDE
    event_shape: Optional[Tuple[int, ...]]   # None: not recorded (checkpoints of earlier versions)
    meta: Dict[str, Any]


def loaded_model(model: torch.nn.Module, path: Optional[str] = None) -> LoadedScore:
    """A model from :func:`scoresde.load_model` as a :class:`LoadedScore`."""
    meta = model.checkpoint
    data = dict((meta.get("config") or {}).get("data") or {}) or None
    saved = meta.get("data") or {}   # absent from checkpoints of earlier versions
    shape = tuple(saved["event_shape"]) if "event_shape" in saved else None
    return LoadedScore(model, model.sde, shape,
                       {"source": "scoresde", "path": path, "step": meta.get("step"), "data": data,
                        "data_name": saved.get("name", (data or {}).get("name")),
                        "scaler": dict(saved.get("scaler", {"shift": 0.0, "scale": 1.0})),
                        "config": meta.get("config")})


def _load_diffusers_folder(path: str, device) -> LoadedScore:
    from .. import interop

    p = Path(path).expanduser()
    if not path:
        raise ValueError("checkpoint=diffusers: needs a folder, e.g. checkpoint=diffusers:/models/ddpm-cifar10")
    if not p.is_dir():
        raise FileNotFoundError(f"diffusers model folder not found: {path} (checkpoint=diffusers:PATH takes a "
                                "local folder written by save_pretrained: a pipeline, or unet/ and scheduler/)")
    try:
        score_fn = interop.load_diffusers(p, device=device)
    except ImportError as e:   # the optional extra is missing: the user's to fix, not a bug
        raise ValueError(f"checkpoint=diffusers:{path}: {e}") from e
    except (OSError, ValueError, TypeError, KeyError) as e:   # what from_pretrained raises on a foreign folder
        raise ValueError(f"{path} is not a diffusers model folder that scoresde can load ({e})") from e
    cfg = score_fn.unet.config
    size = cfg.get("sample_size", None)
    channels = cfg.get("in_channels", None)
    if size is None or channels is None:
        raise ValueError(f"{path}: the model's config has no sample_size / in_channels (an unconditional "
                         f"UNet2DModel is expected, got {type(score_fn.unet).__name__})")
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    score_fn.requires_grad_(False)
    # diffusers' image models live in [-1, 1] (x = 2 k / 255 - 1, DDPMPipeline returns x / 2 + 1/2):
    # data space is pixel intensity in [0, 1], as our image data sets
    meta = {"source": "diffusers", "path": str(p), "step": None, "data": None, "data_name": None,
            "scaler": {"shift": 0.5, "scale": 2.0}, "config": None,
            "sde": repr(score_fn.sde), "prediction_type": score_fn.prediction_type}
    return LoadedScore(score_fn, score_fn.sde, (int(channels),) + hw, meta)


def load_score(checkpoint: str, device: str = "auto", ema: bool = True) -> LoadedScore:
    """The score function of ``checkpoint``: a file written by scoresde-train, or
    ``diffusers:PATH``, a local diffusers model folder (a pipeline with ``model_index.json``, or
    ``unet/`` and ``scheduler/``), loaded by :func:`scoresde.interop.load_diffusers` (its SDE
    is the one the scheduler discretises; nothing is downloaded).  ``ema`` applies to our
    checkpoints only.  A missing or foreign file or folder raises a user error naming it.
    """
    checkpoint = str(checkpoint)
    dev = resolve_device(device)
    if checkpoint.startswith(DIFFUSERS_PREFIX):
        return _load_diffusers_folder(checkpoint[len(DIFFUSERS_PREFIX):], dev)
    return loaded_model(load_model(checkpoint_path(checkpoint), device=dev, ema=ema), checkpoint)
