"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Alg. 2 for order 2 and its third-order multistep form).

It steps the probability-flow ODE in the scaled variables of :mod:`scoresde.flow`
(x~ = x / alpha, sigma~ = exp(-lambda)) with the denoiser D, exactly in the linear part:

    x~(lambda_{i+1}) = e^{-h} x~(lambda_i) + int_{lambda_i}^{lambda_{i+1}} e^{lambda - lambda_{i+1}} D dlambda,

and approximates D by the polynomial through its last values in lambda.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..flow import Denoiser
from ..sde import SDE
from . import register_sampler
from .grids import GridLike, resolve_grid
from ._scaled import check_steps, finish, grid_steps, record_scaled

Tensor = torch.Tensor

# the default order: 3 from this many steps on, 2 below (see the docstring's "Defaults")
ORDER3_FROM_STEPS = 24


@register_sampler("dpm_solver")
def dpm_solver(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, t_start: Optional[float] = None, steps: int = 30,
               order: Optional[int] = None, grid: GridLike = "vp_quadratic", rho: float = 7.0, denoise: bool = False,
               lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++ multistep, one evaluation a step (see the module docstring).

    At step i, D_i = D(x~_i, t_i), h = lambda_{i+1} - lambda_i > 0, r_0 = h_{i-1} / h,
    r_1 = h_{i-2} / h and phi_1 = expm1(-h) (< 0).  The update the code runs, by the order k of
    the step:

    * k = 1 (DDIM):  x~_{i+1} = e^{-h} x~_i - phi_1 D_i.
    * k = 2, DPM-Solver++(2M) (Lu et al., Alg. 2):
      x~_{i+1} = e^{-h} x~_i - phi_1 D_i - (phi_1 / 2) D1,   D1 = (D_i - D_{i-1}) / r_0,
      i.e. -phi_1 [(1 + 1/(2 r_0)) D_i - 1/(2 r_0) D_{i-1}]: the first divided difference taken
      with the weight 1/2 (DPM-Solver's ``solver_type="dpmsolver"``), not phi_2.
    * k = 3, DPM-Solver++(3M) (DPM-Solver's ``multistep_dpm_solver_third_update``):
      x~_{i+1} = e^{-h} x~_i - phi_1 D_i + phi_2 D1 - phi_3 D2,
      phi_2 = phi_1 / h + 1,  phi_3 = phi_2 / h - 1/2,
      d_0 = (D_i - D_{i-1}) / r_0,  d_1 = (D_{i-1} - D_{i-2}) / r_1,
      D1 = d_0 + r_0 / (r_0 + r_1) (d_0 - d_1),  D2 = (d_0 - d_1) / (r_0 + r_1).

    The order of step i is min(``order``, i + 1) (the first steps warm up with the D values there
    are); ``lower_order_final`` also caps it at the number of steps left (the last step is first
    order, the one before at most second), as DPM-Solver's code does for few steps; here always,
    because the last steps are the longest in lambda (sub-VP's sigma~(eps) ~ 1e-4) and high order
    hurts there.  With ``denoise`` the grid has ``steps - 1`` steps and the sample is
    D(x~, eps) (see :mod:`._scaled`).  NFE = ``steps``.

    Defaults.  ``steps=30`` (30 NFE, raised from 20) and ``order=None``, which means 3 (3M) from
    ``ORDER3_FROM_STEPS`` = 24 steps on and 2 (2M) below, as DPM-Solver's authors advise (3M for
    unconditional sampling, lower orders for few steps).  Measured by
    benchmarks/sampler_defaults.py (results/sampler_defaults.md; VP, exact mixture scores, W2 over
    the exact-sample floor on four problems: a one-Gaussian class and a four-mode class of ring8
    from exact p_T(x | y) draws, predicted at issue 12's n, and unconditional ring8 / aniso16 from
    the prior, n = 10,000, 2 seeds), the worst of the four: 2M at 20 steps 1.61x (1.25, 1.52,
    1.61, 1.11), 3M at 20 1.86x (ring8; 2M wins there below 23 steps and at 5-10 steps by 1.5-2x,
    results/fewstep.md), 3M at 25 1.32x, at 29 1.19x, at 30 1.18x (1.00, 1.05, 1.18, 0.98), at
    35 1.13x; 2M needs 40 steps for 1.20x.  From 24 steps 3M beats 2M on all four problems (at 24:
    ring8 1.38x against 1.48x, the four-mode class 1.17x against 1.34x), so explicit ``steps``
    below 24 keep 2M's few-step behaviour.  ``lower_order_final=False`` would help VP (3M at 25
    steps: 1.13x on ring8) but costs sub-VP 3-6x (its long last steps), so it stays True; the
    logsnr, karras and time_uniform grids were worse than ``vp_quadratic``.
    """
    steps = check_steps(steps)
    if order is None:
        order = 3 if steps >= ORDER3_FROM_STEPS else 2
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    ctx.expect_nfe(steps)
    n_grid = grid_steps(steps, denoise)
    t = resolve_grid(sde, grid, n_grid, eps, rho, t_start=t_start)
    den = Denoiser(score_fn, sde, t, x)
    lam, tt = den.log_snr, den.times
    xt = den.scale(x, 0)
    ctx.record(tt[0], x)
    Ds, hs = [], []
    for i in range(n_grid):
        ctx.at_step(i + 1)
        Ds.append(den(xt, i))
        Ds = Ds[-3:]
        h = lam[i + 1] - lam[i]
        o = min(order, len(Ds))
        if lower_order_final:
            o = min(o, n_grid - i)
        phi1 = math.expm1(-h)
        xt = torch.add(xt * math.exp(-h), Ds[-1], alpha=-phi1)
        if o == 2:
            # - phi1 / 2 * D1, D1 = (D_i - D_{i-1}) / r0
            c = -0.5 * phi1 / (hs[-1] / h)
            xt.add_(Ds[-1], alpha=c).add_(Ds[-2], alpha=-c)
        elif o == 3:
            r0, r1 = hs[-1] / h, hs[-2] / h
            d1_0 = (Ds[-1] - Ds[-2]) / r0
            d1_1 = (Ds[-2] - Ds[-3]) / r1
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            # + phi2 D1 - phi3 D2 with D1 = d1_0 + r0 / (r0 + r1) (d1_0 - d1_1), D2 = (d1_0 - d1_1) / (r0 + r1)
            xt.add_(d1_0, alpha=phi2).add_(d1_0 - d1_1, alpha=phi2 * r0 / (r0 + r1) - phi3 / (r0 + r1))
        hs.append(h)
        record_scaled(ctx, tt[i + 1], xt, den.alpha[i + 1])
    return finish(xt, den, denoise, ctx)
