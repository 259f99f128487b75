"""DPM-Solver++ (scoresde/samplers/dpm_solver.py) runs exactly the update its docstring states,
order by order: DDIM, the 2M update of Lu et al.'s Alg. 2, the 3M update."""

import math

import pytest
import torch

import scoresde as sd
from scoresde import flow


def _documented(sde, x, steps, order, lower_order_final, variant2="2M"):
    """The docstring's updates, written from it in the weight form, in float64."""
    mix = sd.ring8()
    t = flow.time_grid(sde, steps, 1e-3, "vp_quadratic")
    den = flow.Denoiser(mix.score_fn(sde), sde, t, x)
    lam = sde.log_snr(t).tolist()
    xt = x / float(sde.mean_coef(t[:1]))
    D, H = [], []
    for i in range(steps):
        D.append(den(xt, i))
        h = lam[i + 1] - lam[i]
        k = min(order, i + 1)
        if lower_order_final:
            k = min(k, steps - i)
        phi1 = math.expm1(-h)
        new = math.exp(-h) * xt - phi1 * D[i]
        if k == 2:
            r0 = H[-1] / h
            if variant2 == "2M":   # -phi1 [(1 + 1/(2 r0)) D_i - 1/(2 r0) D_{i-1}]
                new = math.exp(-h) * xt - phi1 * ((1 + 0.5 / r0) * D[i] - 0.5 / r0 * D[i - 1])
            else:                  # the 3M form truncated at D1: + phi2 D1
                new = new + (phi1 / h + 1) * (D[i] - D[i - 1]) / r0
        elif k == 3:
            r0, r1 = H[-1] / h, H[-2] / h
            d0, d1 = (D[i] - D[i - 1]) / r0, (D[i - 1] - D[i - 2]) / r1
            D1 = d0 + r0 / (r0 + r1) * (d0 - d1)
            D2 = (d0 - d1) / (r0 + r1)
            phi2 = phi1 / h + 1
            phi3 = phi2 / h - 0.5
            new = new + phi2 * D1 - phi3 * D2
        H.append(h)
        xt = new
    return xt * float(sde.mean_coef(t[-1:]))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dpm_solver_runs_the_documented_update_of_each_order(sde, order, lower_order_final):
    x = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = sd.sample(sd.ring8().score_fn(sde), sde, (32, 2), sampler="dpm_solver", steps=6, order=order,
                    lower_order_final=lower_order_final, x_init=x, dtype=torch.float64)
    want = _documented(sde, x, 6, order, lower_order_final)
    torch.testing.assert_close(out.x, want, rtol=1e-10, atol=1e-10)
    if order == 2:
        # and not the phi_2 form at order 2: the two differ by far more than rounding
        other = _documented(sde, x, 6, order, lower_order_final, variant2="phi2")
        assert (other - want).abs().max() > 1e-4
