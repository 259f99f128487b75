"""Training from a config dict: the library's entry point that the train app calls.

:func:`train` builds the model, data and loss from a plain dict shaped like ``conf/`` (what Hydra
composes) and runs a :class:`~scoresde.training.Trainer`, or, with ``task: classifier``, trains a
noisy classifier (:mod:`scoresde.training.classifier`).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import torch

from ..data import build_dataset
from ..losses import LOSSES
from ..score import build_score_model
from .classifier import train_classifier
from .trainer import Trainer, _as_config

PathLike = Union[str, os.PathLike]

__all__ = ["train", "build_from_config"]


_SCORE_KEYS = ("parameterization", "time_input")


def build_from_config(config: Dict[str, Any]):
    """``(score_model, data, loss)`` from a config tree (see ``conf/``), seeding model init."""
    for key in ("sde", "model", "data"):
        if key not in config or "name" not in (config[key] or {}):
            raise ValueError(f"config needs a {key!r} node with a 'name'")
    torch.manual_seed(int(config.get("seed", 0)))
    data_kw = {k: v for k, v in config["data"].items() if k != "name"}
    data = build_dataset(config["data"]["name"], **data_kw)
    model_cfg = dict(config["model"])
    score_kw = {k: model_cfg.pop(k) for k in _SCORE_KEYS if k in model_cfg}
    model_cfg["data_shape"] = list(data.event_shape)
    spec = {"sde": dict(config["sde"]), "model": model_cfg, **score_kw}
    model = build_score_model(spec)
    loss_cfg = dict(config.get("loss") or {})
    loss_name = loss_cfg.pop("name", "dsm")
    if loss_name not in LOSSES:
        raise ValueError(f"unknown loss {loss_name!r}; valid names: {sorted(LOSSES)}")
    loss = _as_config(LOSSES[loss_name], loss_cfg, "loss")
    return model, data, loss


def train(config: Dict[str, Any], out_dir: PathLike = ".", trainer_cls: Optional[type] = None) -> Dict[str, Any]:
    """Build everything from ``config`` (a plain dict shaped like ``conf/``) and train.

    ``config["task"]``: ``"score"`` (the default) trains a score model, ``"classifier"`` a noisy
    classifier (:mod:`scoresde.train_classifier`).
    Returns the final metrics (also written to ``out_dir/metrics.json``).  ``trainer_cls``
    (default :class:`Trainer`) lets the torchrun app pass its DistributedTrainer.
    """
    task = config.get("task", "score")
    if task == "classifier":  # a noisy classifier p_t(y | x_t) for classifier guidance
        return train_classifier(config, out_dir)
    if task != "score":
        raise ValueError(f"unknown task {task!r}; valid names: ['classifier', 'score']")
    model, data, loss = build_from_config(config)
    trainer = (trainer_cls or Trainer)(model, data, loss, optim=config.get("optim"), train=config.get("train"),
                      eval=config.get("eval"), sampler=config.get("sampler"), out_dir=out_dir,
                      config=config, seed=int(config.get("seed", 0)))
    return trainer.fit()
