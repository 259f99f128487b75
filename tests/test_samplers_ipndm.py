"""iPNDM (scoresde/samplers/ipndm.py): the documented Adams-Bashforth update, DDIM at order 1, and
the orders of convergence 1, 2, 3 against a tight dopri5 solve."""

import math

import pytest
import torch

import scoresde as sd
from scoresde import flow

EPS = 1e-3
AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def _documented(sde, x, steps, max_order, grid):
    """The docstring's update, written from it, in float64."""
    score = sd.ring8().score_fn(sde)
    t = flow.time_grid(sde, steps, EPS, grid)
    al, sg = sde.mean_coef(t), sde.std(t)
    s = sg / al
    xt, ds = x / al[0], []
    for i in range(steps):
        D = xt + sg[i] ** 2 / al[i] * score(al[i] * xt, t[i].expand(x.shape[0]))
        ds.append((xt - D) / s[i])
        b = AB[min(max_order, len(ds))]
        xt = xt + (s[i + 1] - s[i]) * sum(w * ds[-1 - j] for j, w in enumerate(b))
    return xt * al[-1]


@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
def test_ipndm_runs_the_documented_update_of_each_order(sde, max_order):
    x = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = sd.sample(sd.ring8().score_fn(sde), sde, (32, 2), sampler="ipndm", steps=7, max_order=max_order,
                    grid="logsnr", x_init=x, dtype=torch.float64)
    assert out.nfe == 7
    torch.testing.assert_close(out.x, _documented(sde, x, 7, max_order, "logsnr"), rtol=1e-10, atol=1e-10)


def test_ipndm_of_order_one_is_ddim(sde):
    # Euler in sigma~ on dx~/dsigma~ = (x~ - D) / sigma~ is DDIM (Karras et al. 2022, Sec. 3),
    # which DPM-Solver++ runs at order 1: x~' = e^{-h} x~ + (1 - e^{-h}) D
    x = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kw = dict(steps=6, x_init=x, dtype=torch.float64, grid="karras")
    a = sd.sample(sd.ring8().score_fn(sde), sde, (32, 2), sampler="ipndm", max_order=1, **kw)
    b = sd.sample(sd.ring8().score_fn(sde), sde, (32, 2), sampler="dpm_solver", order=1, **kw)
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)


def test_ipndm_converges_at_orders_one_two_three_on_a_uniform_sigma_grid():
    # equal steps in sigma~ (an explicit grid): Adams-Bashforth's own orders
    sde = sd.VPSDE()
    mix = sd.GaussianMixture(torch.tensor([0.5, 0.5], dtype=torch.float64),
                             torch.tensor([[1.0, 0.0], [-1.0, 0.5]], dtype=torch.float64),
                             torch.stack([0.5 * torch.eye(2, dtype=torch.float64)] * 2))
    score = mix.score_fn(sde)
    x = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref, _ = sd.samplers.integrate_probability_flow(score, sde, x, 1.0, EPS, rtol=1e-11, atol=1e-11)
    ends = flow.sigma(sde, torch.tensor([1.0, EPS], dtype=torch.float64))

    def err(n, p):
        t = flow.t_of_sigma(sde, torch.linspace(float(ends[0]), float(ends[1]), n + 1, dtype=torch.float64))
        t[0], t[-1] = 1.0, EPS
        out = sd.sample(score, sde, (16, 2), sampler="ipndm", steps=n, max_order=p, grid=t, x_init=x,
                        dtype=torch.float64)
        return float((out.x - ref).abs().max())

    for p in (1, 2, 3):
        rate = math.log2(err(800, p) / err(1600, p))
        assert p - 0.3 < rate < p + 0.7, (p, rate)


def test_ipndm_rejects_bad_order():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="max_order must be 1, 2, 3 or 4"):
        sd.sample(sd.ring8().score_fn(sde), sde, (4, 2), sampler="ipndm", max_order=5)
