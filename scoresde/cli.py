"""Hydra apps.  A thin layer: compose the config from ``conf/``, hand the plain dict to the
library (:func:`scoresde.train.train`), print a summary.  The library works without Hydra.

    scoresde-train                                   # ring8, VP, MLP: the defaults in conf/
    scoresde-train data=moons train.steps=2000 seed=1
    python -m scoresde.cli train.steps=100 hydra.run.dir=/tmp/run
    scoresde-train -m sde=vp,subvp,ve                 # a sweep (hydra/launcher=joblib, submitit_local, slurm)
    torchrun --nproc_per_node=4 $(command -v scoresde-train) ...   # DDP (scoresde.distributed)

The config is found in the source checkout's ``conf/`` when the package runs from one, else in the
installed package (``pkg://scoresde.conf``, conf/ mapped into it by setuptools).
Structured schemas (the dataclasses below, and those of :mod:`scoresde.apps.schema` for the
sde/model/data/sampler options) make a misspelt key or a wrong type fail at composition, naming it.
The other apps (sample, likelihood, report) live in :mod:`scoresde.apps`.
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
    """Where Hydra finds conf/: the source checkout this package sits in, else the installed package.

    The checkout comes first: where another checkout is installed in editable mode, its
    ``scoresde.conf`` is importable from everywhere, and a checkout running its own code (pytest's
    ``pythonpath``, ``python -m scoresde.cli`` in its root) would otherwise read that tree's configs.
    """
    local = Path(__file__).resolve().parent.parent / "conf"
    if (local / "train.yaml").is_file():
        return str(local)
    try:
        if importlib.util.find_spec("scoresde.conf") is not None:
            return "pkg://scoresde.conf"
    except ModuleNotFoundError:
        pass
    return str(local)


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
from .apps import schema as _group_schemas  # noqa: E402,F401  (stores schema/<group>/<name>)


def run_train(cfg: DictConfig) -> Dict[str, Any]:
    """The body of the train app: config -> library -> metrics (written to the run dir)."""
    from . import distributed

    # under torchrun, rank 0's run dir for every rank (the others have none of their own)
    out_dir = Path(distributed.broadcast_run_dir(HydraConfig.get().runtime.output_dir))
    config = OmegaConf.to_container(cfg, resolve=True)
    log.info("training in %s\n%s", out_dir, OmegaConf.to_yaml(cfg))
    metrics = train(config, out_dir, trainer_cls=distributed.trainer_class())
    log.info("metrics: %s", json.dumps(metrics))
    return metrics


@hydra.main(version_base="1.3", config_path=config_path(), config_name="train")
def _train_app(cfg: DictConfig) -> None:
    try:
        run_train(cfg)
    except (TrainingDiverged, ValueError, FileNotFoundError) as e:   # includes CheckpointError
        log.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def train_main() -> None:
    """Console script ``scoresde-train``; under torchrun, one DDP rank (see scoresde.distributed)."""
    from . import distributed

    if not distributed.under_torchrun():
        _train_app()
        return
    try:
        sys.argv = distributed.torchrun_argv(sys.argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        _train_app()
    finally:
        distributed.finish()


if __name__ == "__main__":
    train_main()
