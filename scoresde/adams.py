r"""A variable-step Adams-Bashforth-Moulton solver in PEC mode: one evaluation per step.

torchdiffeq has Adams methods only on fixed steps (``explicit_adams``, ``implicit_adams``) and its
adaptive methods are Runge-Kutta pairs that spend 6 (dopri5) or 12 (dopri8) evaluations a step.
The probability-flow ODE of a likelihood is smooth in the VP clock (``scoresde.flow``), where a
multistep method reuses every past evaluation; this module is the adaptive multistep method
torchdiffeq lacks (Hairer, Norsett & Wanner, *Solving ODEs I*, sec. III.5, variable step sizes;
Shampine & Gordon 1975 for the predictor-corrector error estimate).

One step from u_n to u_{n+1} = u_n + h, with the history of the last k derivatives
F_j = f(u_j, .) at the (unequally spaced) points u_{n-k+1} .. u_n:

    P:  y^P = y_n + sum_j b_j F_j,        b_j = int_{u_n}^{u_{n+1}} l_j(u) du   (Adams-Bashforth, order k)
    E:  F_{n+1} = f(u_{n+1}, y^P)
    C:  y^C = y_n + sum_j c_j F_j,        over the k + 1 points u_{n-k+1} .. u_{n+1} (Adams-Moulton, order k + 1)

with l_j the Lagrange basis polynomials through the points (integrated exactly by Gauss-Legendre).
PEC mode keeps F_{n+1} = f(y^P) in the history and does not evaluate f(y^C): one evaluation per
step.  The error estimate is Milne's device, y^C - y^P, the local error of the order-k predictor
to leading order; the solution carried on is the corrector's (local extrapolation), whose local
error is one order smaller, so the estimate is conservative.  It is measured in torchdiffeq's
mixed norm, the largest over the state's tensors of

    RMS( (y^C - y^P) / (atol + rtol max(|y_n|, |y^C|)) ),

and a step is accepted when that is <= 1; the next step is h (0.9 / err)^(1 / (p + 1)) with the
factor kept in [0.2, 5], p the predictor's order, and no step longer than 1/8 of the interval.
The start is order 1 (Euler predictor, trapezoidal corrector) on a small first step, and the order
rises by one per accepted step up to k: no extra evaluations for a starting procedure.  A rejected step costs its one evaluation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch

Tensor = torch.Tensor
State = Tuple[Tensor, ...]

__all__ = ["adams_pec", "AdamsStats", "adams_weights"]

_MAX_STEPS = 100_000
# Where f is nearly zero (sub-VP's first decades of log sigma) the error estimate is ~0 and the
# controller grows h 5x a step; without a cap one step then leaps over the region where the modes
# merge, and the estimate, made from that step's two end values, can miss it (measured: sub-VP in
# log_sigma at rtol 1e-2, 6 NFE and 3.9 nats/dim of error).  No step spans more than this share.
_MAX_STEP_FRACTION = 0.125


@dataclass
class AdamsStats:
    """What :func:`adams_pec` did: ``nfe`` = 1 + ``accepted`` + ``rejected`` evaluations of f."""

    nfe: int
    accepted: int
    rejected: int
    order: int


@functools.lru_cache(maxsize=None)
def _gauss_legendre01(k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1], exact for polynomials of degree < 2 (k // 2 + 1)
    >= k: cached, because every step asks for the same few (``leggauss`` costs ~50 us a call)."""
    gx, gw = np.polynomial.legendre.leggauss(k // 2 + 1)
    return 0.5 * (gx + 1.0), 0.5 * gw


def adams_weights(nodes: Sequence[float], a: float, b: float) -> List[float]:
    """w_j = int_a^b l_j(u) du for the Lagrange basis l_j through ``nodes`` (exact: Gauss-Legendre
    with enough points for the degree len(nodes) - 1).  Nodes are shifted and scaled by b - a
    first, so the weights stay well conditioned whatever the units of u."""
    h = b - a
    s = (np.asarray(nodes, dtype=np.float64) - a) / h
    k = len(s)
    xs, ws = _gauss_legendre01(k)
    # l_j(x) = prod_{m != j} (x - s_m) / (s_j - s_m), all j at once (one numpy pass, not k^2
    # python-level products: ~14 us a call instead of ~600 us)
    diff = s[:, None] - s[None, :]
    np.fill_diagonal(diff, 1.0)
    num = np.broadcast_to(xs[None, None, :] - s[None, :, None], (k, k, xs.size)).copy()
    num[np.arange(k), np.arange(k), :] = 1.0                   # drop m = j
    lj = num.prod(axis=1) / diff.prod(axis=1)[:, None]
    return (h * (lj @ ws)).tolist()


def _combine(y: State, weights: Sequence[float], hist: Sequence[State]) -> State:
    out = []
    for i, yi in enumerate(y):
        acc = None
        for w, F in zip(weights, hist):
            acc = torch.add(yi, F[i], alpha=w) if acc is None else acc.add_(F[i], alpha=w)
        out.append(yi.clone() if acc is None else acc)
    return tuple(out)


def _error_ratio(y0: State, yp: State, yc: State, rtol: float, atol: float) -> float:
    worst = 0.0
    for a, p, c in zip(y0, yp, yc):
        scale = torch.maximum(a.abs(), c.abs()).mul_(rtol).add_(atol)
        worst = max(worst, float(((c - p) / scale).pow(2).mean().sqrt()))
    return worst


def adams_pec(f: Callable[[float, State], State], y0: State, u0: float, u1: float, *, rtol: float,
              atol: float, order: int = 4) -> Tuple[State, AdamsStats]:
    """Solve dy/du = f(u, y) from u0 to u1 > u0 with the adaptive Adams PEC method above.

    Args:
        f: ``f(u, y) -> dy/du`` with u a Python float and y a tuple of tensors.
        y0: the initial state (a tuple of tensors; each gets its own RMS error).
        u0, u1: the interval, u0 < u1.
        rtol, atol: tolerances of the local error estimate (see the module docstring).
        order: the largest predictor order k (the corrector's is k + 1); 4 measured best on the
            likelihood ODE of ``scoresde.likelihood`` (fewest evaluations at a given error).

    Returns:
        ``(y(u1), AdamsStats)``.
    """
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 8:
        raise ValueError(f"order must be an integer in [1, 8], got {order!r}")
    if not u1 > u0:
        raise ValueError(f"adams_pec integrates forward: need u1 > u0, got {u0} .. {u1}")
    span = u1 - u0
    y = tuple(y0)
    u = float(u0)
    hist_u: List[float] = [u]
    hist_f: List[State] = [tuple(f(u, y))]
    nfe, acc, rej = 1, 0, 0
    # first step: an Euler step's error ~ h^2 |f'| / 2 is unknown yet; start small and let the
    # controller grow h by up to 5x per step
    h = span * 0.02 * rtol ** 0.25
    while u1 - u > 1e-13 * span:
        if acc + rej > _MAX_STEPS:
            raise RuntimeError(f"adams_pec: more than {_MAX_STEPS} steps (rtol={rtol}, atol={atol})")
        h = min(h, _MAX_STEP_FRACTION * span, u1 - u)
        if h <= 1e-14 * span:
            raise RuntimeError(f"adams_pec: step size underflow at u={u} (rtol={rtol}, atol={atol})")
        un = u1 if u1 - (u + h) <= 1e-13 * span else u + h
        yp = _combine(y, adams_weights(hist_u, u, un), hist_f)
        fp = tuple(f(un, yp))
        nfe += 1
        yc = _combine(y, adams_weights(hist_u + [un], u, un), hist_f + [fp])
        err = _error_ratio(y, yp, yc, rtol, atol)
        p, h_used = len(hist_u), un - u
        if err <= 1.0:
            y, u = yc, un
            hist_u, hist_f = (hist_u + [un])[-order:], (hist_f + [fp])[-order:]
            acc += 1
        else:
            rej += 1
        factor = 5.0 if err == 0.0 else 0.9 * err ** (-1.0 / (p + 1))
        h = h_used * min(5.0, max(0.2, factor))
        if not math.isfinite(h):
            raise RuntimeError(f"adams_pec: non-finite error estimate at u={u}")
    return y, AdamsStats(nfe=nfe, accepted=acc, rejected=rej, order=order)
