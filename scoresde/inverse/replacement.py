"""Replacement: Song et al.'s (2021) PC inpainter / colorizer, the observed part overwritten by a fresh noisy
copy of the observation after every predictor and corrector step."""

from __future__ import annotations


import torch

from ..samplers import SamplerContext
from ..samplers.pc import CORRECTORS, LANGEVIN_NORMS, PREDICTORS, corrector_step, predictor_step
from ..sde import SDE
from .operators import LinearOperator
from .base import _uniform_grid

Tensor = torch.Tensor

__all__ = ['replacement']


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
        ctx.at_step(i + 1)
        t_vec = torch.full((B,), grid[i], dtype=x.dtype, device=x.device)
        for _ in range(n_corr):
            x, mean = corrector_step(corrector, score_fn, sde, x, t_vec, grid[i], snr, ctx, langevin_norm)
            x, mean = replace(x, grid[i], True), replace(mean, grid[i], False)
        x, mean = predictor_step(predictor, score_fn, sde, x, t_vec, grid[i], grid[i + 1], ctx)
        x, mean = replace(x, grid[i + 1], True), replace(mean, grid[i + 1], False)
    return mean if denoise else x
