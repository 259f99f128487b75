"""scoresde: continuous-time score-based generative modelling (Song et al., ICLR 2021).

One interface joins every part: a score function ``score_fn(x, t) -> Tensor`` with ``x`` of shape
``[B, ...]`` and ``t`` of shape ``[B]``.  Closed-form mixtures, trained networks and your own
functions plug into every sampler and into the likelihood alike.
"""

from .sde import SDE, VPSDE, SubVPSDE, VESDE, ReverseSDE, get_sde
from .mixture import GaussianMixture, ring8, anisotropic, get_mixture
from . import metrics
from . import samplers
from .samplers import sample, build_sampler, SampleResult

__version__ = "0.1.0"

__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "get_sde",
    "GaussianMixture", "ring8", "anisotropic", "get_mixture",
    "metrics",
    "samplers", "sample", "build_sampler", "SampleResult",
]
