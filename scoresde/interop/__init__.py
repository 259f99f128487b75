"""Interop: other codebases' models and formats in, ours out.

- :mod:`.diffusers`: diffusers' models and schedulers as score functions (:func:`from_diffusers`,
  :func:`load_diffusers`) and any score function as a diffusers epsilon model with its scheduler
  (:func:`to_diffusers`, :func:`diffusers_sample`); the ``interop`` extra, imported only when used;
- :mod:`.discrete`: a discrete noise table as a continuous-time SDE (:class:`DiscreteVPSDE`);
- :mod:`.k_diffusion`: any score function as a k-diffusion denoiser (:func:`to_k_diffusion`);
- :mod:`.score_sde`: score_sde_pytorch's checkpoints and configs in (:func:`from_score_sde`,
  :func:`score_sde_network`), ours out in its format (:func:`to_score_sde`).

Loading a checkpoint string of any format (ours, ``diffusers:FOLDER``) goes through
:func:`scoresde.checkpoints.load_score`.
"""

from .diffusers import (PREDICTION_TYPES, DiffusersModel, DiffusersScore, NoisePrediction, diffusers_sample,
                        from_diffusers, load_diffusers, to_diffusers)
from .discrete import DiscreteVPSDE
from .k_diffusion import KDiffusionDenoiser, to_k_diffusion
from .score_sde import (SCORE_SDE_COMMIT, ScoreSdeCheckpointError, ScoreSdeModel, from_score_sde,
                        load_score_sde_config, score_sde_configs, score_sde_network, score_sde_sde, to_score_sde)

__all__ = ["DiscreteVPSDE", "from_diffusers", "load_diffusers", "to_diffusers", "to_k_diffusion",
           "diffusers_sample", "DiffusersScore", "DiffusersModel", "KDiffusionDenoiser",
           "NoisePrediction", "PREDICTION_TYPES", "from_score_sde", "to_score_sde", "score_sde_network",
           "score_sde_sde", "score_sde_configs", "load_score_sde_config", "ScoreSdeModel",
           "ScoreSdeCheckpointError", "SCORE_SDE_COMMIT"]
