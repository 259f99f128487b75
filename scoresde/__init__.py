"""scoresde: continuous-time score-based generative modelling (Song et al., ICLR 2021).

One interface joins every part: a score function ``score_fn(x, t) -> Tensor`` with ``x`` of shape
``[B, ...]`` and ``t`` of shape ``[B]``.  Closed-form mixtures, trained networks and your own
functions plug into every sampler and into the likelihood alike.

The benchmark engine (``scoresde.bench``) and the Hydra apps (``scoresde.apps``) sit above this core
and are imported by name: ``import scoresde.bench``.
"""

from .sde import SDE, VPSDE, SubVPSDE, VESDE, ReverseSDE, build_sde
from .mixture import GaussianMixture, ring8, anisotropic, build_mixture
from . import metrics
from . import samplers
from .samplers import sample, build_sampler, SampleResult, optimize_grid, save_grid, load_grid
from .score import ScoreModel, build_score_model, NonFiniteError
from .losses import DSMLoss, dsm_loss
from . import nn, data
from . import guidance, classifier
from .checkpoints import load_model, load_classifier, load_score
from . import training
from .training import Trainer
from .likelihood import log_likelihood, bits_per_dim, LikelihoodResult, BitsPerDimResult, elbo, ELBOResult
from . import interop
from .inverse import operators as ops   # sd.ops: the measurement operators
from .inverse import sample_posterior, PosteriorResult
from . import edit

__version__ = "0.1.0"

__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "build_sde",
    "GaussianMixture", "ring8", "anisotropic", "build_mixture",
    "metrics",
    "samplers", "sample", "build_sampler", "SampleResult", "optimize_grid", "save_grid", "load_grid",
    "ScoreModel", "build_score_model", "NonFiniteError", "DSMLoss", "dsm_loss", "nn", "data",
    "training", "Trainer", "load_model", "load_classifier", "load_score",
    "log_likelihood", "bits_per_dim", "LikelihoodResult", "BitsPerDimResult", "elbo", "ELBOResult",
    "interop",
    "ops", "sample_posterior", "PosteriorResult",
    "guidance", "classifier",
    "edit",
]
