"""The reference method the likelihood benchmark compares against: a re-creation of Song et al.'s
probability-flow likelihood (score_sde_pytorch, ``likelihood.py``; ICLR 2021), scipy's RK45 over
one flattened NumPy state.

It lives in the package, not in ``benchmarks/``, because it is part of what the benchmark
measures: ``scoresde-bench likelihood.enabled=true`` calls :func:`song_reference` from an
installed copy too.  scipy is only a development extra, so it is imported when the method runs.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..sde import SDE

Tensor = torch.Tensor

__all__ = ["reference_log_likelihood", "song_reference"]


def _scipy_integrate():
    try:
        from scipy import integrate
    except ImportError as e:  # scipy is a dev extra, not a dependency of the package
        raise ImportError("the reference likelihood method (Song et al.'s scipy RK45) needs scipy: "
                          "pip install scipy (or the package's dev extra)") from e
    return integrate


def reference_log_likelihood(score_fn, sde, data, probe, rtol=1e-5, atol=1e-5, eps=1e-5):
    """A re-creation of score_sde_pytorch's ``likelihood.py`` (Song et al. 2021), without the
    bits/dim offset: log p_eps in nats, the latent, and scipy's nfev.

    Faithful in the parts that cost time: scipy's RK45 over one flattened float64 NumPy vector
    [x, delta_logp], a float32 torch copy of the state at every evaluation, the drift of the
    probability-flow ODE computed once for the state derivative and again (with autograd) for
    the Hutchinson divergence of the whole drift, and a single fixed probe.
    """
    import numpy as np

    integrate = _scipy_integrate()
    shape, B = data.shape, data.shape[0]
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift(x, t):
        return rsde.sde(x, t)[0]

    def divergence(x, t):
        with torch.enable_grad():
            x = x.requires_grad_(True)
            g = torch.autograd.grad((drift(x, t) * probe).sum(), x)[0]
        return (g * probe).reshape(B, -1).sum(1)

    def rhs(t, state):
        x = torch.from_numpy(state[:-B].reshape(shape)).to(data.device).float()
        tt = torch.full((B,), t, device=data.device)
        dx = drift(x, tt).detach().cpu().numpy().reshape(-1)
        dlogp = divergence(x, tt).detach().cpu().numpy().reshape(-1)
        return np.concatenate([dx, dlogp])

    with torch.no_grad():
        init = np.concatenate([data.detach().cpu().numpy().reshape(-1), np.zeros(B)])
        sol = integrate.solve_ivp(rhs, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
        end = sol.y[:, -1]
        z = torch.from_numpy(end[:-B].reshape(shape)).float().to(data.device)
        delta = torch.from_numpy(end[-B:]).float().to(data.device)
    return sde.prior_logp(z) + delta, z, sol.nfev


def song_reference(score_fn, sde: SDE, x: Tensor, *, eps: float, rtol: float, atol: float,
                   generator: Optional[torch.Generator] = None):
    """:func:`reference_log_likelihood` (one Rademacher probe drawn from ``generator``) in
    :func:`scoresde.bench.likelihood_rows`' interface: ``(logp [B], z, nfe, seconds)``."""
    _scipy_integrate()  # imported before the clock starts, as the benchmark used to load it
    probe = (torch.randint(0, 2, tuple(x.shape), generator=generator) * 2 - 1).to(torch.float32)
    t0 = time.perf_counter()
    logp, z, nfe = reference_log_likelihood(score_fn, sde, x.float(), probe, rtol=rtol, atol=atol, eps=eps)
    return logp, z, int(nfe), time.perf_counter() - t0
