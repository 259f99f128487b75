"""Likelihoods of a score model: the exact one through the probability-flow ODE, its lower bound
(the ELBO), and bits/dim of discrete data by either.

- :mod:`.ode`: :func:`log_likelihood`, the instantaneous change of variables integrated with
  torchdiffeq or with the hand-written Adams method (:mod:`.adams`);
- :mod:`.divergence`: the exact trace and Hutchinson's quadratic forms both share;
- :mod:`.elbo`: :func:`elbo`, the continuous-time variational bound by denoising (or implicit)
  score matching at sampled times;
- :mod:`.bits`: :func:`bits_per_dim` with uniform dequantization or a Gaussian decoder, by the
  ODE or the ELBO.
"""

from .bits import BitsPerDimResult, bits_per_dim
from .elbo import ELBOResult, elbo, gaussian_decoder_logp
from .ode import DIVERGENCES, NOISES, TIME_VARIABLES, LikelihoodResult, log_likelihood

__all__ = ["log_likelihood", "LikelihoodResult", "DIVERGENCES", "NOISES", "TIME_VARIABLES",
           "elbo", "ELBOResult", "gaussian_decoder_logp", "bits_per_dim", "BitsPerDimResult"]
