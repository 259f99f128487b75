"""Checkpoints: writing ours atomically, and the one loader of every format the toolkit reads.

- :func:`save_checkpoint` / :func:`load_checkpoint`: our training checkpoints (a dict with a
  ``"format"`` marker), written to a temporary file in the same directory, fsynced and renamed into
  place, so a crash leaves the previous file whole; reading checks the marker and every key;
- :func:`load_model` / :func:`load_classifier`: the trained score model or noisy classifier of one
  of our checkpoints, strict (every key accounted for), EMA weights by default;
- :func:`load_score`: a score function from a checkpoint string, whatever its format: a path to one
  of ours, ``diffusers:FOLDER`` (a local diffusers model folder) or ``score_sde:FILE`` (a
  score_sde_pytorch checkpoint, with its config).  The library and every app
  load through it, so a new format is added here once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import torch

from .atomic import atomic_write
from .classifier import CLASSIFIER_KIND, NoisyClassifier, build_classifier
from .device import resolve_device
from .score import ScoreModel, build_score_model
from .sde import SDE

PathLike = Union[str, os.PathLike]

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_model", "load_classifier",
           "load_score", "LoadedScore", "loaded_model", "checkpoint_path", "DIFFUSERS_PREFIX", "SCORE_SDE_PREFIX",
           "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read as a scoresde checkpoint."""


CHECKPOINT_FORMAT = "scoresde-checkpoint"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def save_checkpoint(state: Dict[str, Any], path: PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`scoresde.atomic.atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: PathLike, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint; a missing file raises FileNotFoundError, a bad one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or not a "
                              f"scoresde checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a scoresde checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    missing = [k for k in ("model", "ema", "optimizer", "step", "rng", "config", "spec") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return state


def load_model(path: PathLike, device=None, ema: bool = True) -> ScoreModel:
    """The trained :class:`ScoreModel` from a checkpoint, with EMA weights (``ema=False``: raw),
    in eval mode with ``.sde`` set: a score function for every sampler and for log_likelihood.

    ``model.checkpoint`` holds the step, the config and the data set's scaler and event shape.
    """
    state = load_checkpoint(path)
    if state["spec"].get("kind") == CLASSIFIER_KIND:
        raise ValueError(f"{path} is a noisy-classifier checkpoint (task=classifier), not a score model; "
                         f"load it with sd.load_classifier")
    return _restore(build_score_model(state["spec"]), state, ema, device)


def load_classifier(path: PathLike, device=None, ema: bool = True) -> NoisyClassifier:
    """The trained noisy classifier of a ``task=classifier`` checkpoint (EMA weights unless
    ``ema=False``), in eval mode, with ``.sde`` (the SDE it was trained on) and ``.checkpoint``."""
    state = load_checkpoint(path)
    if state["spec"].get("kind") != CLASSIFIER_KIND:
        raise ValueError(f"{path} is a score-model checkpoint, not a noisy classifier (train one with "
                         f"scoresde-train task=classifier; load score models with sd.load_model)")
    return _restore(build_classifier(state["spec"]), state, ema, device)


def _restore(net: torch.nn.Module, state: Dict[str, Any], ema: bool, device) -> torch.nn.Module:
    """``net`` with the checkpoint's EMA (or raw) weights, strictly, frozen in eval mode, with
    ``.checkpoint`` (step, config, data) and on ``device`` if given."""
    net.load_state_dict(state["ema"] if ema else state["model"])
    net.requires_grad_(False).eval()
    net.checkpoint = {"step": state["step"], "config": state["config"], "data": state.get("data", {})}
    if device is not None:
        net.to(resolve_device(device))
    return net


# ---------------------------------------------------------------------------------------------
# every format: a score function from a checkpoint string
# ---------------------------------------------------------------------------------------------
def checkpoint_path(path: str) -> Path:
    """``path`` as given, or relative to Hydra's original working directory; a clear error if absent."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (give checkpoint=PATH to a file written "
                                f"by scoresde-train, e.g. outputs/train/<date>/<time>/checkpoints/last.pt, or "
                                f"checkpoint=diffusers:FOLDER for a diffusers model)")
    return p


DIFFUSERS_PREFIX = "diffusers:"
SCORE_SDE_PREFIX = "score_sde:"


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
    from . import interop

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


def _load_score_sde_file(path: str, config, device, ema: bool) -> LoadedScore:
    from .interop.score_sde import from_score_sde

    if not path:
        raise ValueError("checkpoint=score_sde: needs a file, e.g. checkpoint=score_sde:/models/checkpoint_26.pth")
    if config is None:
        raise ValueError(f"checkpoint=score_sde:{path} needs its score_sde_pytorch config: a name such as "
                         f"'vp/cifar10_ddpmpp_continuous' (scoresde.interop.score_sde_configs()) or a JSON / "
                         f"YAML file of the config dict")
    model = from_score_sde(path, config, ema=ema, device=device)
    model.requires_grad_(False)
    meta = {"source": "score_sde", "path": path, "step": model.step, "data": None, "data_name": None,
            "scaler": dict(model.scaler), "config": model.config, "sde": repr(model.sde)}
    return LoadedScore(model, model.sde, model.event_shape, meta)


def load_score(checkpoint: str, device: str = "auto", ema: bool = True, score_sde_config=None) -> LoadedScore:
    """The score function of ``checkpoint``: a file written by scoresde-train, or
    ``diffusers:PATH``, a local diffusers model folder (a pipeline with ``model_index.json``, or
    ``unet/`` and ``scheduler/``), loaded by :func:`scoresde.interop.load_diffusers` (its SDE
    is the one the scheduler discretises; nothing is downloaded), or ``score_sde:PATH``, a
    score_sde_pytorch checkpoint with its config ``score_sde_config`` (a name, a dict or a
    JSON / YAML file; :func:`scoresde.interop.from_score_sde`).  ``ema`` applies to ours and
    score_sde's.  A missing or foreign file or folder raises a user error naming it.
    """
    checkpoint = str(checkpoint)
    dev = resolve_device(device)
    if checkpoint.startswith(DIFFUSERS_PREFIX):
        return _load_diffusers_folder(checkpoint[len(DIFFUSERS_PREFIX):], dev)
    if checkpoint.startswith(SCORE_SDE_PREFIX):
        return _load_score_sde_file(checkpoint[len(SCORE_SDE_PREFIX):], score_sde_config, dev, ema)
    return loaded_model(load_model(checkpoint_path(checkpoint), device=dev, ema=ema), checkpoint)
