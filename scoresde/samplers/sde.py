"""The reverse-time SDE through torchsde (Song et al., ICLR 2021, eq. 6).

    dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar,      t from T down to eps.

torchsde integrates forward in its time, so we use tau = T - t in [0, T - eps]:

    dx = [g(t)^2 score(x, t) - f(t) x] dtau + g(t) dW_tau.

The noise is additive (g does not depend on x), so the Ito and Stratonovich forms coincide and every
torchsde method applies: ``euler`` (Euler-Maruyama), ``milstein`` (derivative-free; equal to Euler
here), ``srk`` (Roessler's SRI2, strong order 1.0, 4 evaluations a step once torchsde's recomputed
stages are cached), and the Stratonovich
``heun``, ``midpoint``, ``euler_heun`` and ``reversible_heun``.  The state is flattened to
``[B, D]`` with diagonal noise, so any data shape works without a ``D x D`` diffusion matrix.

The Brownian path is a ``torchsde.BrownianInterval`` whose entropy is drawn from the caller's
generator (left alone, torchsde would seed it from NumPy's global state, and the same seed would
not give the same samples).  The last step is not denoised: its noise, of variance g(eps)^2 dt,
is tiny at eps (about 2e-4 for VP with 500 steps).
"""

from __future__ import annotations

from typing import Optional

import torch
import torchsde

from ..sde import SDE, expand_to
from . import register_sampler

Tensor = torch.Tensor

ITO_METHODS = ("euler", "milstein", "srk")
STRATONOVICH_METHODS = ("heun", "midpoint", "euler_heun", "reversible_heun")
METHODS = ITO_METHODS + STRATONOVICH_METHODS


class _ReverseTimeSDE:
    """The reverse-time SDE in tau = T - t, flattened, in torchsde's interface (f, g)."""

    noise_type = "diagonal"

    def __init__(self, sde: SDE, score_fn, shape, sde_type: str):
        self.sde, self.score_fn, self.shape, self.sde_type = sde, score_fn, tuple(shape), sde_type
        # torchsde asks for f at the same (tau, y) more than once: its contract check evaluates
        # f(ts[0], y0) before the first step does, and its SRK step recomputes earlier stages.
        # A small cache keyed on (tau, the state tensor) makes each point one score evaluation.
        self._cache: list = []

    def _t(self, tau: Tensor, y: Tensor) -> Tensor:
        return (self.sde.T - torch.as_tensor(tau, dtype=torch.float64, device=y.device)).reshape(1).expand(y.shape[0])

    def f(self, tau, y: Tensor) -> Tensor:
        key = (float(tau), id(y), y._version)
        for k, out, _ in self._cache:
            if k == key:
                return out
        t = self._t(tau, y)
        x = y.reshape(self.shape)
        score = self.score_fn(x, t.to(y.dtype))
        coef = self.sde.drift_coef(t).to(y.dtype)
        g2 = (self.sde.diffusion(t) ** 2).to(y.dtype)
        out = (expand_to(g2, x) * score - expand_to(coef, x) * x).reshape(y.shape)
        self._cache = self._cache[-3:] + [(key, out, y)]  # holding y keeps its id from reuse
        return out

    def g(self, tau, y: Tensor) -> Tensor:
        t = self._t(tau, y)
        return self.sde.diffusion(t).to(y.dtype)[:, None].expand(y.shape)


@register_sampler("sde")
def sde(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, method: str = "euler",
        steps: Optional[int] = None, dt: Optional[float] = None) -> Tensor:
    """Reverse-time SDE sampler: torchsde.sdeint with ``steps`` equal steps (default 1000) or
    step ``dt`` from T down to eps (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown SDE method {method!r}; valid torchsde methods: {list(METHODS)}")
    if steps is not None and dt is not None:
        raise ValueError("give steps or dt, not both")
    span = sde.T - eps
    if dt is not None:
        if not 0 < dt <= span:
            raise ValueError(f"dt must lie in (0, T - eps = {span}], got {dt}")
        n = None
        step = float(dt)
    else:
        n = 1000 if steps is None else steps
        if int(n) != n or n < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        n = int(n)
        # a hair longer than span / n, so rounding in torchsde's t + dt never adds a sliver step
        step = span / n * (1 + 1e-9)
    sde_type = "ito" if method in ITO_METHODS else "stratonovich"
    shape = x.shape
    y0 = x.reshape(shape[0], -1)
    entropy = None
    if ctx.generator is not None:
        entropy = int(torch.randint(0, 2 ** 62, (1,), generator=ctx.generator,
                                    device=ctx.generator.device).item())
    levy = "space-time" if method == "srk" else "none"
    bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=tuple(y0.shape), dtype=y0.dtype,
                                   device=y0.device, entropy=entropy, levy_area_approximation=levy)
    n_out = 2
    if ctx.record_on:
        n_out = (n if n is not None else max(int(round(span / step)), 1)) + 1
    ts = torch.linspace(0.0, span, n_out, dtype=torch.float64, device=y0.device)
    if n is not None:
        ctx.expect_nfe(n * {"srk": 4, "heun": 2, "midpoint": 2, "euler_heun": 1}.get(method, 1))
    options = {"grad_free": True} if method == "milstein" else None
    ys = torchsde.sdeint(_ReverseTimeSDE(sde, score_fn, shape, sde_type), y0, ts, bm=bm,
                         method=method, dt=step, options=options)
    if ctx.record_on:
        for tau, y in zip(ts, ys):
            ctx.record(sde.T - tau, y.reshape(shape))
    return ys[-1].reshape(shape)
