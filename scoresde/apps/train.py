"""``scoresde-train``: the train app.  A thin layer: compose the config from ``conf/``, hand the
plain dict to the library (:func:`scoresde.training.train`), log a summary.  The library works
without Hydra.

    scoresde-train                                   # ring8, VP, MLP: the defaults
    scoresde-train data=moons train.steps=2000 seed=1
    python -m scoresde train train.steps=100 hydra.run.dir=/tmp/run
    scoresde-train -m sde=vp,subvp,ve                 # a sweep (hydra/launcher=joblib, submitit_local, slurm)
    torchrun --nproc_per_node=4 $(command -v scoresde-train) ...   # DDP (scoresde.training.distributed)
    scoresde-train train.resume=auto hydra.run.dir=runs/a   # the same command continues after a kill
    # SIGTERM / SIGUSR1 / SIGUSR2: the step finishes, its checkpoint is written, exit status 124
    # (scoresde.training.preemption; docs/cluster.md)
    scoresde-train task=classifier data=digits classifier=mlp   # a noisy classifier for guidance

The config is found by :func:`scoresde.apps._common.config_path`.  The top-level schema
(:data:`TrainAppSchema`) types the ``optim``, ``train`` and ``eval`` nodes with the schemas
derived from :class:`~scoresde.training.OptimConfig`, :class:`~scoresde.training.TrainConfig` and
:class:`~scoresde.training.EvalConfig`, and the sde/model/data/sampler/loss options opt into the
schemas derived from their constructors (:mod:`scoresde.apps.schema`), so a misspelt key or a
wrong type fails at composition, naming it.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..training import Trainer, train
from ..training.preemption import REQUEUE_EXIT_CODE, TrainingPreempted
from . import schema as _schemas
from ._common import check_overrides, config_path, exit_on_user_error

log = logging.getLogger("scoresde")

__all__ = ["train_main", "run_train", "TrainAppSchema"]

TrainAppSchema = make_dataclass("TrainAppSchema", [
    # the seed's default is the Trainer's
    ("seed", int, field(default=inspect.signature(Trainer).parameters["seed"].default)),
    # score (a score model) | classifier (a noisy classifier for guidance: scoresde.training.classifier)
    ("task", str, field(default="score")),
    # a line the app logs at the start and beside the final metrics (presets say what they are for)
    ("note", Optional[str], field(default=None)),
    # plain dicts whose keys are the keyword arguments of the constructor they name (each option
    # file opts into /schema/<group>/<name>)
    *[(g, Dict[str, Any], field(default_factory=dict)) for g in _schemas.SCHEMA_GROUPS],
    # one dataclass each, checked field by field
    *[(g, s, field(default_factory=s)) for g, s in _schemas.CONFIG_SCHEMAS.items()],
])
TrainAppSchema.__doc__ = "Top level of the train app (see the module docstring)."

ConfigStore.instance().store(name="train_schema", node=TrainAppSchema)


def run_train(cfg: DictConfig) -> Dict[str, Any]:
    """The body of the train app: config -> library -> metrics (written to the run dir)."""
    from ..training import distributed

    # under torchrun, rank 0's run dir for every rank (the others have none of their own)
    out_dir = Path(distributed.broadcast_run_dir(HydraConfig.get().runtime.output_dir))
    config = OmegaConf.to_container(cfg, resolve=True)
    note = config.pop("note", None)
    if note:
        log.warning("note: %s", note)
    log.info("training in %s\n%s", out_dir, OmegaConf.to_yaml(cfg))
    metrics = train(config, out_dir, trainer_cls=distributed.trainer_class())
    log.info("metrics: %s", json.dumps(metrics))
    if note:
        log.warning("note: %s", note)
    return metrics


@hydra.main(version_base="1.3", config_path=config_path(), config_name="train")
def _train_app(cfg: DictConfig) -> None:
    try:
        exit_on_user_error(run_train)(cfg)
    except TrainingPreempted as e:
        # the checkpoint of the step it stopped at is written: hand over to the requeue
        log.warning("%s", e)
        print(f"preempted: {e}", file=sys.stderr)
        e.chain()      # submitit's handler (hydra/launcher=slurm) requeues the job and exits
        sys.exit(REQUEUE_EXIT_CODE)


def train_main() -> None:
    """Console script ``scoresde-train``; under torchrun, one DDP rank (see scoresde.training.distributed)."""
    from ..training import distributed

    if not distributed.under_torchrun():
        check_overrides("train")
        _train_app()
        return
    sys.argv = exit_on_user_error(distributed.torchrun_argv)(sys.argv)
    check_overrides("train")
    try:
        _train_app()
    finally:
        distributed.finish()


if __name__ == "__main__":
    train_main()
