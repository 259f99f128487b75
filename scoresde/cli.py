"""Hydra apps.  A thin layer: compose the config from ``conf/``, hand the plain dict to the
library (:func:`scoresde.train.train`), print a summary.  The library works without Hydra.

    scoresde-train                                   # ring8, VP, MLP: the defaults in conf/
    scoresde-train data=moons train.steps=2000 seed=1
    python -m scoresde.cli train.steps=100 hydra.run.dir=/tmp/run

The config is found in the installed package (``pkg://scoresde.conf``, conf/ mapped into it by
setuptools) or, in a source checkout that is not installed, in the checkout's ``conf/``.
Structured schemas (the dataclasses below) make a misspelt key fail at composition, naming it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .train import EvalConfig, OptimConfig, TrainConfig, TrainingDiverged, train

log = logging.getLogger("scoresde")

__all__ = ["config_path", "train_main", "LossSchema", "TrainAppSchema"]


def config_path() -> str:
    """Where Hydra finds conf/: the installed package, else the source checkout."""
    try:
        if importlib.util.find_spec("scoresde.conf") is not None:
            return "pkg://scoresde.conf"
    except ModuleNotFoundError:
        pass
    return str(Path(__file__).resolve().parent.parent / "conf")


@dataclass
class LossSchema:
    name: str = "dsm"
    weighting: str = "sigma2"
    importance_sampling: bool = False
    eps: float = 1e-5
    reduction: str = "mean"


@dataclass
class TrainAppSchema:
    """Top level of the train app.  sde/model/data/sampler nodes are plain dicts whose keys are
    the keyword arguments of the constructor they name; the rest are checked field by field."""

    seed: int = 0
    sde: Dict[str, Any] = field(default_factory=dict)
    model: Dict[str, Any] = field(default_factory=dict)
    data: Dict[str, Any] = field(default_factory=dict)
    sampler: Dict[str, Any] = field(default_factory=dict)
    loss: LossSchema = field(default_factory=LossSchema)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


ConfigStore.instance().store(name="train_schema", node=TrainAppSchema)


def run_train(cfg: DictConfig) -> Dict[str, Any]:
    """The body of the train app: config -> library -> metrics (written to the run dir)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    log.info("training in %s\n%s", out_dir, OmegaConf.to_yaml(cfg))
    metrics = train(config, out_dir)
    log.info("metrics: %s", json.dumps(metrics))
    return metrics


@hydra.main(version_base="1.3", config_path=config_path(), config_name="train")
def _train_app(cfg: DictConfig) -> None:
    try:
        run_train(cfg)
    except TrainingDiverged as e:
        log.error("%s", e)
        sys.exit(1)


def train_main() -> None:
    """Console script ``scoresde-train``."""
    _train_app()


if __name__ == "__main__":
    train_main()
