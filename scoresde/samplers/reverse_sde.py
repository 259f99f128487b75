"""The reverse-time SDE through torchsde (Song et al., ICLR 2021, eq. 6).

    dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar,      t from T down to eps.

torchsde integrates forward in its time, so we use tau = T - t in [0, T - eps]:

    dx = [g(t)^2 score(x, t) - f(t) x] dtau + g(t) dW_tau.

The noise is additive (g does not depend on x), so the Ito and Stratonovich forms coincide and every
torchsde method applies: ``euler`` (Euler-Maruyama), ``milstein`` (derivative-free; equal to Euler
here), ``srk`` (torchsde's SRK for additive noise: Roessler's SRA1, strong order 1.5, 2 evaluations a
step once torchsde's recomputed stage is cached), and the Stratonovich ``heun``, ``midpoint``,
``euler_heun`` and ``reversible_heun``.  The state is flattened to ``[B, D]`` and torchsde gets
the noise as additive with a diffusion-vector product g(t) v, so any data shape works without a
``D x D`` diffusion matrix (``reversible_heun``, which asks for g itself, gets it as diagonal noise).

The Brownian path is drawn step by step from the caller's generator (:class:`_GridBrownian`), so
the same seed gives the same samples; torchsde's ``BrownianInterval``, which answers any interval
from a tree of seeded draws, cost more than half of an Euler step at a batch of 1,000, and the
fixed-step solvers never need more than their own steps.  The last step is not denoised: its
noise, of variance g(eps)^2 dt, is tiny at eps (about 2e-4 for VP with 500 steps).

The coefficients f(t) and g(t) are one-element tensors computed on the device from torchsde's
time tensor (a few small ops a step; reading the time on the host would cost a device sync an
evaluation).  torchsde's own fixed-step loop compares its time tensors on the host, two syncs a
step (torchsde 0.2.x); this module adds none per step.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torchsde

from ..sde import SDE, time_dtype
from . import register_sampler

Tensor = torch.Tensor

ITO_METHODS = ("euler", "milstein", "srk")
STRATONOVICH_METHODS = ("heun", "midpoint", "euler_heun", "reversible_heun")
METHODS = ITO_METHODS + STRATONOVICH_METHODS


class _ReverseTimeSDE:
    """The reverse-time SDE in tau = T - t, flattened, in torchsde's interface (f, g_prod).

    The noise is additive: g(t) is one number for every sample and coordinate, so torchsde gets
    ``noise_type = "additive"`` and a diffusion-vector product ``g_prod = g(t) v`` (never a
    ``[B, D, D]`` matrix); :class:`_DiagonalReverseTimeSDE` adds ``g`` for the methods that need it.
    """

    noise_type = "additive"

    def __init__(self, sde: SDE, score_fn, shape, sde_type: str, t_start: float):
        self.sde, self.score_fn, self.shape, self.sde_type = sde, score_fn, tuple(shape), sde_type
        self.t_start = float(t_start)  # tau = t_start - t
        self.batch = self.shape[0]
        self.flat = len(self.shape) == 2  # vectors: torchsde's [B, D] state is the data's shape
        # torchsde asks for f at the same (tau, y) more than once: its contract check evaluates
        # f(ts[0], y0) before the first step does, and its SRK step recomputes earlier stages.
        # A small cache keyed on the state tensor makes each point one score evaluation.
        self._cache: list = []
        self._coefs_list: list = []

    def _at(self, tau, y: Tensor) -> tuple:
        """``(f(t), g(t), t as the score's [B] input, g(t)^2)`` at t = t_start - tau, computed on the device from
        torchsde's time tensor (reading it on the host would be a device sync an evaluation), kept
        for the last few time tensors, since a step asks for the same time several times."""
        key = id(tau)
        for k, tau_ref, out in self._coefs_list:
            if k == key and tau_ref is tau:
                return out
        tt = torch.as_tensor(tau, dtype=torch.float64, device=y.device).detach().reshape(1)
        t = self.t_start - tt
        f, g = self.sde.drift_coef(t), self.sde.diffusion(t)
        out = (f.to(y.dtype), g.to(y.dtype), t.to(time_dtype(y.dtype)).expand(self.batch), (g * g).to(y.dtype))
        self._coefs_list = self._coefs_list[-3:] + [(key, tau, out)]  # holding tau keeps its id from reuse
        return out

    def f(self, tau, y: Tensor) -> Tensor:
        # keyed on the state tensor alone (its identity and version): torchsde's methods evaluate
        # f at one time per stage state, and a repeated query (the contract check, SRK's
        # recomputed stages) passes the same state with a new, equal time tensor, whose value
        # could only be compared on the host
        key = (id(y), y._version)
        for k, out, y_ref, _ in self._cache:
            if k == key and y_ref is y:
                return out
        f, _, t_vec, g2 = self._at(tau, y)
        score = self.score_fn(y if self.flat else y.reshape(self.shape), t_vec)
        # g^2 score - f y
        out = torch.addcmul(y * -f, score if self.flat else score.reshape(y.shape), g2)
        self._cache = self._cache[-2:] + [(key, out, y, tau)]  # holding y and tau keeps their ids from reuse
        return out

    def g_prod(self, tau, y: Tensor, v: Tensor) -> Tensor:
        return v * self._at(tau, y)[1]


class _DiagonalReverseTimeSDE(_ReverseTimeSDE):
    """The same SDE as diagonal noise with ``g`` as a ``[B, D]`` tensor (reversible_heun needs g)."""

    noise_type = "diagonal"

    def g(self, tau, y: Tensor) -> Tensor:
        return self._at(tau, y)[1].expand_as(y).clone()


class _GridBrownian(torchsde.BaseBrownian):
    """Brownian increments over fixed steps ``[k h, (k + 1) h]`` of ``[0, span]`` (the last one may
    be shorter), drawn from the sampler's generator as the solver walks the grid.

    torchsde's fixed-step solvers query each step's interval once, in order; its
    ``BrownianInterval`` answers any interval through a binary tree of seeded draws, which at a
    batch of 1,000 cost more than half of an Euler step.  The standard normals come in chunks of
    up to ``chunk_elements`` numbers and no more than the ``steps`` of the grid need, ``draw(m)``
    giving ``[m, *size]`` (one generator call for many steps where the state is small).  With
    ``levy=True`` the space-time Levy area comes too, as torchsde defines it:
    U = dt (W / 2 + H) with H ~ N(0, dt / 12) independent of W ~ N(0, dt).
    """

    __slots__ = ("_size", "_h", "_draw", "_dtype", "_device", "_levy", "_k", "_W", "_U", "_per_chunk", "_chunk",
                 "_used", "_ta", "_dts")

    def __init__(self, size, h: float, draw, dtype, device, levy: bool, steps: int,
                 chunk_elements: int = 1 << 20, span: Optional[float] = None):
        self._size, self._h, self._draw, self._dtype, self._device = tuple(size), float(h), draw, dtype, device
        span = float(h) * int(steps) if span is None else float(span)
        # the steps [k h, min((k + 1) h, span)] of torchsde's fixed-step loop, as host floats
        self._dts = [min(float(h), span - k * float(h)) for k in range(int(steps))]
        self._ta = None
        self._levy = bool(levy)
        self._k, self._W, self._U = -1, None, None
        per_step = 2 if self._levy else 1
        self._per_chunk = per_step * max(1, min(int(steps), int(chunk_elements) // (per_step * math.prod(self._size))))
        self._chunk, self._used = None, 0

    def _normal(self) -> Tensor:
        if self._chunk is None or self._used == self._chunk.shape[0]:
            self._chunk, self._used = self._draw(self._per_chunk), 0
        self._used += 1
        return self._chunk[self._used - 1]

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_A:
            raise RuntimeError("_GridBrownian answers interval queries, without Levy area A")
        # a new step when torchsde passes a new start-time object: its fixed-step loop queries each
        # step's interval with the same tensors; reading them on the host would be a device sync
        # a step.  The step lengths come from the host-side grid.
        if torch.is_tensor(ta):
            new_step = ta is not self._ta
        else:  # host floats (tests, callers outside torchsde): checked against the grid
            ta, tb = float(ta), float(tb)
            new_step = ta != self._ta
            k, dt = int(round(ta / self._h)), tb - ta
            if new_step and (k != self._k + 1 or abs(ta - k * self._h) > 1e-6 * self._h
                             or not 0 < dt <= self._h * (1 + 1e-6)):
                raise RuntimeError(f"step [{ta}, {tb}] is not the next step of the grid of {self._h}")
        if new_step:
            self._ta, self._k = ta, self._k + 1
            if self._k >= len(self._dts):
                raise RuntimeError(f"step {self._k + 1} is not the next step of the grid of {self._h}: "
                                   f"it has {len(self._dts)} steps")
            dt = self._dts[self._k] if torch.is_tensor(ta) else tb - ta
            self._W = self._normal() * math.sqrt(dt)
            if self._levy:
                # U = dt (W / 2 + H),  H = sqrt(dt / 12) z2
                self._U = torch.add(self._W * (0.5 * dt), self._normal(), alpha=dt * math.sqrt(dt / 12.0))
        if return_U:
            if not self._levy:
                raise RuntimeError("this Brownian motion was built without the space-time Levy area")
            return self._W, self._U
        return self._W

    def __repr__(self) -> str:
        return f"_GridBrownian(size={self._size}, h={self._h}, levy={self._levy})"

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    @property
    def shape(self):
        return self._size

    @property
    def levy_area_approximation(self):
        return "space-time" if self._levy else "none"


@register_sampler("sde")
def sde(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, t_start: Optional[float] = None, method: str = "euler",
        steps: Optional[int] = None, dt: Optional[float] = None) -> Tensor:
    """Reverse-time SDE sampler: torchsde.sdeint with ``steps`` equal steps (default 1000) or
    step ``dt`` from ``t_start`` (default T; SDEdit's t0) down to eps (see the module docstring)."""
    t_start = float(sde.T) if t_start is None else float(t_start)
    if method not in METHODS:
        raise ValueError(f"unknown SDE method {method!r}; valid torchsde methods: {list(METHODS)}")
    if steps is not None and dt is not None:
        raise ValueError("give steps or dt, not both")
    span = t_start - eps
    if dt is not None:
        if not 0 < dt <= span:
            raise ValueError(f"dt must lie in (0, t_start - eps = {span}], got {dt}")
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
    n_steps = n if n is not None else math.ceil(span / step * (1 - 1e-9))
    bm = _GridBrownian(tuple(y0.shape), step, lambda m: ctx.randn((m,) + tuple(y0.shape), y0.dtype, y0.device, batch_dim=1),
                       y0.dtype, y0.device, levy=method == "srk", steps=n_steps, span=span)
    n_out = 2
    if ctx.record_on:
        n_out = (n if n is not None else max(int(round(span / step)), 1)) + 1
    ts = torch.linspace(0.0, span, n_out, dtype=torch.float64, device=y0.device)
    if n is not None:
        ctx.expect_nfe(n * {"srk": 2, "heun": 2, "midpoint": 2, "euler_heun": 1}.get(method, 1))
    options = {"grad_free": True} if method == "milstein" else None
    # reversible_heun asks for g itself; the others only for g times a vector
    cls = _DiagonalReverseTimeSDE if method == "reversible_heun" else _ReverseTimeSDE
    ys = torchsde.sdeint(cls(sde, score_fn, shape, sde_type, t_start), y0, ts, bm=bm, method=method, dt=step,
                         options=options)
    if ctx.record_on:
        for tau, y in zip(ts, ys):
            ctx.record(t_start - tau, y.reshape(shape))
    return ys[-1].reshape(shape)
