"""iPNDM: the improved pseudo-numerical method of Zhang & Chen (2023, "Fast Sampling of Diffusion
Models with Exponential Integrator" (DEIS), ICLR, App.: iPNDM), in the form Zhou et al. (2024,
"Fast ODE-based Sampling for Diffusion Models in Around 5 Steps" (AMED), CVPR; their
``sample_ipndm``) found the best of the training-free solvers at 5-10 NFE: explicit
Adams-Bashforth in sigma~ on the EDM form of the probability-flow ODE of :mod:`scoresde.flow`,

    dx~/dsigma~ = d(x~, sigma~) = (x~ - D(x~, sigma~)) / sigma~,

with the lower orders warming up from the derivatives there are.

Kept by measurement (benchmarks/results/fewstep.md: VP, exact scores, 10,000 samples): at 5 NFE
``max_order=3`` was the best solver on aniso16 (1.84x the exact-sample floor on an optimised
grid) and within 1.2x of the best on ring8 (2.0x), and by far the best on a named grid (3.0x on
ring8 against 7.6x for the next); order 4 was worse at 5 and 10 NFE.

Default budget ``steps=20`` (20 NFE, as ``dpm_solver`` and ``unipc``), raised from 10 by measurement
(benchmarks/guidance.py: exact mixture scores, VP; W2 over the floor of 2,000 samples a class): at 10
NFE iPNDM was 1.3x on a single-Gaussian class (from the exact p_T), 1.7x on a class of four ring8
modes and 2.5x on ring8 (floor of 10,000); at 20 NFE 1.00x, 1.03x and 1.12x (aniso16: 1.03x), the
most accurate of the 20-NFE solvers there.  ``max_order=4`` stays (order 3 at 20 NFE: 1.00x, 1.07x,
1.20x).  The few-step figures above are at explicit ``steps``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..flow import Denoiser
from ..sde import SDE
from . import register_sampler
from ._scaled import check_steps, finish, grid_steps, record_scaled
from .grids import GridLike, resolve_grid

Tensor = torch.Tensor

# Adams-Bashforth weights of d_i, d_{i-1}, ... by order (equal steps)
_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@register_sampler("ipndm")
def ipndm(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, t_start: Optional[float] = None, steps: int = 20,
          max_order: int = 4,
          grid: GridLike = "vp_quadratic", rho: float = 7.0, denoise: bool = False) -> Tensor:
    """iPNDM (Zhang & Chen 2023; Zhou et al. 2024's ``sample_ipndm``), one evaluation a step.

    With d_i = (x~_i - D(x~_i, t_i)) / sigma~_i and k = min(``max_order``, i + 1), the update the
    code runs from sigma~_i to sigma~_{i+1} is

        x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) sum_j b^k_j d_{i-j},

    b^1 = (1), b^2 = (3, -1) / 2, b^3 = (23, -16, 5) / 12, b^4 = (55, -59, 37, -9) / 24: the
    Adams-Bashforth weights of equal steps, used as they are on any grid (the "improved" PNDM:
    no Runge-Kutta warm-up, no step-ratio correction).  With ``denoise`` the grid has
    ``steps - 1`` steps and the sample is D(x~, eps) (see :mod:`._scaled`).  NFE = ``steps``.
    """
    steps = check_steps(steps)
    if max_order not in _AB:
        raise ValueError(f"max_order must be 1, 2, 3 or 4, got {max_order}")
    ctx.expect_nfe(steps)
    n_grid = grid_steps(steps, denoise)
    t = resolve_grid(sde, grid, n_grid, eps, rho, t_start=t_start)
    den = Denoiser(score_fn, sde, t, x)
    sig, tt = den.sigma, den.times
    xt = den.scale(x, 0)
    ctx.record(tt[0], x)
    ds: list = []
    for i in range(n_grid):
        ctx.at_step(i + 1)
        ds.append(torch.sub(xt, den(xt, i)).mul_(1.0 / sig[i]))
        ds = ds[-4:]
        b = _AB[min(max_order, len(ds))]
        h = sig[i + 1] - sig[i]
        xt = xt.clone()
        for j, w in enumerate(b):
            xt.add_(ds[-1 - j], alpha=h * w)
        record_scaled(ctx, tt[i + 1], xt, den.alpha[i + 1])
    return finish(xt, den, denoise, ctx)
