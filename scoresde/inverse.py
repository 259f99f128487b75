"""Posterior sampling for linear inverse problems with an unconditional score.

The problem: y = A x0 + s e (e ~ N(0, I), s = ``op.noise_std``), A a :mod:`scoresde.ops` operator,
and only the score of the prior's diffusion p_t is known.  The target is p(x0 | y); the conditional
score is grad log p_t(x_t | y) = grad log p_t(x_t) + grad log p_t(y | x_t), and the methods differ
in how they stand in for the intractable second term.  For a Gaussian mixture prior the exact
posterior is ``mix.condition(op, y)`` (a mixture again), so every method is judged against it.

One entry point, :func:`sample_posterior`, with ``method``:

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

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .ops import LinearOperator, as_operator
from .samplers import CountingScore, SampleResult, SamplerContext, sample
from .samplers.pc import CORRECTORS, LANGEVIN_NORMS, PREDICTORS, corrector_step, predictor_step
from .sde import SDE, ScoreFn, _transition, as_time, expand_to

Tensor = torch.Tensor

__all__ = ["PosteriorResult", "sample_posterior", "METHODS", "projection", "dps", "pigdm",
           "replacement", "repaint", "smc", "repaint_schedule", "tweedie"]


@dataclass
class PosteriorResult(SampleResult):
    """What :func:`sample_posterior` returns: a :class:`SampleResult` plus

    ``method``; ``backward_passes`` (vector-Jacobian products through ``score_fn``);
    ``info`` (method facts, e.g. the SMC's number of resampling steps).  ``nfe`` counts every
    forward pass of ``score_fn`` (``forward_passes`` is the same number)."""

    method: str = ""
    backward_passes: int = 0
    info: dict = field(default_factory=dict)

    @property
    def forward_passes(self) -> int:
        return self.nfe


def tweedie(x: Tensor, score: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Tweedie's denoiser E[x0 | x_t] = (x + sigma^2 score) / alpha (``alpha``, ``sigma`` ``[B]``)."""
    return (x + expand_to(sigma, x) ** 2 * score) / expand_to(alpha, x)


def _coefs(sde: SDE, t: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
    t = as_time(t, x)
    return sde.mean_coef(t), sde.std(t)


# -- score wrappers ----------------------------------------------------------------------------------
class _Wrapper:
    """A score function built on ``score_fn`` that counts its backward passes."""

    def __init__(self, score_fn: ScoreFn, sde: SDE, op: LinearOperator, y: Tensor):
        self.score_fn, self.sde, self.op, self.y = score_fn, sde, op, y
        self.backward_passes = 0
        self._y: Dict[object, Tensor] = {}

    def y_like(self, x: Tensor) -> Tensor:
        key = (x.dtype, str(x.device))
        if key not in self._y:
            self._y[key] = self.y.to(device=x.device, dtype=x.dtype)
        y = self._y[key]
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has batch {y.shape[0]} but x has {x.shape[0]}: give one observation a sample")
        return y


class projection(_Wrapper):
    """Replacement as a score: observed part from the observation, the rest from the prior's score.

        s~(x, t) = (I - P) s(x, t) - A^T (sigma^2 A A^T + alpha^2 s_y^2 I)^+ (A x - alpha y),

    P = A^+ A.  The second term is the exact score of A x_t given y (A x_t ~ N(alpha y,
    sigma^2 A A^T + alpha^2 s_y^2 I)) pulled back to x; for a mask it is -(x_obs - alpha y) /
    sigma^2 in the observed entries.  So the observed part of x follows a diffusion of the
    observation itself (one continuous path instead of replacement's fresh noise each step), and
    the unobserved part sees the unconditional score at the joint state: the replacement method
    of Song et al. (2021, Sec. 5 and App. I.2) in continuous time, for any sampler (ODE samplers
    included, where it is deterministic).  It shares replacement's bias: the unobserved part is
    never told which modes the observation favours.
    """

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        op, y = self.op, self.y_like(x)
        s = self.score_fn(x, t)
        alpha, sigma = _coefs(self.sde, t, x)
        resid = op.forward(x) - expand_to(alpha, y) * y
        obs = -op.adjoint(op.gram_solve(resid, sigma ** 2, alpha ** 2 * op.noise_std ** 2))
        return s - op.project(s) + obs


class dps(_Wrapper):
    """Diffusion Posterior Sampling (Chung, Kim, McCann, Klasky & Ye, ICLR 2023, Algorithm 1) as a score.

    With Tweedie's x0_hat(x_t) = (x_t + sigma^2 s(x_t, t)) / alpha and the residual r = y - A x0_hat,
    DPS approximates p(y | x_t) by p(y | x0 = x0_hat) and, for Gaussian noise, replaces the
    likelihood's 1 / (2 s_y^2) by the step zeta_i = zeta' / |r| (their Alg. 1), which gives

        s~(x, t) = s(x, t) - (scale / |r|) grad_x |r|^2 = s(x, t) - 2 scale grad_x |r|

    (per sample; the gradient flows through the score: one backward pass a call).  Chung et al.
    apply zeta_i per DDPM step (1,000 steps); as a score term the step is divided by the step's
    variance, so ``scale`` is not their zeta' (``scale`` = zeta' / (g^2 dt)).  The default
    ``scale`` is the one that measured best on the mixture problems (see the benchmarks).
    """

    def __init__(self, score_fn, sde, op, y, scale: float = 1.0):
        super().__init__(score_fn, sde, op, y)
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.scale = float(scale)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        y = self.y_like(x)
        alpha, sigma = _coefs(self.sde, t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = self.score_fn(xg, t)
            r = y - self.op.forward(tweedie(xg, s, alpha, sigma))
            norm = torch.linalg.vector_norm(r.reshape(r.shape[0], -1), dim=1)
            grad, = torch.autograd.grad(norm.sum(), xg)
        self.backward_passes += 1
        return s.detach() - 2.0 * self.scale * grad


class pigdm(_Wrapper):
    """Pseudo-inverse guided diffusion, PiGDM (Song, Vahdat, Mardani & Kautz, ICLR 2023, eqs. 5-8).

    p(x0 | x_t) is taken Gaussian, N(x0_hat, r_t^2 I) with r_t^2 = sigma^2 / (alpha^2 + sigma^2)
    (their r_t^2 = sigma~^2 / (1 + sigma~^2) in the scaled variable sigma~ = sigma / alpha: the
    posterior variance for unit-variance data), so p(y | x_t) = N(A x0_hat, r_t^2 A A^T + s_y^2 I) and

        s~(x, t) = s(x, t) + scale * (d x0_hat / d x_t)^T A^T (r_t^2 A A^T + s_y^2 I)^+ (y - A x0_hat)

    (the Jacobian is taken through the score: one vector-Jacobian product a call; for s_y = 0 the
    middle factor is r_t^-2 (A A^T)^+, whence the name: A^+ (y - A x0_hat) / r_t^2).  ``scale`` = 1
    is the score of the Gaussian approximation itself.

    Stiffness, where the noise is high: d x0_hat / d x_t = (I + sigma^2 grad s) / alpha, and a
    network's error e in sigma^2 grad s enters it divided by alpha (alpha(T) = 0.0066 for VP, 1 /
    alpha^2 = 2.3e4).  The exact Jacobian there is alpha Cov[x0 | x_t] / sigma^2, small; a network's
    is not, so the guidance's own Jacobian has eigenvalues of about -e^2 / (alpha^2 r_t^2), and an
    explicit step of g(t)^2 dt is unstable unless g^2 dt e^2 / alpha^2 < 2 (at t = T: e < 0.03 for
    200 VP steps).  With a trained digits U-Net and the lower half missing (20 digits, 200
    reverse-diffusion steps) the state grows by about 1000x a step from the second step on, and
    10 of the 20 completions are non-finite by t = 0.94; at 1000 steps none are, and |x| never
    exceeds its starting 4.1.  A DDIM step (``sampler="dpm_solver", order=1``) does not help
    (20 of 20 at 50 and 100 steps).  The mixtures' exact scores have e = 0 and stay finite.
    """

    def __init__(self, score_fn, sde, op, y, scale: float = 1.0):
        super().__init__(score_fn, sde, op, y)
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.scale = float(scale)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        op, y = self.op, self.y_like(x)
        alpha, sigma = _coefs(self.sde, t, x)
        r2 = sigma ** 2 / (alpha ** 2 + sigma ** 2)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = self.score_fn(xg, t)
            Ax0 = op.forward(tweedie(xg, s, alpha, sigma))
            v = op.gram_solve((y - Ax0).detach(), r2, op.noise_std ** 2)
            g, = torch.autograd.grad((Ax0 * v).sum(), xg)
        self.backward_passes += 1
        return s.detach() + self.scale * g


# -- methods with their own loop ------------------------------------------------------------------
def _uniform_grid(sde: SDE, steps: int, eps: float) -> List[float]:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    return torch.linspace(sde.T, eps, int(steps) + 1, dtype=torch.float64).tolist()


def replacement(score_fn, sde: SDE, op: LinearOperator, y: Tensor, x: Tensor, ctx: SamplerContext, *,
                eps: float, predictor: str = "reverse_diffusion", corrector: str = "langevin",
                steps: int = 1000, snr: float = 0.16, corrector_steps: int = 1, denoise: bool = True,
                langevin_norm: str = "batch") -> Tensor:
    """Song et al. (2021)'s PC inpainter and colorizer (score_sde_pytorch, ``controllable_generation.py``,
    ``get_pc_inpainter`` / ``get_pc_colorizer``), for any operator.

    Each of the ``steps`` steps runs ``corrector_steps`` corrector updates at t_i, then the predictor
    from t_i to t_{i+1} (:mod:`scoresde.samplers.pc`); after every one of these updates the
    observed part is replaced by a fresh noisy copy of the observation at the state's time tau:

        x <- x + A^+ (alpha(tau) y + sigma(tau) A z - A x),   z ~ N(0, I) fresh,

    which for a mask is the reference's ``x * (1 - mask) + (alpha y + sigma z) * mask`` and for
    ``Grayscale("mean")`` its colorizer (whose orthonormal ``M`` splits off the gray channel
    (1, 1, 1) / sqrt(3), i.e. this projection).  The noise-free mean gets the noise-free copy.
    The defaults are the reference's (reverse diffusion + Langevin, snr 0.16, one corrector step,
    batch-averaged Langevin norms as in its code).  Noisy observations are used as if exact.

    Plain bugs of the reference fixed here:

    1. after the predictor step from t to s the observation is noised to time t, one step behind
       the state (here to s, the state's time);
    2. the denoised output ``x_mean = x * (1 - mask) + ...`` takes the unobserved entries from the
       noisy ``x`` instead of ``x_mean``, so ``denoise=True`` never denoises them (here: the mean);
    3. the first state holds the clean observation at t = T instead of a draw of p_T (here it is
       noised to T);
    4. the returned observed entries are alpha(eps) y, not y (here: y exactly, for s_y = 0);
    5. the grid has ``sde.N`` points with steps of 1/N, so it stops short of eps (here the grid of
       :mod:`scoresde.samplers.pc`, landing on eps).

    What is not a bug and stays: the observed part is never informed by the unobserved one, and
    the unobserved part follows the unconditional score with the observation plugged in.  In the
    limit of many steps that is a biased sampler: on a bivariate normal with correlation rho the
    missing coordinate's mean m and variance V follow dm/dt = c m + d, dV/dt = 2 c V - g^2 (c, d
    from the score with x1 = alpha y; see tests/test_inverse.py), e.g. N(0.94, 0.31) instead of
    the true N(1.35, 0.19) for rho = 0.9, x1 = 1.5.
    """
    if predictor not in PREDICTORS or predictor == "none":
        raise ValueError(f"unknown predictor {predictor!r}; valid predictors: {[p for p in PREDICTORS if p != 'none']}")
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; valid correctors: {list(CORRECTORS)}")
    if langevin_norm not in LANGEVIN_NORMS:
        raise ValueError(f"unknown langevin_norm {langevin_norm!r}; valid: {list(LANGEVIN_NORMS)}")
    if int(corrector_steps) != corrector_steps or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative integer, got {corrector_steps}")
    grid = _uniform_grid(sde, steps, eps)
    n_corr = int(corrector_steps) if corrector != "none" else 0
    ctx.expect_nfe(int(steps) * (1 + n_corr))
    B = x.shape[0]

    def replace(v: Tensor, tau: float, noisy: bool) -> Tensor:
        c = sde.scalars(tau)
        target = c.alpha * y
        if noisy:
            target = target + c.sigma * op.forward(ctx.randn_like(v))
        return v + op.pinv(target - op.forward(v))

    x = replace(x, grid[0], True)
    mean = x
    for i in range(len(grid) - 1):
        t_vec = torch.full((B,), grid[i], dtype=x.dtype, device=x.device)
        for _ in range(n_corr):
            x, mean = corrector_step(corrector, score_fn, sde, x, t_vec, grid[i], snr, ctx, langevin_norm)
            x, mean = replace(x, grid[i], True), replace(mean, grid[i], False)
        x, mean = predictor_step(predictor, score_fn, sde, x, t_vec, grid[i], grid[i + 1], ctx)
        x, mean = replace(x, grid[i + 1], True), replace(mean, grid[i + 1], False)
    return mean if denoise else x


def repaint_schedule(steps: int, jump_length: int = 10, jumps: int = 10) -> List[int]:
    """RePaint's time-index schedule (Lugmayr et al. 2022, App. B; ``get_schedule_jump`` of their code).

    Indices run from ``steps`` (t = T) down to 0 (t = eps).  Every ``jump_length`` indices the
    sampler jumps ``jump_length`` steps back up (re-noising by the forward process) and comes
    down again, ``jumps - 1`` times, so each such stretch is traversed ``jumps`` times (their r).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if int(jump_length) != jump_length or jump_length < 1:
        raise ValueError(f"jump_length must be a positive integer, got {jump_length}")
    if int(jumps) != jumps or jumps < 1:
        raise ValueError(f"jumps must be a positive integer, got {jumps}")
    left = {j: jumps - 1 for j in range(0, steps - jump_length, jump_length)}
    t, ts = steps, [steps]
    while t >= 1:
        t -= 1
        ts.append(t)
        if left.get(t, 0) > 0:
            left[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    return ts


def repaint(score_fn, sde: SDE, op: LinearOperator, y: Tensor, x: Tensor, ctx: SamplerContext, *,
            eps: float, steps: int = 250, jump_length: int = 10, jumps: int = 10, denoise: bool = True) -> Tensor:
    """RePaint (Lugmayr, Danelljan, Romero, Yu, Timofte & Van Gool, CVPR 2022, Algorithm 1).

    On the uniform grid of ``steps`` steps from T to eps, a step down is the ancestral step
    (``sde.ancestral_coefs``: DDPM's for VP) followed by the replacement of the observed part by
    alpha(s) y + sigma(s) A z (their x^known_{t-1}); a step up is the forward transition
    x <- a x + sqrt(v) z (their x_t ~ N(sqrt(1 - beta_t) x_{t-1}, beta_t I)).  The order of the
    steps is :func:`repaint_schedule` (defaults: their T = 250, jump length j = 10, r = 10
    resamplings).  NFE = the number of steps down.  The resampling lets the unobserved part
    harmonize with the observation, which lowers replacement's bias but does not remove it.
    Noisy observations are used as if exact.
    """
    grid = torch.linspace(eps, sde.T, int(steps) + 1, dtype=torch.float64).tolist()  # index k -> time
    sched = repaint_schedule(steps, jump_length, jumps)
    ctx.expect_nfe(sum(1 for a, b in zip(sched, sched[1:]) if b < a))
    B = x.shape[0]

    def replace(v: Tensor, tau: float, noisy: bool) -> Tensor:
        c = sde.scalars(tau)
        target = c.alpha * y
        if noisy:
            target = target + c.sigma * op.forward(ctx.randn_like(v))
        return v + op.pinv(target - op.forward(v))

    x = replace(x, grid[-1], True)
    mean = x
    for k, j in zip(sched, sched[1:]):
        ct, cs = sde.scalars(grid[k]), sde.scalars(grid[j])
        if j < k:
            score = score_fn(x, torch.full((B,), grid[k], dtype=x.dtype, device=x.device))
            cx, c_score, var = sde.ancestral_coefs(ct.alpha, ct.sigma, cs.alpha, cs.sigma)
            mean = torch.add(x * cx, score, alpha=c_score)
            x = replace(torch.add(mean, ctx.randn_like(x), alpha=math.sqrt(var)), grid[j], True)
            mean = replace(mean, grid[j], False)
        else:
            a, v = _transition(cs.alpha, cs.sigma, ct.alpha, ct.sigma)
            x = torch.add(x * a, ctx.randn_like(x), alpha=math.sqrt(v))
    return mean if denoise else x


def smc(score_fn, sde: SDE, op: LinearOperator, y: Tensor, x: Tensor, ctx: SamplerContext, *,
        eps: float, steps: int = 200, particles: Optional[int] = None, ess_threshold: float = 0.5,
        grid: str = "logsnr", potential: str = "path", twist_cov: str = "isotropic",
        moves: int = 0, move_snr: float = 0.3, move_kernel: str = "mala", pool: bool = False,
        oversample: int = 1, info: Optional[dict] = None) -> Tensor:
    """Sequential Monte Carlo for linear inverse problems, exact as particles and steps grow.

    Recommended for one posterior (a batch with one observation), measured to meet issue 13's
    goal on ring8 and the 16-d mixture (benchmarks/results/inverse.md):
    ``potential="twisted", moves=3, pool=True, particles=100, oversample=8`` -- resample-move
    SMC with evidence-pooled clouds, described under "Resample-move" below.

    Three variants, by ``potential``:

    * ``"twisted"``: MCGdiff's potentials (Cardoso et al. 2024, Algorithm 1; the same
      twisting as Wu et al.'s TDS with the exact Gaussian twist of the forward process).  The
      intermediate target at time s is the reverse chain times
      g_s(x_s) = N(alpha_s y_hat; u(x_s), sigma_s^2 + alpha_s^2 (s_y / S)^2), the exact likelihood of
      y_hat given the observed coordinates u(x_s) = V^T x_s under the forward process (u_s = alpha_s u0
      + sigma_s eps, y_hat = u0 + (s_y / S) e); at s -> 0 it is the true likelihood, so the final
      target is p(x0 | y) for the discrete chain.  Proposal: the transition N(m, v I) times g_s
      (Gaussian in u: precision 1 / v + 1 / c_s, c_s the potential's variance; the rest of x
      keeps N(m, v I)), weight N(alpha_s y_hat; u(m), v + c_s) / g_t(x_t).  Each particle is pulled
      towards the observation only as far as the forward process says, with no shared random path.
      Measured on its own, without moves or pooling (then not better than ``"path"``): on
      aniso16 below, 100 steps, 2,000 samples, mode-weight error / W2 over floor 0.27 / 9.2 (500
      particles), 0.04 / 16.7 (2,000).  With ``moves=3, pool=True, particles=100, oversample=8``
      it is the setting that meets issue 13's 16-d goal (see "Resample-move" below).
    * ``"path"`` (default): FPS-SMC as described below.

    * ``"tweedie"``: the twisted diffusion sampler TDS (Wu et al., NeurIPS 2023), twist
      N(y_hat; V^T x0_hat(x_t), Cov) from Tweedie's x0_hat, a proposal guided by it; one backward
      pass a step (``twist_cov="isotropic"``: Cov = r_t^2 I, PiGDM's) or r + 1 (``"jacobian"``: Cov
      = Cov[u0 | x_t] from the score's Jacobian, and the locally optimal Gaussian proposal).  See
      :func:`_smc_tweedie`.

    Why ``"path"`` misses a correlated 16-d posterior (diagnosed; not a coding error).  One 16-d
    Gaussian (``sd.anisotropic(16, 4, seed=0)`` component 0, rotated covariance, eigenvalues
    0.01-1), mask on the first 8 coordinates, y = the component's mean + 1.0 (atypical): the
    chain is then linear-Gaussian, so the exact infinite-particle target of this filter given
    one observation path is a Kalman filter.  That target's unobserved mean is within 0.01-0.03
    of the true posterior mean at 100, 200 and 800 steps (a path-to-path spread that averages out
    over clouds; the covariance error falls as 1 / steps); a plain reference particle filter on
    the same path is off by 0.17 / 0.10 / 0.06 at 400 / 4,000 / 40,000 particles.  So the kernel,
    the tau_i and the SVD coordinates are right, and the error is the particle approximation's:
    the proposal moves the unobserved block by the prior's dynamics given the pinned
    observed block (replacement's move, about 1.2 from this posterior, whose stds are 0.2-0.4),
    the weights have to bridge several posterior stds, and the error decays only about as
    P^-1/4 while the ESS between resamplings looks healthy.  ``"twisted"`` (potentials on the
    observed block only) cannot help, it never informs the unobserved block; ``"tweedie"`` with
    ``twist_cov="jacobian"`` does: on this case its error is 0.018 (100 steps) and 0.008
    (400 steps, 1.7 standard errors), with near-uniform weights (one resampling a cloud).  On
    mixtures the Jacobian twist is not yet usable (aniso16: a mode is lost, mode-weight error
    0.31 at 100 steps), hence not the default; see benchmarks/results/inverse.md.

    The filtering posterior sampler FPS-SMC (Dou & Song, "Diffusion posterior sampling for linear
    inverse problem solving: a filtering perspective", ICLR 2024, Algorithm 2), written in the SVD
    coordinates of MCGdiff (Cardoso, Janati El Idrissi, Le Corff & Moulines, "Monte Carlo guided
    diffusion for Bayesian linear inverse problems", ICLR 2024, Algorithm 1 and its noisy case).

    Coordinates.  A = U diag(S) V^T; u = V^T x are orthonormal coordinates of the observed subspace
    and y_hat = S^-1 U^T y = u0 + (s_y / S) e.  Because the forward noise is isotropic, the forward
    process moves u like any coordinate: u_t = alpha u0 + sigma eps.  Coordinate i is observed
    noiselessly at the time tau_i where sigma / alpha = s_y / S_i (tau_i = 0 for s_y = 0), as
    alpha(tau_i) y_hat_i: conditioning on y is conditioning on those values (MCGdiff, Sec. 3.3).

    The observation path.  From those values a path y_hat_t is drawn once (shared by the
    particles of a cloud) by the forward transitions up the time grid (FPS's "noisy measurement
    sequence", exact: the y-path given y is independent of x0, so conditioning on the whole path
    leaves p(x0 | y) unchanged).  The grid is uniform in t from T to eps with the tau_i in (eps, T)
    added; a tau_i <= eps starts at eps from the data-level value with variance
    sigma^2 - alpha^2 (s_y / S_i)^2 (the truncation at eps that every sampler makes).

    The particle filter.  Target: the reverse chain with transitions N(m(x_t), v I) (the ancestral
    step from t to s, ``sde.ancestral_coefs``) constrained to u_i(x_s) = y_hat_{i,s} for the
    coordinates observed by time s.  The optimal proposal is the transition's Gaussian restricted to
    that constraint (draw, then set the observed coordinates; for a mask and s_y = 0 this is
    replacement's move) and the incremental weight its normalizer
    prod_i N(y_hat_{i,s}; u_i(m(x_t)), v).  Particles are resampled (systematic) when the effective
    sample size falls below ``ess_threshold`` times the cloud size, and once at the end, so the
    returned particles are equally weighted.  As particles grow the filter is consistent for the
    discrete chain; as steps grow the chain's Gaussian transitions become the exact reverse ones.

    Resample-move (``moves > 0``; ``potential`` "path" or "twisted").  Where the error on the
    16-d mixture came from (aniso16, 8 of 16 observed, 2,000 samples, 100 steps; measured): not
    duplicates (about 1,550 distinct of 2,000) and not a low ESS between resamplings (0.07-0.3 at
    worst), but (a) within-mode placement: mode means off by 0.1-0.35 (posterior stds 0.2-0.4), the
    covariances by about as much, falling slowly with particles (one cloud of 2,000: 0.28 / 0.07) and
    steps (1,600 steps: 0.25 / 0.13), since the proposal moves the unobserved block only by the prior's
    dynamics; (b) mode weights: each cloud's mode-0 fraction ends anywhere in 0-1 (true 0.31; 8 clouds
    of 1,000: sd 0.25), decided at t = 0.01-0.2 where the modes separate, so the mode-weight error is
    a cloud-to-cloud variance that more particles per cloud barely reduce.  The fix, each part exact
    in the limit:

    * moves (Gilks & Berzuini, "Following a moving target -- Monte Carlo inference for dynamic
      Bayesian models", JRSS B 2001): after each level's reweighting / resampling, ``moves``
      Langevin moves that leave the level's target invariant (:func:`_langevin_moves`).  Twisted:
      pi_s ~ p_s(x) g_s(x), whose score is the prior score plus the Gaussian observation term
      V (alpha_s y_hat - u(x)) / c_s.  Path: p_s(x) with the active coordinates pinned to the path
      (the filtering target p(x_s | y_{s:T}) equals p_s(x_s | u_s = y_s), the u-path being Markov on its
      own) times, in the noisy case, the forward-transition likelihood of coordinates observed later.
      ``move_kernel="mala"`` (default) corrects each move by Metropolis-Hastings with the score's
      trapezoidal line integral as the energy difference (Sjoberg et al. 2023), exact on Gaussians;
      ``"ula"`` does not (ring8 x1 = 3.6: W2 1.60x the floor with ULA, 0.64x with MALA at 401 NFE).
      A move costs one score evaluation (the score at the accepted state feeds the next SMC step).
    * ``pool=True`` (twisted only; one observation for the batch): the clouds are independent SMCs
      of the same target, and each cloud's evidence estimate Z_c is unbiased (Del Moral 2004), so
      the pooled measure sum_c Z_c sum_p w_cp delta_x_cp is consistent as the number of clouds grows
      at a fixed cloud size; the returned samples are a systematic draw from it.  ``info["cloud_ess"]``
      is the effective number of clouds.  (The path variant's clouds condition on different paths,
      so their Z_c are not comparable: no pooling there.)
    * ``oversample=k`` (needs pool): run k x the batch in particles (k x the compute, the same NFE)
      and return the batch: more clouds, hence a smaller mode-weight variance.

    Measured (aniso16, 2,000 samples, 401 NFE = 100 steps x (1 + 3 moves), seeds 0-1): mode-weight
    error 0.010-0.018 and W2 0.81-1.11x the floor (noise 0), 0.005-0.012 and 0.89-0.95x (noise 0.1),
    against 0.03-0.39 and 5-7x before.  Not the default: pooling needs one observation for the whole
    batch, and oversample costs k x the particles; the default keeps per-sample observations working.

    ``particles``: cloud size (default: the largest divisor of the batch up to 512); the batch is
    split into batch / particles independent clouds, each with its own observation path (y must
    agree within a cloud).  The path's realization leaves an error that more particles in one cloud
    do not remove at a finite number of steps (it vanishes as the steps grow); clouds average it
    out: on ring8 (x1 = 3.6, 400 steps, 8,000 samples) one cloud gave mode-weight errors 0.015-0.043,
    clouds of 1,000 or 200 particles 0.002-0.010.
    NFE = ``steps`` + the number of tau_i inserted; with ``moves``, 1 + (that) x (1 + moves).
    """
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"oversample must be a positive integer, got {oversample}")
    if (pool or oversample > 1) and potential != "twisted":
        raise ValueError(f"pool / oversample (evidence-weighted pooling of clouds) need potential='twisted', got {potential!r}")
    if oversample > 1 and not pool:
        raise ValueError("oversample > 1 needs pool=True (the extra particles are pooled across clouds)")
    if pool and not torch.equal(y, y[:1].expand_as(y)):
        raise ValueError("pool=True needs one observation for the whole batch (clouds are pooled)")
    n_out = x.shape[0]
    if oversample > 1:
        more = sde.prior_sample((n_out * (int(oversample) - 1),) + tuple(x.shape[1:]), generator=ctx.generator,
                                dtype=x.dtype, device=ctx.generator.device if ctx.generator is not None else x.device)
        x = torch.cat([x, more.to(x.device)])
        y = y[:1].expand((x.shape[0],) + tuple(y.shape[1:]))
    B = x.shape[0]
    P = max(d for d in range(1, min(B, 512) + 1) if B % d == 0) if particles is None else int(particles)
    if P < 1 or B % P:
        raise ValueError(f"particles must be a positive divisor of the batch size {B}, got {particles}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    C = B // P
    obs_shape = tuple(y.shape[1:])
    yc = y.reshape(C, P, -1)
    if not torch.equal(yc, yc[:, :1].expand_as(yc)):
        raise ValueError("the SMC sampler needs the same observation for every particle of a cloud")
    y_hat = op.whiten(y.reshape((C, P) + obs_shape)[:, 0])                   # [C, r]
    r = y_hat.shape[1]
    S = op.singular_values(torch.float64).cpu().expand(r)
    s_y = op.noise_std
    # tau_i: sigma / alpha = s_y / S_i, i.e. log-SNR = log(S_i / s_y)
    if s_y > 0:
        lam = torch.log(S / s_y)
        tau = sde.t_from_log_snr(lam).to(torch.float64)
        tau = torch.where(lam >= float(sde.log_snr(torch.tensor([eps], dtype=torch.float64))),
                          torch.zeros_like(tau), tau)
        ratio2 = (s_y / S) ** 2
    else:
        tau = torch.zeros(r, dtype=torch.float64)
        ratio2 = torch.zeros(r, dtype=torch.float64)
    if twist_cov not in ("isotropic", "jacobian"):
        raise ValueError(f"unknown twist_cov {twist_cov!r}; valid: ['isotropic', 'jacobian']")
    if potential not in SMC_POTENTIALS:
        raise ValueError(f"unknown potential {potential!r}; valid potentials: {list(SMC_POTENTIALS)}")
    if int(moves) != moves or moves < 0:
        raise ValueError(f"moves must be a non-negative integer, got {moves}")
    if not move_snr > 0:
        raise ValueError(f"move_snr must be positive, got {move_snr}")
    if move_kernel not in SMC_MOVE_KERNELS:
        raise ValueError(f"unknown move_kernel {move_kernel!r}; valid: {list(SMC_MOVE_KERNELS)}")
    if moves and potential == "tweedie":
        raise ValueError("moves (Langevin rejuvenation) are implemented for potential 'path' and 'twisted', not 'tweedie'")
    if potential == "tweedie":
        return _smc_tweedie(score_fn, sde, op, y_hat.repeat_interleave(P, dim=0), ratio2, x, ctx, obs_shape,
                            _smc_grid(sde, steps, eps, grid), C, P, ess_threshold, info,
                            jacobian=twist_cov == "jacobian")
    if potential == "twisted":
        return _smc_twisted(score_fn, sde, op, y_hat.repeat_interleave(P, dim=0), ratio2, x, ctx, obs_shape,
                            _smc_grid(sde, steps, eps, grid), C, P, ess_threshold, info, int(moves), move_snr,
                            n_out if pool else None, move_kernel)
    uniform = _smc_grid(sde, steps, eps, grid)
    extra = sorted({float(v) for v in tau.tolist() if eps < v < sde.T and not any(abs(v - u) < 1e-12 for u in uniform)})
    desc = sorted(set(uniform) | set(extra), reverse=True)
    asc = desc[::-1]
    n = len(asc)
    ctx.expect_nfe((n - 1) * (1 + int(moves)) + (1 if moves else 0))
    # the observation path, [n, C, r] on the ascending grid; start index of each coordinate
    dev, dt = x.device, x.dtype
    at = torch.tensor(asc, dtype=torch.float64)
    start = torch.searchsorted(at, tau - 1e-12).clamp(max=n)                  # first time >= tau_i
    active = torch.arange(n)[:, None] >= start[None, :]                       # [n, r]
    y64 = y_hat.to(torch.float64)
    path = torch.zeros(n, C, r, dtype=torch.float64, device=dev)
    prev = torch.zeros(C, r, dtype=torch.float64, device=dev)
    for j in range(n):
        c = sde.scalars(asc[j])
        z = ctx.randn((C, r), torch.float64, dev)
        first = c.alpha * y64 + torch.sqrt((c.sigma ** 2 - c.alpha ** 2 * ratio2).clamp_min(0)).to(dev) * z
        if j > 0:
            a, v = _transition(c.alpha, c.sigma, *sde.scalars(asc[j - 1])[2:])
            nxt = a * prev + math.sqrt(v) * z
        else:
            nxt = first
        cur = torch.where((start == j).to(dev), first, torch.where((start < j).to(dev), nxt, torch.zeros_like(nxt)))
        path[j] = cur
        prev = cur
    path = path.to(dt).repeat_interleave(P, dim=1)                            # [n, B, r]
    active = active.to(dev)

    def constrain(v: Tensor, j: int) -> Tensor:
        delta = torch.where(active[j], path[j] - op.obs_coords(v), torch.zeros(1, dtype=dt, device=dev))
        return v + op.embed(delta, obs_shape)

    logw = torch.zeros(C, P, dtype=torch.float64, device=dev)
    log_z = torch.zeros(C, dtype=torch.float64, device=dev)      # log of each cloud's evidence estimate
    n_resample = 0
    ess_min = 1.0
    acc_all: List[float] = []
    cached: Optional[Tensor] = None
    x = constrain(x, n - 1)
    for i in range(n - 1):
        t, s = desc[i], desc[i + 1]
        j = n - 2 - i                                                          # ascending index of s
        ct, cs = sde.scalars(t), sde.scalars(s)
        score = score_fn(x, torch.full((B,), t, dtype=dt, device=dev)) if cached is None else cached
        cached = None
        cx, c_score, var = sde.ancestral_coefs(ct.alpha, ct.sigma, cs.alpha, cs.sigma)
        mean = torch.add(x * cx, score, alpha=c_score)
        resid = torch.where(active[j], path[j] - op.obs_coords(mean), torch.zeros(1, dtype=dt, device=dev))
        logw = logw - (0.5 / var) * resid.to(torch.float64).pow(2).sum(1).reshape(C, P)
        x = constrain(torch.add(mean, ctx.randn_like(x), alpha=math.sqrt(var)), j)
        last = i == n - 2
        w = torch.softmax(logw, 1)
        ess = 1.0 / (w ** 2).sum(1)
        ess_min = min(ess_min, float(ess.min()) / P)
        need = torch.ones(C, dtype=torch.bool, device=dev) if last else ess < ess_threshold * P
        res = _resample_clouds(w, logw, need, ctx)
        if res is not None:
            flat, logw, dz = res
            x = x.index_select(0, flat)
            path = path.index_select(1, flat)
            log_z = log_z + dz
            n_resample += int(need.sum())
        if moves:
            extra, free = _path_move_terms(sde, op, s, j, asc, path, active, start, obs_shape)
            x, cached, acc = _langevin_moves(score_fn, op, obs_shape, x, s, int(moves), move_snr, C, P, ctx, extra, free,
                                        move_kernel)
            acc_all.append(acc)
    if info is not None:
        info.update({"resamples": n_resample, "ess_min": ess_min, "ess_final": float(ess.mean()) / P, "grid_points": n, "clouds": C, "particles": P,
                     "log_evidence": log_z.tolist()})
        if acc_all:
            info["move_acceptance"] = sum(acc_all) / len(acc_all)
    return x


def _langevin_moves(score_fn, op: LinearOperator, obs_shape: Tuple[int, ...], x: Tensor, s: float, moves: int,
                    snr: float, C: int, P: int, ctx: SamplerContext, extra: Callable[[Tensor], Tensor],
                    free: Callable[[Tensor], Tensor], kernel: str = "mala",
                    score: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, float]:
    """``moves`` Langevin moves on the SMC's level-s target pi_s (resample-move, Gilks & Berzuini 2001).

    grad log pi_s(x) = G(x) = score(x, s) + ``extra(x)`` (the Gaussian observation term of the
    level's target), restricted to the directions ``free`` keeps (pinned coordinates stay put).
    Proposal: preconditioned Langevin, x' = x + D G(x) + sqrt(2 D) z, D a constant step on the
    observed subspace (V V^T) and another on its complement (the observation term is far stiffer
    than the prior near t = 0; one shared step would freeze the unobserved block).  Each step is
    d = 2 (snr |z| / |G|)^2 on its subspace (Song et al. 2021's corrector rule), the norms averaged
    over a cloud and taken before the move, so all particles of a cloud share D.

    ``kernel="ula"`` accepts every proposal (unadjusted: biased by O(D)).  ``"mala"`` (default)
    accepts with the Metropolis-Hastings ratio of MALA (Roberts & Tweedie 1996), the unknown
    log pi_s(x') - log pi_s(x) replaced by the trapezoidal line integral of the score,
    (G(x) + G(x')) . (x' - x) / 2 (the score-only MH correction of Sjoberg et al., "MCMC-correction
    of score-based diffusion models for model composition", 2023): exact when p_s is Gaussian,
    O(|x' - x|^3) otherwise, so the move is exactly invariant on Gaussians and the bias vanishes far
    faster than ULA's as D -> 0.  The score at the proposal is needed anyway for the next move, so
    MALA costs no extra score evaluation.  ``score``: score(x, s) if already known (it is not
    re-evaluated).  Returns (x, score(x, s), acceptance rate).
    """
    B = x.shape[0]
    tvec = torch.full((B,), s, dtype=x.dtype, device=x.device)

    def obs(v_: Tensor) -> Tensor:
        return op.embed(op.obs_coords(v_), obs_shape)

    def step_of(g_: Tensor, z_: Tensor) -> Tensor:
        gn = g_.reshape(C, P, -1).norm(dim=2).mean(1)
        zn = z_.reshape(C, P, -1).norm(dim=2).mean(1)
        d = torch.where(gn > 0, 2 * (snr * zn / gn.clamp_min(1e-30)) ** 2, torch.zeros_like(gn))
        return expand_to(d.repeat_interleave(P), x)

    def flat(v_: Tensor) -> Tensor:
        return v_.reshape(B, -1).to(torch.float64)

    sc = score_fn(x, tvec) if score is None else score
    acc_sum = 0.0
    for _ in range(moves):
        g = free(sc + extra(x))
        z = free(ctx.randn_like(x))
        g_o, z_o = obs(g), obs(z)
        g_p, z_p = g - g_o, z - z_o
        d_o, d_p = step_of(g_o, z_o), step_of(g_p, z_p)
        xp = x + d_o * g_o + torch.sqrt(2 * d_o) * z_o + d_p * g_p + torch.sqrt(2 * d_p) * z_p
        scp = score_fn(xp, tvec)
        if kernel == "ula":
            x, sc = xp, scp
            acc_sum += 1.0
            continue
        gp = free(scp + extra(xp))
        gp_o = obs(gp)
        gp_p = gp - gp_o

        def log_q(to_o, to_p, g_o_, g_p_):      # log q(to | from) up to a shared constant, per particle
            ro = to_o - d_o * g_o_
            rp = to_p - d_p * g_p_
            qo = torch.where(d_o > 0, ro ** 2 / (4 * d_o.clamp_min(1e-300)), torch.zeros_like(ro))
            qp = torch.where(d_p > 0, rp ** 2 / (4 * d_p.clamp_min(1e-300)), torch.zeros_like(rp))
            return -(flat(qo) + flat(qp)).sum(1)

        dx = xp - x
        dx_o = obs(dx)
        dx_p = dx - dx_o
        log_ratio = (0.5 * (flat(g) + flat(gp)) * flat(dx)).sum(1)
        log_a = log_ratio + log_q(-dx_o, -dx_p, gp_o, gp_p) - log_q(dx_o, dx_p, g_o, g_p)
        u = ctx.rand((B,), torch.float64, x.device)
        ok = torch.log(u) < log_a
        acc_sum += float(ok.double().mean())
        x = torch.where(expand_to(ok, x), xp, x)
        sc = torch.where(expand_to(ok, sc), scp, sc)
    return x, sc, acc_sum / max(moves, 1)


def _path_move_terms(sde: SDE, op: LinearOperator, s: float, j: int, asc: List[float], path: Tensor,
                     active: Tensor, start: Tensor, obs_shape: Tuple[int, ...]):
    """(extra, free) of the path SMC's level-s target for :func:`_langevin_moves`.

    pi_s(x) ~ p_s(x) prod_{i active} delta(u_i(x) - path_{i,s}) prod_{i pending} N(path_{i,tau_i}; a_i u_i(x), v_i):
    active coordinates are pinned; a coordinate observed only later (tau_i > s, noisy case) carries
    the forward transition (a_i, v_i) from s up to tau_i to its path value there.
    """
    x_dt, dev = path.dtype, path.device
    n = len(asc)
    zero = torch.zeros(1, dtype=x_dt, device=dev)
    act = active[j]
    pend = (start > j) & (start < n)

    def free(v_: Tensor) -> Tensor:
        return v_ - op.embed(torch.where(act, op.obs_coords(v_), zero), obs_shape)

    if not bool(pend.any()):
        return (lambda v_: torch.zeros_like(v_)), free
    cs = sde.scalars(s)
    idx = start.clamp(max=n - 1)
    al = torch.tensor([float(sde.scalars(asc[int(k)]).alpha) for k in idx], dtype=torch.float64)
    sg = torch.tensor([float(sde.scalars(asc[int(k)]).sigma) for k in idx], dtype=torch.float64)
    a, v = _transition(al, sg, float(cs.alpha), float(cs.sigma))
    ok = pend & (v > 0)
    lin = torch.where(ok, a, torch.zeros_like(a)).to(device=dev, dtype=x_dt)
    coef = (lin.double().cpu() / torch.where(ok, v, torch.ones_like(v))).to(device=dev, dtype=x_dt)
    r = len(idx)

    def extra(v_: Tensor) -> Tensor:
        tgt = path[idx.to(dev), :, torch.arange(r, device=dev)].T[: v_.shape[0]]   # [B, r] values at tau_i
        return op.embed(coef * (tgt - lin * op.obs_coords(v_)), obs_shape)

    return extra, free


SMC_GRIDS = ("logsnr", "time_uniform")
SMC_POTENTIALS = ("tweedie", "twisted", "path")
SMC_MOVE_KERNELS = ("mala", "ula")


def _smc_tweedie(score_fn, sde: SDE, op: LinearOperator, y_hat: Tensor, ratio2: Tensor, x: Tensor,
                 ctx: SamplerContext, obs_shape, desc: List[float], C: int, P: int, ess_threshold: float,
                 info: Optional[dict], jacobian: bool = False) -> Tensor:
    """The ``potential="tweedie"`` SMC of :func:`smc`: the twisted diffusion sampler (TDS) of Wu,
    Trippe, Naesseth, Blei & Cunningham ("Practical and asymptotically exact conditional sampling in
    diffusion models", NeurIPS 2023, Algorithm 1), in the whitened SVD coordinates of the operator.

    Twist: g_t(x) = N(y_hat; V^T x0_hat(x, t), kappa_t I + diag((s_y / S)^2)), with Tweedie's
    x0_hat = (x + sigma^2 s(x, t)) / alpha and kappa_t = sigma^2 / (alpha^2 + sigma^2) (the
    variance of x0 given x_t for unit-variance data, PiGDM's r_t^2), an approximation of
    p(y | x_t) that uses the prior (through the score) and so tells the unobserved coordinates
    which way the observation points.  Intermediate target at t_k: the reverse chain (ancestral
    kernels N(m, v I)) times g_{t_k}; proposal x_s ~ N(m + v grad log g_t(x_t), v I); incremental
    weight N(x_s; m, v) g_s(x_s) / (N(x_s; m + v grad, v) g_t(x_t)).  At t = eps, g is
    N(y_hat; V^T x0_hat, ~sigma(eps)^2 + (s_y / S)^2), the likelihood itself up to the truncation at
    eps, so the weighted particles target p(x0 | y) as particles grow, for any choice of kappa
    (kappa only decides how many particles that takes).  For one Gaussian prior and the exact score
    the twist is exact up to kappa's isotropy, so the weights stay nearly uniform.
    Cost (``twist_cov="isotropic"``): one forward and one backward pass through the score a step,
    plus one forward pass at eps for the last weight (NFE = steps + 1; backward passes = steps).

    ``twist_cov="jacobian"`` (``jacobian=True``): Cov = Cov[u0 | x_t] = sigma^2 / alpha^2 (I + sigma^2
    V^T (ds/dx) V) + diag((s_y / S)^2), from r vector-Jacobian products a step (r = number of
    observed coordinates: for small problems only), and the proposal is the locally optimal one,
    N(m, v I) times the twist at s linearized at x_t (:func:`_tds_linear_step`), instead of the
    gradient step (whose weights carry a noise-quadratic term of variance ~ r dlambda / 2 a step).
    For one Gaussian and the exact score, twist and proposal are then exact up to the time
    discretization: the weights stay nearly uniform and the error falls with steps (the 16-d
    test).  Backward passes = r (steps + 1).  Constants of g shared by
    all particles at one time are dropped (weights are normalized within a cloud).
    """
    B, dev, dt = x.shape[0], x.device, x.dtype
    n = len(desc)
    ctx.expect_nfe(n)
    yh = y_hat.to(device=dev, dtype=torch.float64)
    r2 = ratio2.to(device=dev, dtype=torch.float64)
    backward = 0
    extra: Dict[str, Tensor] = {}

    def evaluate(v: Tensor, t: float, want_grad: bool):
        """Score, log g_t (float64, [B]) and grad_x log g_t at time t."""
        nonlocal backward
        c = sde.scalars(t)
        kappa = c.sigma ** 2 / (c.alpha ** 2 + c.sigma ** 2) + r2                # [r]
        tv = torch.full((B,), t, dtype=dt, device=dev)
        extra.clear()
        with torch.enable_grad():
            xg = v.detach().requires_grad_(want_grad or jacobian)
            s = score_fn(xg, tv)
            x0 = (xg + c.sigma ** 2 * s) / c.alpha
            resid = yh - op.obs_coords(x0).to(torch.float64)                        # [B, r]
            if jacobian:
                # Cov[u0 | x_t] = sigma^2 / alpha^2 (I + sigma^2 V^T (ds/dx) V), one VJP a coordinate
                rr = resid.shape[1]
                cols, rows = [], []
                for k in range(rr):
                    e = torch.zeros(B, rr, dtype=dt, device=dev)
                    e[:, k] = 1
                    vk = op.embed(e, obs_shape)
                    jk, = torch.autograd.grad((s * vk).sum(), xg, retain_graph=True)
                    rows.append(jk.detach().reshape(B, -1).to(torch.float64))
                    cols.append(op.obs_coords(jk).to(torch.float64))
                    backward += 1
                Js = torch.stack(cols, 2)                                              # [B, r, r]
                extra["rows"], extra["Js"] = torch.stack(rows, 1), 0.5 * (Js + Js.transpose(1, 2))
                cov = (c.sigma ** 2 / c.alpha ** 2) * (torch.eye(rr, dtype=torch.float64, device=dev)
                                                        + c.sigma ** 2 * 0.5 * (Js + Js.transpose(1, 2)))
                cov = cov.detach() + torch.diag_embed(r2.expand(rr))
                L, _ = torch.linalg.cholesky_ex(cov)
                sol = torch.cholesky_solve(resid[..., None], L)[..., 0]
                lg = -0.5 * (resid * sol.detach()).sum(1) - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
                # the proposal's drift uses sol with cov fixed: lg's gradient through resid only
                lg_for_grad = -0.5 * (resid * sol.detach()).sum(1)
            else:
                lg = -0.5 * (resid ** 2 / kappa).sum(1)
                lg_for_grad = lg
            grad = None
            if want_grad:
                grad, = torch.autograd.grad(lg_for_grad.sum(), xg)
                backward += 1
        return s.detach(), lg.detach(), grad

    score, lg, grad = evaluate(x, desc[0], not jacobian)
    logw = lg.reshape(C, P).clone()                  # the prior draw is the proposal of p_T g_T
    n_resample, ess_min = 0, 1.0
    for i in range(n - 1):
        w = torch.softmax(logw, 1)
        ess = 1.0 / (w ** 2).sum(1)
        ess_min = min(ess_min, float(ess.min()) / P)
        need = ess < ess_threshold * P
        res = _resample_clouds(w, logw, need, ctx)
        if res is not None:
            flat, logw, _ = res
            x, score, lg = (v.index_select(0, flat) for v in (x, score, lg))
            grad = grad.index_select(0, flat) if grad is not None else None
            n_resample += int(need.sum())
            if jacobian:
                extra["rows"], extra["Js"] = extra["rows"].index_select(0, flat), extra["Js"].index_select(0, flat)
        ct, cs = sde.scalars(desc[i]), sde.scalars(desc[i + 1])
        cx, c_score, v = sde.ancestral_coefs(ct.alpha, ct.sigma, cs.alpha, cs.sigma)
        z = ctx.randn_like(x)
        if jacobian:
            x, log_ratio = _tds_linear_step(op, x, score, extra["rows"], extra["Js"], yh, r2, cx, c_score, v, z,
                                            cs, ctx, obs_shape)
        else:
            x = x * cx + c_score * score + v * grad + math.sqrt(v) * z
            gf, zf = grad.reshape(B, -1).to(torch.float64), z.reshape(B, -1).to(torch.float64)
            # log N(x_s; m, v) - log N(x_s; m + v grad, v), with x_s = m + v grad + sqrt(v) z
            log_ratio = -0.5 * v * (gf ** 2).sum(1) - math.sqrt(v) * (gf * zf).sum(1)
        last = i == n - 2
        score, lg_new, grad = evaluate(x, desc[i + 1], not last and not jacobian)
        logw = logw + (log_ratio + lg_new - lg).reshape(C, P)
        lg = lg_new
    w = torch.softmax(logw, 1)
    ess = 1.0 / (w ** 2).sum(1)
    ess_min = min(ess_min, float(ess.min()) / P)
    idx = _systematic(w, ctx)
    x = x.index_select(0, (idx + P * torch.arange(C, device=dev)[:, None]).reshape(-1))
    if info is not None:
        info.update({"resamples": n_resample + C, "ess_min": ess_min, "ess_final": float(ess.mean()) / P,
                     "grid_points": n, "clouds": C, "particles": P, "potential": "tweedie",
                     "backward_passes": backward})
    return x


def _gauss_logpdf(r: Tensor, L: Tensor) -> Tensor:
    """log N(r; 0, L L^T) up to -k/2 log(2 pi), for ``r [B, k]`` and Cholesky factors ``L [B, k, k]``."""
    sol = torch.linalg.solve_triangular(L, r[..., None], upper=False)[..., 0]
    return -0.5 * (sol ** 2).sum(1) - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)


def _tds_linear_step(op: LinearOperator, x: Tensor, score: Tensor, rows: Tensor, Js: Tensor, yh: Tensor,
                     r2: Tensor, cx: float, c_score: float, v: float, z: Tensor, cs, ctx: SamplerContext,
                     obs_shape) -> Tuple[Tensor, Tensor]:
    """One step of the ``twist_cov="jacobian"`` TDS: the locally optimal proposal.

    The twist at s is linearized at x_t with the score's Jacobian rows ``rows [B, r, D]`` =
    (ds/dx)^T v_k taken at t: u(x0_hat_s(x)) ~ u_c + H (x - x_t), H = (V^T + sigma_s^2 rows) / alpha_s,
    u_c = V^T (x_t + sigma_s^2 s_t) / alpha_s, with covariance Q = sigma_s^2 / alpha_s^2 (I + sigma_s^2 Js)
    + diag(r2).  The proposal N(x; m, v I) g^_s(x) is Gaussian; it is drawn by Matheron's rule
    (x' = m + sqrt(v) z, x = x' + v H^T (Q + v H H^T)^-1 (y_hat - u_c - H (x' - x_t) - e), e ~ N(0, Q)),
    and the returned log-ratio is log N(x; m, v) - log q(x) = log Z^ - log g^_s(x) with
    Z^ = N(y_hat; u_c + H (m - x_t), Q + v H H^T): the caller adds log g_s(x_s) - log g_t(x_t).
    """
    B = x.shape[0]
    dt = x.dtype
    xf = x.reshape(B, -1).to(torch.float64)
    m = (x * cx + c_score * score).reshape(B, -1).to(torch.float64)
    a, sg2 = cs.alpha, cs.sigma ** 2
    V = lambda w: op.obs_coords(w.to(dt).reshape(x.shape)).to(torch.float64)        # V^T, [B, D] -> [B, r]
    Hx = lambda w: (V(w) + sg2 * torch.einsum("brd,bd->br", rows, w)) / a
    rr = rows.shape[1]
    eye = torch.eye(rr, dtype=torch.float64, device=x.device)
    Q = (sg2 / a ** 2) * (eye + sg2 * Js) + torch.diag_embed(r2.expand(rr))
    # H H^T from H applied to its own rows: H^T e_k = (V e_k + sg2 rows_k) / a
    Ht = (op.embed(eye.to(dt)[None].expand(B, rr, rr).reshape(B * rr, rr), obs_shape).reshape(B, rr, -1)
          .to(torch.float64) + sg2 * rows) / a                                        # [B, r, D] = (H^T)^T
    HHt = Ht @ Ht.transpose(1, 2)
    Sm = Q + v * HHt
    LS, _ = torch.linalg.cholesky_ex(0.5 * (Sm + Sm.transpose(1, 2)))
    LQ, _ = torch.linalg.cholesky_ex(0.5 * (Q + Q.transpose(1, 2)))
    u_c = V(xf + sg2 * score.reshape(B, -1).to(torch.float64)) / a
    xp = m + math.sqrt(v) * z.reshape(B, -1).to(torch.float64)
    e = torch.einsum("bij,bj->bi", LQ, ctx.randn((B, rr), torch.float64, x.device))
    innov = yh - u_c - Hx(xp - xf) - e
    gain = torch.cholesky_solve(innov[..., None], LS)[..., 0]
    xs = xp + v * torch.einsum("brd,br->bd", Ht, gain)
    log_z = _gauss_logpdf(yh - u_c - Hx(m - xf), LS)
    log_ghat = _gauss_logpdf(yh - u_c - Hx(xs - xf), LQ)
    return xs.to(dt).reshape(x.shape), log_z - log_ghat


def _smc_twisted(score_fn, sde: SDE, op: LinearOperator, y_hat: Tensor, ratio2: Tensor, x: Tensor,
                 ctx: SamplerContext, obs_shape, desc: List[float], C: int, P: int, ess_threshold: float,
                 info: Optional[dict], moves: int = 0, move_snr: float = 0.3,
                 pool_out: Optional[int] = None, move_kernel: str = "mala") -> Tensor:
    """The ``potential="twisted"`` SMC of :func:`smc` (MCGdiff's potentials) on the grid ``desc``.

    ``pool_out``: return that many particles drawn (systematic) from all clouds together, cloud c's
    particle p weighted by Z_c w_cp (Z_c the cloud's evidence estimate; its unbiasedness makes the
    pooled measure consistent as the number of clouds grows at a fixed cloud size).

    ``y_hat [B, r]`` = S^-1 U^T y, ``ratio2 [r]`` = (s_y / S)^2.  Log-weights are kept in float64.
    """
    B, dev, dt = x.shape[0], x.device, x.dtype
    n = len(desc)
    # moves at the last level leave a score behind that nothing uses; elsewhere it feeds the next step
    ctx.expect_nfe((n - 1) * (1 + moves) + (1 if moves else 0))
    yh = y_hat.to(device=dev, dtype=torch.float64)
    r2 = ratio2.to(device=dev, dtype=torch.float64)

    def pot_var(c) -> Tensor:                     # variance of g at a time with scalars c, [r]
        return c.sigma ** 2 + c.alpha ** 2 * r2

    def log_g(u: Tensor, c) -> Tensor:            # log g(x) up to a constant shared by all particles
        var = pot_var(c)
        return -0.5 * ((c.alpha * yh - u.to(torch.float64)) ** 2 / var).sum(1)

    c0 = sde.scalars(desc[0])
    logw = log_g(op.obs_coords(x), c0).reshape(C, P)
    log_z = torch.zeros(C, dtype=torch.float64, device=dev)      # log of each cloud's evidence estimate
    prev_log_g = logw.reshape(-1)
    n_resample = 0
    ess_min = 1.0
    cached: Optional[Tensor] = None
    acc_all: List[float] = []
    for i in range(n - 1):
        t, s = desc[i], desc[i + 1]
        ct, cs = sde.scalars(t), sde.scalars(s)
        # the moves at t left score(x, t) behind (MALA / ULA evaluate it at the accepted state)
        score = score_fn(x, torch.full((B,), t, dtype=dt, device=dev)) if cached is None else cached
        cached = None
        cx, c_score, v = sde.ancestral_coefs(ct.alpha, ct.sigma, cs.alpha, cs.sigma)
        mean = torch.add(x * cx, score, alpha=c_score)
        um = op.obs_coords(mean).to(torch.float64)
        cvar = pot_var(cs)                                                    # [r]
        target = cs.alpha * yh
        # the normalizer of N(u; um, v) g_s(u): N(target; um, v + c_s), minus the previous potential
        lw_new = -0.5 * ((target - um) ** 2 / (v + cvar)).sum(1) - 0.5 * torch.log(v + cvar).sum()
        lw_prev = prev_log_g - 0.5 * torch.log(pot_var(ct)).sum()
        logw = logw + (lw_new - lw_prev).reshape(C, P)
        # proposal: the transition's draw everywhere, its observed coordinates replaced by a draw of
        # the Gaussian product (isotropic v: the observed and unobserved parts are independent)
        prec = 1.0 / v + 1.0 / cvar
        u_mean = (um / v + target / cvar) / prec
        u_new = u_mean + ctx.randn(u_mean.shape, torch.float64, dev) / prec.sqrt()
        x = torch.add(mean, ctx.randn_like(x), alpha=math.sqrt(v))
        x = x + op.embed((u_new - op.obs_coords(x).to(torch.float64)).to(dt), obs_shape)
        prev_log_g = log_g(op.obs_coords(x), cs)
        last = i == n - 2
        w = torch.softmax(logw, 1)
        ess = 1.0 / (w ** 2).sum(1)
        ess_min = min(ess_min, float(ess.min()) / P)
        need = torch.ones(C, dtype=torch.bool, device=dev) if last and pool_out is None else ess < ess_threshold * P
        if last and pool_out is not None:
            need = torch.zeros(C, dtype=torch.bool, device=dev)
        res = _resample_clouds(w, logw, need, ctx)
        if res is not None:
            flat, logw, dz = res
            x = x.index_select(0, flat)
            prev_log_g = prev_log_g.index_select(0, flat)
            log_z = log_z + dz
            n_resample += int(need.sum())
        if moves:
            tgt_u = (cs.alpha * yh).to(dt)
            inv_c = (1.0 / cvar).to(dt)
            x, cached, acc = _langevin_moves(score_fn, op, obs_shape, x, s, moves, move_snr, C, P, ctx,
                                             lambda v_: op.embed(inv_c * (tgt_u - op.obs_coords(v_)), obs_shape),
                                             lambda v_: v_, move_kernel)
            acc_all.append(acc)
            prev_log_g = log_g(op.obs_coords(x), cs)
    cloud_ess = None
    if pool_out is not None:
        lw_all = (log_z[:, None] + logw).reshape(-1)
        log_z = log_z + torch.logsumexp(logw, 1) - math.log(P)
        cz = torch.softmax(log_z, 0)
        cloud_ess = float(1.0 / (cz ** 2).sum())
        idx = _systematic(torch.softmax(lw_all, 0)[None], ctx, pool_out)[0]
        x = x.index_select(0, idx)
        n_resample += 1
    if info is not None:
        info.update({"resamples": n_resample, "ess_min": ess_min, "ess_final": float(ess.mean()) / P, "grid_points": n, "clouds": C, "particles": P,
                     "potential": "twisted", "log_evidence": log_z.tolist()})
        if cloud_ess is not None:
            info["cloud_ess"] = cloud_ess
        if acc_all:
            info["move_acceptance"] = sum(acc_all) / len(acc_all)
    return x


def _smc_grid(sde: SDE, steps: int, eps: float, grid: str) -> List[float]:
    """``steps + 1`` times from T down to eps: uniform in the log-SNR lambda (default) or in t."""
    if grid not in SMC_GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid grids: {list(SMC_GRIDS)}")
    if grid == "time_uniform":
        return _uniform_grid(sde, steps, eps)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    lam = [sde.log_snr(torch.tensor([v], dtype=torch.float64)).item() for v in (sde.T, eps)]
    u = torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64)
    t = [sde.scalar_t_from_log_snr(lam[0] + float(v) * (lam[1] - lam[0])) for v in u]
    t[0], t[-1] = sde.T, eps
    return t


def _resample_clouds(w: Tensor, logw: Tensor, need: Tensor, ctx: SamplerContext):
    """Systematic resampling of the clouds flagged in ``need [C]`` (the others keep their particles).

    Returns None when no cloud is flagged, else ``(flat, logw, dz)``: ``flat [C P]`` indices into
    the particle batch, the log-weights after (0 in the resampled clouds) and each cloud's
    log-evidence increment, log mean_p w_cp where resampled and 0 elsewhere.
    """
    if not bool(need.any()):
        return None
    C, P = w.shape
    dev = w.device
    idx = torch.where(need[:, None], _systematic(w, ctx), torch.arange(P, device=dev)[None].expand(C, P))
    flat = (idx + P * torch.arange(C, device=dev)[:, None]).reshape(-1)
    dz = torch.where(need, torch.logsumexp(logw, 1) - math.log(P), torch.zeros(C, dtype=logw.dtype, device=dev))
    return flat, torch.where(need[:, None], torch.zeros_like(logw), logw), dz


def _systematic(w: Tensor, ctx: SamplerContext, m: Optional[int] = None) -> Tensor:
    """Systematic resampling (Kitagawa 1996) of each row of ``w [C, P]``: ``m`` (default P) indices a row."""
    C, P = w.shape
    m = P if m is None else int(m)
    g = ctx.generator
    u0 = (torch.rand(C, 1, dtype=torch.float64, generator=g, device=g.device if g is not None else w.device)
          .to(w.device))
    pos = (u0 + torch.arange(m, dtype=torch.float64, device=w.device)[None]) / m
    cdf = torch.cumsum(w, 1)
    cdf[:, -1] = 1.0
    return torch.searchsorted(cdf, pos).clamp(max=P - 1)


WRAPPERS: Dict[str, Callable] = {"projection": projection, "dps": dps, "pigdm": pigdm}
LOOPS: Dict[str, Callable] = {"replacement": replacement, "repaint": repaint, "smc": smc}
METHODS = sorted(WRAPPERS) + sorted(LOOPS)
_WRAPPER_OPTIONS = {"projection": (), "dps": ("scale",), "pigdm": ("scale",)}


def sample_posterior(score_fn: ScoreFn, sde: SDE, op, y: Tensor, method: str = "smc",
                     sampler: Optional[str] = None, generator: Optional[torch.Generator] = None, *,
                     eps: float = 1e-3, device=None, dtype: Optional[torch.dtype] = None,
                     progress: bool = False, **options) -> PosteriorResult:
    """Samples of p(x0 | y) for y = A x0 + noise, with the unconditional ``score_fn``.

    Args:
        score_fn: the prior's score ``score_fn(x, t)``.
        sde: its forward SDE.
        op: a :mod:`scoresde.ops` operator (its ``noise_std`` is the observation noise) or a dense
            ``[m, D]`` matrix (noiseless).
        y: observations ``[B, *obs_shape]``, one a sample (repeat one observation B times for B
            samples of one posterior); the samples have shape ``[B, *op.input_shape(obs_shape)]``.
        method: one of :data:`METHODS` (see the module docstring).
        sampler: for the score wrappers (``projection``, ``dps``, ``pigdm``) any :func:`scoresde.sample`
            sampler (default ``"pc"``); ``replacement`` runs its own PC loop (None or ``"pc"``);
            ``repaint`` and ``smc`` run their own loops (None).
        generator: the only source of randomness.
        eps: the smallest time reached.
        options: the method's options (``scale`` for dps / pigdm; replacement: predictor, corrector,
            steps, snr, corrector_steps, denoise, langevin_norm; repaint: steps, jump_length, jumps,
            denoise; smc: steps, particles, ess_threshold, grid, potential, twist_cov, moves, move_snr,
            move_kernel, pool, oversample), the rest go to the sampler.

    Returns:
        :class:`PosteriorResult`: ``.x``, ``.nfe`` (forward passes), ``.backward_passes``, ``.seconds``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {METHODS}")
    op = as_operator(op)
    if not torch.is_tensor(y) or y.dim() < 2:
        raise ValueError("y must be a tensor [B, *obs_shape] (one observation a sample)")
    if not torch.isfinite(y).all():
        raise ValueError("y must be finite")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    device = torch.device(device) if device is not None else y.device
    dtype = dtype or (y.dtype if y.is_floating_point() else torch.get_default_dtype())
    y = y.to(device=device, dtype=dtype)
    shape = (y.shape[0],) + tuple(op.input_shape(tuple(y.shape[1:])))
    info: dict = {}
    if method in WRAPPERS:
        names = _WRAPPER_OPTIONS[method]
        m_opts = {k: options.pop(k) for k in names if k in options}
        wrapped = WRAPPERS[method](score_fn, sde, op, y, **m_opts)
        out = sample(wrapped, sde, shape, sampler=sampler or "pc", generator=generator, eps=eps,
                     progress=progress, device=device, dtype=dtype, **options)
        x, nfe, seconds, back = out.x, out.nfe, out.seconds, getattr(wrapped, "backward_passes", 0)
        used = dict(out.options, **m_opts)
        sampler_name = out.sampler
    else:
        if sampler not in (None, "pc") or (sampler == "pc" and method != "replacement"):
            raise ValueError(f"method {method!r} runs its own loop: sampler must be None"
                             + (" or 'pc'" if method == "replacement" else "") + f", got {sampler!r}")
        fn = LOOPS[method]
        import inspect
        valid = [p for p in inspect.signature(fn).parameters if p not in
                 ("score_fn", "sde", "op", "y", "x", "ctx", "eps", "info")]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {method!r}; valid options: {sorted(valid)}")
        from tqdm.auto import tqdm
        bar = tqdm(total=None, desc=method, unit="nfe", leave=False) if progress else None
        counter = CountingScore(score_fn, bar)
        ctx = SamplerContext(generator, False, bar)
        x0 = sde.prior_sample(shape, generator=generator, dtype=dtype,
                              device=generator.device if generator is not None else device).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            extra = {"info": info} if method == "smc" else {}
            with torch.no_grad():
                x = fn(counter, sde, op, y, x0, ctx, eps=float(eps), **extra, **options)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        nfe, back, used, sampler_name = counter.calls, int(info.get("backward_passes", 0)), dict(options), method
    if op.noise_std == 0:
        x = op.consistent(x, y)
    return PosteriorResult(x, nfe, seconds, None, None, sampler_name, used, method=method,
                           backward_passes=back, info=info)
