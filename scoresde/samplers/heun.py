"""Heun's second-order method in sigma~ (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models" (EDM), Algorithm 1), for any linear SDE through the scaled
variables of :mod:`scoresde.flow`: dx~/dsigma~ = (x~ - D) / sigma~.
"""

from __future__ import annotations

import torch

from ..flow import Denoiser
from ..sde import SDE
from . import register_sampler
from .grids import GridLike, resolve_grid
from ._scaled import check_steps, finish, grid_steps, record_scaled

Tensor = torch.Tensor


@register_sampler("heun")
def heun(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, steps: int = 10,
         grid: GridLike = "vp_quadratic", rho: float = 7.0, denoise: bool = False) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, EDM, Algorithm 1), in sigma~.

    With d(x~, sigma~) = (x~ - D) / sigma~ and a step from sigma~_i to sigma~_{i+1}:

        x' = x~ + (sigma~_{i+1} - sigma~_i) d(x~, sigma~_i),
        x~ <- x~ + (sigma~_{i+1} - sigma~_i) [d(x~, sigma~_i) + d(x', sigma~_{i+1})] / 2,

    except for a last step to sigma~ = 0 (``denoise=True``), which is the Euler step x~ <- D, as in
    EDM.  NFE = 2 ``steps`` - 1 with ``denoise``, 2 ``steps`` without.

    Defaults by measurement (ring8, 10,000 samples, benchmarks/samplers.py): EDM's own grid
    (``grid="karras"``, rho = 7) spends its steps at sigma~ far above the data scale when
    sigma~_max is 150 (VP) and its W2 at 20 NFE was 1.1x (VE) to 2.5x (sub-VP) that of
    ``"vp_quadratic"``; ``"time_uniform"`` was better still for VP and sub-VP but worse for VE.
    The final denoising step changed nothing measurable.  Heun remains far behind the multistep
    solvers at equal NFE (two evaluations a step): 7-9x the exact-sample floor at 20 NFE.
    """
    steps = check_steps(steps)
    n_grid = grid_steps(steps, denoise)
    ctx.expect_nfe(2 * steps - 1 if denoise else 2 * steps)
    t = resolve_grid(sde, grid, n_grid, eps, rho)
    den = Denoiser(score_fn, sde, t, x)
    sig, tt = den.sigma, den.times
    xt = den.scale(x, 0)
    ctx.record(tt[0], x)
    for i in range(n_grid):
        s0, s1 = sig[i], sig[i + 1]
        d = torch.sub(xt, den(xt, i)).mul_(1.0 / s0)
        xp = torch.add(xt, d, alpha=s1 - s0)
        dp = torch.sub(xp, den(xp, i + 1)).mul_(1.0 / s1)
        xt = torch.add(xt, d, alpha=0.5 * (s1 - s0)).add_(dp, alpha=0.5 * (s1 - s0))
        record_scaled(ctx, tt[i + 1], xt, den.alpha[i + 1])
    return finish(xt, den, denoise, ctx)
