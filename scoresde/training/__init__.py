"""Training: the score model's trainer, the noisy classifier's, distributed training under torchrun,
and :func:`train`, which builds everything from a config dict.

- :mod:`.trainer`: :class:`Trainer` (AdamW with warm-up and clipping, EMA, atomic checkpoints that
  resume bit-exactly, evaluation) and its config dataclasses;
- :mod:`.classifier`: :class:`ClassifierTrainer` for p_t(y | x_t) (classifier guidance);
- :mod:`.distributed`: :class:`DistributedTrainer` (DDP) and the torchrun helpers;
- :mod:`.run`: :func:`train` from a config dict (what ``scoresde-train`` calls);
- :mod:`.preemption`: pre-emption signals (checkpoint the step, exit 124 for the requeue);
- :mod:`.keeping`: the last k checkpoints, the best one, and the fallback past an unreadable one.

Checkpoints are read and written by :mod:`scoresde.checkpoints`.
"""

from .classifier import ClassifierTrainer, train_classifier
from .run import build_from_config, train
from .preemption import REQUEUE_EXIT_CODE, TrainingPreempted
from .trainer import EMA, EvalConfig, OptimConfig, TrainConfig, Trainer, TrainingDiverged, lr_factor

__all__ = ["Trainer", "TrainConfig", "OptimConfig", "EvalConfig", "EMA", "TrainingDiverged", "lr_factor",
           "TrainingPreempted", "REQUEUE_EXIT_CODE",
           "train", "build_from_config", "ClassifierTrainer", "train_classifier"]
