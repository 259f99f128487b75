"""Stand-ins for ``sd.sample`` and ``sd.log_likelihood`` used by the training tests only while
those functions have not landed on main (they are built on the samplers/likelihood branches).

Tiny on purpose: the probability-flow ODE by fixed-step Euler for samples, and by torchdiffeq
with the exact divergence for log-likelihoods.
"""

from types import SimpleNamespace

import torch
from torchdiffeq import odeint


def sample(score_fn, sde, shape, sampler="ode", generator=None, steps=50, eps=1e-3, **options):
    x = sde.prior_sample(shape, generator=generator)
    ts = torch.linspace(sde.T, eps, steps + 1)
    rev = sde.reverse(score_fn, probability_flow=True)
    with torch.no_grad():
        for i in range(steps):
            drift, _ = rev.sde(x, ts[i].expand(x.shape[0]))
            x = x + drift * (ts[i + 1] - ts[i])
    return SimpleNamespace(x=x, nfe=steps)


def log_likelihood(score_fn, sde, x, divergence="exact", rtol=1e-5, atol=1e-5, eps=1e-5, **options):
    rev = sde.reverse(score_fn, probability_flow=True)
    nfe = [0]

    def f(t, state):
        y, _ = state
        nfe[0] += 1
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            v, _ = rev.sde(y, t.expand(y.shape[0]))
            flat = v.reshape(v.shape[0], -1)
            div = sum(torch.autograd.grad(flat[:, i].sum(), y, retain_graph=True)[0].reshape(y.shape[0], -1)[:, i]
                      for i in range(flat.shape[1]))
        return v.detach(), div.detach()

    ts = torch.tensor([eps, sde.T], dtype=x.dtype)
    ys, ds = odeint(f, (x, torch.zeros(x.shape[0], dtype=x.dtype)), ts, rtol=rtol, atol=atol, method="dopri5")
    return SimpleNamespace(logp=sde.prior_logp(ys[-1]) + ds[-1], nfe=nfe[0])
