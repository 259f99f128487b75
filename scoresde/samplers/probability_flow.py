"""The probability-flow ODE through torchdiffeq (Song et al., ICLR 2021, Sec. 4.3, eq. 13).

    dx/dt = f(t) x - 1/2 g(t)^2 score(x, t),

integrated from T down to eps (sampling) or either way (encoding, likelihoods).  Any torchdiffeq
method works: adaptive ones (``dopri5``, the default, with rtol = atol = 1e-5 as Song et al.'s
RK45) pick their own steps; fixed-grid ones (``euler``, ``midpoint``, ``rk4``, ...) take ``steps``
equal steps of the chosen time variable.

Time variable (the names of :data:`scoresde.flow.TIME_VARIABLES`, shared with the likelihood).
Every linear SDE with the same (alpha, sigma) has the same probability-flow ODE, and in the scaled
variables of :mod:`scoresde.flow`, x~ = x / alpha, sigma~ = sigma / alpha = exp(-lambda) (the
noise level of the equivalent VE process), it reads, with D the denoiser (Tweedie's E[x0 | x]),

    dx~/dsigma~     = (x~ - D) / sigma~ = -sigma(t) score(x, t),
    dx~/dlog sigma~ = x~ - D           = -(sigma(t)^2 / alpha(t)) score(x, t),
    dx~/dtau        = -alpha(t) (sigma~ dsigma~/dtau) score(x, t),

with t = t_from_log_snr(-log sigma~) in closed form and tau the VP clock of :mod:`scoresde.flow`
(sigma~ dsigma~/dtau = beta(tau) (1 + sigma~^2) / 2).  ``time_variable`` picks ``"t"`` (the
equation above, as in Song et al.), ``"sigma"`` (EDM's x~ against sigma~), ``"log_sigma"`` (x~
against log sigma~ = -lambda) or ``"vp"`` (x~ against tau).  The default is ``"log_sigma"``, by
measurement (benchmarks/samplers.py; ring8, 10,000 samples, dopri5, error against a 1e-10
solution): at rtol = atol = 1e-5 it is 10-20x more accurate than ``"t"`` on VP and sub-VP (median
error 2e-5 against 2e-4 - 4e-4) for about 10% more evaluations (128 against 116 on VP), and on VP
it reaches the accuracy of ``"t"`` at 1e-5 with 80 evaluations instead of 116; on VE the two are
the same variable up to scale.  ``"sigma"`` took twice the evaluations.  The log scale follows
the noise level over its four decades (sigma~ from about 150 for VP at T down to 0.01 at eps),
where t crowds the data-scale part of the trajectory into t < 0.1.

Adaptive solvers probe beyond the interval while they pick their first step (torchdiffeq's
initial-step heuristic evaluates at t0 + h0); there the SDE may be undefined (VP's beta(t) < 0 for
t < -b0/(b1 - b0), so g(t) is NaN).  The right-hand side therefore clamps its time into the
integration interval: a probe outside it sees the value at the end, and no solution point lies
outside.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torchdiffeq import odeint

from ..flow import TIME_VARIABLES, VP_CLOCK, TimeVariable
from ..sde import SDE, time_dtype
from . import register_sampler
from .grids import GridLike, resolve_grid

Tensor = torch.Tensor
# torchdiffeq's solvers (0.2.x): adaptive and fixed-grid
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")
FIXED_METHODS = ("euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams",
                 "fixed_adams", "heun2", "ralston")


def _valid_methods() -> List[str]:
    try:
        from torchdiffeq._impl.odeint import SOLVERS
        return sorted(SOLVERS)
    except Exception:  # pragma: no cover - private API moved
        return sorted(ADAPTIVE_METHODS + FIXED_METHODS)


def _alpha(sde: SDE, t: float, device) -> float:
    return float(sde.mean_coef(torch.tensor([float(t)], dtype=torch.float64, device=device)))


def _to_state(sde: SDE, time_variable: str, x: Tensor, t: float) -> Tensor:
    """The integrated state: x itself in t, x~ = x / alpha(t) in the noise-level variables."""
    return x if time_variable == "t" else x / _alpha(sde, t, x.device)


def _from_state(sde: SDE, time_variable: str, y: Tensor, t: float) -> Tensor:
    return y if time_variable == "t" else y * _alpha(sde, t, y.device)


def integrate_probability_flow(score_fn, sde: SDE, x: Tensor, t_start: float, t_end: float, *,
                               method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                               steps: Optional[int] = None, time_variable: str = "log_sigma",
                               times: Optional[Sequence[float]] = None,
                               options: Optional[dict] = None,
                               grid: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor]]]:
    """Solve the probability-flow ODE from ``x`` at ``t_start`` to ``t_end`` (either direction).

    Args:
        score_fn: the score; count its calls by wrapping it (see :class:`CountingScore`).
        method: a torchdiffeq method; ``steps`` equal steps of ``time_variable`` for fixed-grid
            methods (default 100), tolerances ``rtol``/``atol`` for adaptive ones.
        time_variable: ``"t"``, ``"sigma"``, ``"log_sigma"`` or ``"vp"`` (see the module docstring).
        times: extra output times (forward time t, between the ends) for a trajectory; the
            solvers interpolate there, so they cost no evaluation.
        options: passed to torchdiffeq as ``options``.
        grid: fixed-grid methods only: the times (forward t, ``steps + 1`` of them from t_start
            to t_end, checked by the caller) to step on, mapped to ``time_variable``; default
            ``steps`` equal steps of ``time_variable``.

    Returns:
        ``(x_end, trajectory)`` with trajectory ``(times [n], states [n, B, ...])`` when ``times``
        was given, else None.
    """
    if time_variable not in TIME_VARIABLES:
        raise ValueError(f"unknown time_variable {time_variable!r}; valid: {list(TIME_VARIABLES)}")
    valid = _valid_methods()
    if method not in valid:
        raise ValueError(f"unknown ODE method {method!r}; valid torchdiffeq methods: {valid}")
    if t_start == t_end:
        raise ValueError("t_start and t_end are equal")
    for name, tt in (("t_start", t_start), ("t_end", t_end)):
        if not 0 <= tt <= sde.T:
            raise ValueError(f"{name}={tt} lies outside [0, T={sde.T}]")
    if time_variable != "t" and min(t_start, t_end) <= 0:
        raise ValueError(f"time_variable={time_variable!r} needs times > 0 (sigma~ = 0 at t = 0); "
                         "use time_variable='t'")
    fixed = method not in ADAPTIVE_METHODS
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if steps is not None and not fixed:
        raise ValueError(f"steps applies to fixed-grid methods, not the adaptive {method!r}; "
                         "set rtol/atol instead")
    tv = TimeVariable(sde, time_variable)
    u0, u1 = tv.scalar_u_of_t(t_start), tv.scalar_u_of_t(t_end)
    lo, hi = min(u0, u1), max(u0, u1)
    shape = x.shape

    batch = shape[0]
    # The right-hand side's coefficients are computed on the device from torchdiffeq's time
    # tensor u (a dozen one-element float64 ops): reading u on the host (``float(u)``) would
    # cost a device sync at every evaluation, stalling the GPU between the stages of a step.
    # Adaptive solvers (torchdiffeq's dopri5) still sync in their own step control.
    t_dtype = time_dtype(x.dtype)

    def coefs(u: Tensor) -> tuple:
        # clamp: adaptive solvers probe beyond the interval when choosing the first step
        uc = u.detach().to(torch.float64).clamp(lo, hi).reshape(1)
        t = tv.t_of_u(uc)
        if time_variable == "t":
            a, k = sde.drift_coef(t), -0.5 * sde.diffusion(t) ** 2
        else:
            al, sg = sde.mean_coef(t), sde.std(t)
            if time_variable == "sigma":
                a, k = al, -sg
            elif time_variable == "log_sigma":
                a, k = al, -sg ** 2 / al
            else:  # dx~/dtau = -alpha (sigma~ dsigma~/dtau) score, sigma~ dsigma~/dtau = beta(tau) (1 + sigma~^2) / 2
                a, k = al, -al * 0.5 * VP_CLOCK.beta(uc) * (1.0 + (sg / al) ** 2)
        return a.to(x.dtype), k.to(x.dtype), t.to(t_dtype).expand(batch)

    def rhs(u: Tensor, y: Tensor) -> Tensor:
        a, k, t_vec = coefs(u)
        if time_variable == "t":  # f y - g^2 / 2 score
            return torch.addcmul(y * a, score_fn(y, t_vec), k)
        # -c score(alpha y)
        return score_fn(y * a, t_vec) * k

    out_u = [u0]
    if times is not None:
        out_u += [tv.scalar_u_of_t(float(tt)) for tt in times]
    out_u.append(u1)
    u_grid = torch.tensor(out_u, dtype=torch.float64, device=x.device)
    if x.dtype != torch.float64:
        # torchdiffeq keeps the time in the state's dtype for its arithmetic
        u_grid = u_grid.to(x.dtype)
    opts = dict(options or {})
    if grid is not None and not fixed:
        raise ValueError(f"grid applies to fixed-grid methods, not the adaptive {method!r}")
    if fixed and grid is not None:
        g64 = torch.as_tensor(grid, dtype=torch.float64)
        # the grid's times in u, with the ends exactly those of the solve
        u_steps = [u0] + [tv.scalar_u_of_t(float(tt)) for tt in g64[1:-1].tolist()] + [u1]
        opts.setdefault("grid_constructor",
                        lambda func, y0, t: torch.tensor(u_steps, dtype=t.dtype, device=t.device))
    elif fixed:
        n = int(steps) if steps is not None else 100
        g0, g1 = u_grid[0], u_grid[-1]
        opts.setdefault("grid_constructor",
                        lambda func, y0, t: torch.linspace(float(g0), float(g1), n + 1,
                                                           dtype=t.dtype, device=t.device))
    y0 = _to_state(sde, time_variable, x, t_start)
    ys = odeint(rhs, y0, u_grid, rtol=rtol, atol=atol, method=method, options=opts)
    x_end = _from_state(sde, time_variable, ys[-1], t_end)
    traj = None
    if times is not None:
        all_t = [float(t_start)] + [float(tt) for tt in times] + [float(t_end)]
        states = torch.stack([_from_state(sde, time_variable, ys[i], all_t[i]) for i in range(len(all_t))])
        traj = (torch.tensor(all_t, dtype=torch.float64), states)
    return x_end, traj


@register_sampler("ode")
def ode(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, t_start: Optional[float] = None, method: str = "dopri5",
        rtol: float = 1e-5, atol: float = 1e-5, steps: Optional[int] = None,
        time_variable: str = "log_sigma", trajectory_points: int = 101,
        grid: Optional[GridLike] = None) -> Tensor:
    """Probability-flow ODE sampler: torchdiffeq from T down to eps (see the module docstring).

    ``grid`` (fixed-grid methods): the times to step on, any form of
    :mod:`scoresde.samplers.grids` (``steps + 1`` times, ``steps`` default 100); default
    ``steps`` equal steps of ``time_variable``.  ``t_start`` (default T): start there instead
    (SDEdit's t0); the fixed grids then span [eps, t_start].

    With ``return_trajectory`` the states come at ``trajectory_points`` times evenly spaced in
    ``time_variable`` (interpolated by the solver: no extra evaluations).
    """
    t_start = float(sde.T) if t_start is None else float(t_start)
    times = None
    if ctx.record_on:
        tv = TimeVariable(sde, time_variable)
        u = torch.linspace(tv.scalar_u_of_t(t_start), tv.scalar_u_of_t(eps), int(trajectory_points),
                           dtype=torch.float64, device=x.device)[1:-1]
        times = tv.t_of_u(u).tolist()
    t_grid = None
    if grid is not None:
        if method in ADAPTIVE_METHODS:
            raise ValueError(f"grid applies to fixed-grid methods, not the adaptive {method!r}")
        t_grid = resolve_grid(sde, grid, 100 if steps is None else int(steps), eps, t_start=t_start)
    x_end, traj = integrate_probability_flow(score_fn, sde, x, t_start, eps, method=method, rtol=rtol,
                                             atol=atol, steps=steps, time_variable=time_variable,
                                             times=times, grid=t_grid)
    if traj is not None:
        for tt, xs in zip(traj[0], traj[1]):
            ctx.record(tt, xs)
    return x_end
