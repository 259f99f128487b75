"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Alg. 2 for order 2 and its third-order multistep form).

It steps the probability-flow ODE in the scaled variables of :mod:`scoresde.flow`
(x~ = x / alpha, sigma~ = exp(-lambda)) with the denoiser D, exactly in the linear part:

    x~(lambda_{i+1}) = e^{-h} x~(lambda_i) + int_{lambda_i}^{lambda_{i+1}} e^{lambda - lambda_{i+1}} D dlambda,

and approximates D by the polynomial through its last values in lambda.
"""

from __future__ import annotations

import math

import torch

from ..flow import Denoiser
from ..sde import SDE
from . import register_sampler
from .grids import GridLike, resolve_grid
from ._scaled import check_steps, finish, grid_steps, record_scaled

Tensor = torch.Tensor


@register_sampler("dpm_solver")
def dpm_solver(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, steps: int = 20,
               order: int = 2, grid: GridLike = "vp_quadratic", rho: float = 7.0, denoise: bool = False,
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
    """
    steps = check_steps(steps)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    ctx.expect_nfe(steps)
    n_grid = grid_steps(steps, denoise)
    t = resolve_grid(sde, grid, n_grid, eps, rho)
    den = Denoiser(score_fn, sde, t, x)
    lam, tt = den.log_snr, den.times
    xt = den.scale(x, 0)
    ctx.record(tt[0], x)
    Ds, hs = [], []
    for i in range(n_grid):
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
