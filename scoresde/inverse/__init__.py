"""Posterior sampling for linear inverse problems with an unconditional score.

The problem: y = A x0 + s e (e ~ N(0, I), s = ``op.noise_std``), A a :mod:`scoresde.inverse.operators` (``sd.ops``) operator,
and only the score of the prior's diffusion p_t is known.  The target is p(x0 | y); the conditional
score is grad log p_t(x_t | y) = grad log p_t(x_t) + grad log p_t(y | x_t), and the methods differ
in how they stand in for the intractable second term.  For a Gaussian mixture prior the exact
posterior is ``mix.condition(op, y)`` (a mixture again), so every method is judged against it.

One entry point, :func:`sample_posterior`, with ``method`` (each in a module of its name):

* ``"replacement"``: Song et al. (2021), the PC inpainter / colorizer (``controllable_generation.py``
  of score_sde_pytorch): after every predictor and corrector step the observed part is overwritten
  by a fresh noisy copy of the observation.  Biased, and more steps do not cure it.
* ``"projection"``: the same idea as a score wrapper, so it runs under every sampler.
* ``"dps"``: Diffusion Posterior Sampling (Chung et al., ICLR 2023), a score wrapper.
* ``"pigdm"``: pseudo-inverse guided diffusion (Song, Vahdat, Mardani & Kautz, ICLR 2023), a score wrapper.
* ``"repaint"``: RePaint (Lugmayr et al., CVPR 2022): replacement with resampling jumps.
* ``"smc"``: a sequential Monte Carlo sampler, exact as particles and steps grow (the filtering
  posterior sampler FPS-SMC of Dou & Song, ICLR 2024, in the SVD coordinates of MCGdiff, Cardoso
  et al., ICLR 2024, which also give it noisy observations exactly; MCGdiff's potentials; TDS;
  resample-move with MALA rejuvenation and evidence-pooled clouds, see :func:`smc`).

Every method returns :class:`PosteriorResult` (a :class:`~scoresde.samplers.SampleResult` with the
exact NFE = network forward passes, and ``backward_passes``, the vector-Jacobian products through
the score that DPS and PiGDM take).  For noiseless observations (s = 0) every method ends with
the hard data-consistency step x <- x + A^+ (y - A x), so A x = y to rounding (for a mask: the
observed entries equal y exactly).  Randomness comes only from the caller's generator.
How far each method lands from the exact posterior is measured in the benchmarks, not here.
"""

from . import operators
from .base import PosteriorResult, tweedie
from .dps import dps
from .pigdm import pigdm
from .posterior import LOOPS, METHODS, WRAPPERS, sample_posterior
from .projection import projection
from .repaint import repaint, repaint_schedule
from .replacement import replacement
from .smc import smc

__all__ = ["PosteriorResult", "sample_posterior", "METHODS", "WRAPPERS", "LOOPS", "projection", "dps", "pigdm",
           "replacement", "repaint", "smc", "repaint_schedule", "tweedie", "operators"]
