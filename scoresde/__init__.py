"""scoresde: continuous-time score-based generative modelling (Song et al., ICLR 2021).

One interface joins every part: a score function ``score_fn(x, t) -> Tensor`` with ``x`` of shape
``[B, ...]`` and ``t`` of shape ``[B]``.  Closed-form mixtures, trained networks and your own
functions plug into every sampler and into the likelihood alike.
"""

from .sde import SDE, VPSDE, SubVPSDE, VESDE, ReverseSDE, get_sde
from .mixture import GaussianMixture, ring8, anisotropic, get_mixture
from . import metrics
from . import samplers
from .samplers import sample, build_sampler, SampleResult, optimize_grid, save_grid, load_grid
from .score import ScoreModel, build_score_model
from .losses import DSMLoss, dsm_loss
from . import nn, data
from .train import Trainer, load_model
from .likelihood import log_likelihood, bits_per_dim, LikelihoodResult, BitsPerDimResult
from . import bench

__version__ = "0.1.0"

__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "get_sde",
    "GaussianMixture", "ring8", "anisotropic", "get_mixture",
    "metrics",
    "samplers", "sample", "build_sampler", "SampleResult", "optimize_grid", "save_grid", "load_grid",
    "ScoreModel", "build_score_model", "DSMLoss", "dsm_loss", "nn", "data", "Trainer", "load_model",
    "log_likelihood", "bits_per_dim", "LikelihoodResult", "BitsPerDimResult",
    "bench",
]
