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
factor kept in [0.2, 5] (and at most ``reject_shrink`` after a rejection), p the predictor's order,
and no step longer than ``max_step`` (1/8) of the interval.
Where the rest of the interval is between one and two such steps, the next step is stretched to
the end if that makes it at most 20% longer, else the rest is split in two (no sliver of a last
step, which would cost an evaluation for nothing).
The start is order 1 (Euler predictor, trapezoidal corrector) on a small first step,
h_0 = 0.002 (u1 - u0) rtol^(1/4), and the order rises by one per accepted step up to k: no extra
evaluations for a starting procedure.  A rejected step costs its one evaluation.

Measured on the likelihood ODE (exact trace, 300 points, ring8 and aniso16 x VP, sub-VP, VE,
tolerances 5e-3 .. 1e-5, NFE interpolated at equal error): the small first step and the end rule
save 7.5% of the evaluations on average (5.6% in the worst case) against a first step 10x larger.
The low-order start's errors enter derivatives that later steps reuse, which Milne's estimate does
not see, so a cheaper start is not cheaper overall. Tried and not kept (within +-5% at equal error,
or worse): a growth cap of 2 instead of 5, Gustafsson's PI controller (0.7, 0.4) and (0.6, 0.2)
(fewer rejections but steps that lag behind a growing h), his predictive controller alone (more
rejections) or as a bound on the I controller, a tighter tolerance or a PECE evaluation on the ramp
steps, and predictor orders 3, 5, 6 (5 and 6 cost 15-50% more at the same error).

**The linearly implicit corrector** (``implicit=True``).  Where f has a Jacobian J = df/dy at
hand (the likelihood's exact trace computes all of it), the corrector can be the implicit
Adams-Moulton formula y^C = y_n + sum_j c_j F_j + c_new f(y^C), solved by one Newton step from the
predictor:

    f(y^C) ~ F^P + J (y^C - y^P)   =>   (I - c_new J) (y^C - y^P) = d,     d = sum_j (c_j - b_j) F_j + c_new F^P,

and the history keeps F^P + J (y^C - y^P), the derivative at the corrected point to first order,
instead of F^P.  Still one evaluation a step; the Jacobian is taken at the predicted point.  PEC
mode's region of absolute stability is that of the explicit predictor (about [-0.3, 0] h lambda
for order 4); this one's is, for linear f, that of the 4-step Adams-Moulton method, about
[-1.8, 0] (Hairer & Wanner, *Solving ODEs II*, sec. V.1).  The likelihood ODE needs it where the
modes of the data merge: there the flow contracts, with eigenvalues of df/dy down to -25 (16-d
mixture) and -60 (2-d ring) in the VP clock, and the explicit corrector's steps are held by
stability rather than accuracy.  Measured on the likelihood ODE (exact trace, 300 points,
rtol = atol = 1e-3): 41 instead of 61 evaluations on the 16-d mixture at the same error
(1.1e-4 nats/dim), the same 50 on the 2-d ring, whose steps are accuracy-bound.  Only the first
state tensor is corrected this way (the likelihood's log-det, which f does not depend on, keeps
the explicit correction).

J need not be exact: with any J the formula keeps the corrector's order (the history's derivative
is still F^P to first order, plus a term of the size of d), and a J close to df/dy in the stiff
directions buys the stability.  f may return J as ``[N, 1]``, J[b] times the identity for block
b (the likelihood's Hutchinson path passes its probe's Rayleigh quotient, which costs nothing).
Then the solve is a division by 1 - c_new J[b], kept >= 1/2 so that a growing mode never
amplifies the correction more than 2x.

Implementation: the state's tensors are one flat vector and the derivatives of the history one
``[k + 1, numel]`` buffer, so the predictor and the correction y^C - y^P are two matrix-vector
products a step for all the tensors together (tensors of different dtypes are solved in their
promoted dtype and returned in their own).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple, Union

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
# the first step, as a share of the interval at rtol = 1 (scaled by rtol^(1/4)); and how much
# longer than the controller's choice the last step may be stretched to reach the end
_FIRST_STEP = 0.002
_END_STRETCH = 1.2


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


@functools.lru_cache(maxsize=None)
def _gauss_legendre01_floats(k: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    xs, ws = _gauss_legendre01(k)
    return tuple(xs.tolist()), tuple(ws.tolist())


def _lagrange_integrals(s: Sequence[float], h: float, corrector: bool = False
                        ) -> Union[List[float], Tuple[List[float], List[float]]]:
    """h int_0^1 l_j(x) dx for the Lagrange basis through the scaled nodes s, in Python floats:
    at k <= 9 nodes this is ~3x faster than :func:`adams_weights`' numpy pass (small-array calls
    cost microseconds each), and the solver asks for two sets a step.

    With ``corrector`` (an even number k of nodes, where k and k + 1 nodes share the Gauss-Legendre
    rule of k // 2 + 1 points) it returns the integrals over s + [1] as well: their products are
    those over s times the new node's factor, taken last as a call over s + [1] takes it, so one
    pass gives both sets, the same floats as two calls, at about half their cost."""
    k = len(s)
    if corrector and k % 2:
        raise ValueError("corrector=True needs an even number of nodes (one Gauss rule for k and k + 1)")
    xs, ws = _gauss_legendre01_floats(k)
    out, corr = [], []
    for j, sj in enumerate(s):
        den, acc, acc_c = 1.0, 0.0, 0.0
        for m, sm in enumerate(s):
            if m != j:
                den *= sj - sm
        for x, w in zip(xs, ws):
            for m, sm in enumerate(s):
                if m != j:
                    w *= x - sm
            acc += w
            if corrector:
                acc_c += w * (x - 1.0)
        out.append(h * acc / den)
        if corrector:
            corr.append(h * acc_c / (den * (sj - 1.0)))
    if not corrector:
        return out
    den, acc = 1.0, 0.0
    for sm in s:
        den *= 1.0 - sm
    for x, w in zip(xs, ws):
        for sm in s:
            w *= x - sm
        acc += w
    corr.append(h * acc / den)
    return out, corr


def _step_weights(nodes: Sequence[float], a: float, b: float) -> Tuple[List[float], List[float]]:
    """The predictor's weights over ``nodes`` and the corrector's over ``nodes + [b]`` for the
    step a -> b (the same numbers as :func:`adams_weights`): one pass for an even number of nodes
    (:func:`_lagrange_integrals` with ``corrector``), two otherwise."""
    h = b - a
    s = [(v - a) / h for v in nodes]
    if len(s) % 2:
        return _lagrange_integrals(s, h), _lagrange_integrals(s + [1.0], h)
    return _lagrange_integrals(s, h, corrector=True)


def _with_jacobian(f: Callable, y0: Tensor) -> Callable:
    """``f`` for the implicit corrector, its Jacobian checked against the first state tensor:
    ``[N, n, n]`` blocks with N n = numel, or ``[N, 1]``, block b being J[b] times the identity."""

    def call(u: float, y: State):
        out = f(u, y)
        if not (isinstance(out, tuple) and len(out) == 2 and torch.is_tensor(out[1])):
            raise ValueError("adams_pec(implicit=True): f must return (derivatives, J)")
        derivs, jac = out
        if jac.dim() == 2 and jac.shape[1] == 1 and jac.shape[0] > 0 and y0.numel() % jac.shape[0] == 0:
            return derivs, jac
        N = jac.shape[0] if jac.dim() == 3 else 0
        if jac.dim() != 3 or jac.shape[1] != jac.shape[2] or N * jac.shape[1] != y0.numel():
            raise ValueError(f"adams_pec(implicit=True): J must be [N, n, n] with N n = {y0.numel()} (the "
                             f"first state tensor's size) or [N, 1] (multiples of the identity), got "
                             f"{tuple(jac.shape)}")
        return derivs, jac

    return call


def adams_pec(f: Callable[[float, State], State], y0: State, u0: float, u1: float, *, rtol: float,
              atol: float, order: int = 4, implicit: bool = False, first_step: float = _FIRST_STEP,
              max_step: float = _MAX_STEP_FRACTION, reject_shrink: float = 1.0) -> Tuple[State, AdamsStats]:
    """Solve dy/du = f(u, y) from u0 to u1 > u0 with the adaptive Adams PEC method above.

    Args:
        f: ``f(u, y) -> dy/du`` with u a Python float and y a tuple of tensors.
        y0: the initial state (a tuple of tensors; each gets its own RMS error).
        u0, u1: the interval, u0 < u1.
        rtol, atol: tolerances of the local error estimate (see the module docstring).
        order: the largest predictor order k (the corrector's is k + 1); 4 measured best on the
            likelihood ODE of ``scoresde.likelihood`` (fewest evaluations at a given error).
        first_step, max_step: the first step at rtol = 1, as a share of the interval (it scales with
            rtol^(1/4)), and the longest step, as a share of the interval.
        reject_shrink: a rejected step is retried at most this share of its length (1: as the
            controller says).
        implicit: the linearly implicit corrector (module docstring): ``f`` then returns
            ``(dy/du, J)`` with J ``[N, n, n]`` the Jacobian blocks of the first state tensor's
            derivative, that tensor read as N independent rows of n numbers, or J ``[N, 1]``: an
            approximation of each block by J[b] times the identity (a W-method: any J keeps the
            order, a good one the stability; see ``scoresde.likelihood``'s Rayleigh quotient).

    Returns:
        ``(y(u1), AdamsStats)``.
    """
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 8:
        raise ValueError(f"order must be an integer in [1, 8], got {order!r}")
    if not u1 > u0:
        raise ValueError(f"adams_pec integrates forward: need u1 > u0, got {u0} .. {u1}")
    for name, v in (("first_step", first_step), ("max_step", max_step), ("reject_shrink", reject_shrink)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v <= 1.0):
            raise ValueError(f"{name} must be a share in (0, 1], got {v!r}")
    call = _with_jacobian(f, y0[0]) if implicit else (lambda u, y: (f(u, y), None))
    span = u1 - u0
    shapes = [t.shape for t in y0]
    dtypes = [t.dtype for t in y0]
    dtype = functools.reduce(torch.promote_types, dtypes)
    device = y0[0].device
    # the state's tensors live in one flat vector, tensor i at [ends[i], ends[i + 1]), so that each
    # step's vector work is one operation for all of them, not one per tensor
    ends = [0]
    for t in y0:
        ends.append(ends[-1] + t.numel())
    n0 = ends[1]

    def as_state(v: Tensor) -> State:
        return tuple(v[a:b].view(sh).to(dt) for a, b, sh, dt in zip(ends, ends[1:], shapes, dtypes))

    def store(row: Tensor, derivs: State) -> None:
        for a, b, F in zip(ends, ends[1:], derivs):
            row[a:b].copy_(F.reshape(-1))

    y = torch.cat([t.reshape(-1).to(dtype) for t in y0])
    u = float(u0)
    # the derivatives F_j live in one [order + 1, numel] buffer, one row (slot) each, so that
    # sum_j w_j F_j is one matrix-vector product instead of k axpys; ``slots`` holds the rows of
    # the history, oldest first, and the one row outside it takes the new F
    nslot = order + 1
    H = torch.zeros((nslot, y.numel()), dtype=dtype, device=device)
    store(H[0], call(u, tuple(y0))[0])
    slots: List[int] = [0]
    hist_u: List[float] = [u]
    y_abs = y.abs()
    nfe, acc, rej = 1, 0, 0
    # first step: an Euler step's error ~ h^2 |f'| / 2 is unknown yet; start small (measured: a
    # first step 10x below span * 0.02 rtol^(1/4) lowers the NFE at equal error by ~5%, because the
    # start's low-order steps put their error into derivatives the later steps reuse) and let the
    # controller grow h by up to 5x per step
    h = span * first_step * rtol ** 0.25
    while u1 - u > 1e-13 * span:
        if acc + rej > _MAX_STEPS:
            raise RuntimeError(f"adams_pec: more than {_MAX_STEPS} steps (rtol={rtol}, atol={atol})")
        h = min(h, max_step * span, u1 - u)
        if h <= 1e-14 * span:
            raise RuntimeError(f"adams_pec: step size underflow at u={u} (rtol={rtol}, atol={atol})")
        un = u1 if u1 - (u + h) <= 1e-13 * span else u + h
        bw, cw = _step_weights(hist_u, u, un)
        new = next(i for i in range(nslot) if i not in slots)
        wp = [0.0] * nslot
        wd = [0.0] * nslot          # corrector minus predictor: y^C - y^P = sum_j wd_j F_j
        for sl, b, c in zip(slots, bw, cw):
            wp[sl], wd[sl] = b, c - b
        wd[new] = cw[-1]
        W = torch.tensor([wp, wd], dtype=dtype, device=device)
        yp = torch.addmv(y, H.t(), W[0])
        fp, jac = call(un, as_state(yp))
        nfe += 1
        store(H[new], fp)
        d = torch.mv(H.t(), W[1])
        if jac is not None:
            # y^C = y^P + (I - c J)^{-1} d on the first tensor, and the history keeps f(y^C) to
            # first order
            N = jac.shape[0]
            d0, h0 = d[:n0].view(N, -1), H[new, :n0].view(N, -1)
            if jac.dim() == 2:
                # scalar blocks j I: a division.  j is capped at 1 / (2 c), so that a growing
                # mode (j > 0) never amplifies the correction more than 2x
                j = (jac.clamp_max(0.5 / cw[-1]) if cw[-1] > 0 else jac).to(dtype)
                d0.div_(1.0 - cw[-1] * j)
                h0.add_(j * d0)
            else:
                jac = jac.to(dtype)
                eye = torch.eye(jac.shape[-1], dtype=dtype, device=device)
                d0.copy_(torch.linalg.solve(eye - cw[-1] * jac, d0.unsqueeze(-1)).squeeze(-1))
                h0.add_(torch.bmm(jac, d0.unsqueeze(-1)).squeeze(-1))
        yc = yp + d
        yc_abs = yc.abs()
        scale = torch.maximum(y_abs, yc_abs).mul_(rtol).add_(atol)
        q = d.div_(scale)
        # torchdiffeq's mixed norm: the largest RMS over the state's tensors
        err = max(float(torch.linalg.vector_norm(q[a:b])) / math.sqrt(b - a) for a, b in zip(ends, ends[1:]))
        p, h_used = len(hist_u), un - u
        if err <= 1.0:
            y, y_abs, u = yc, yc_abs, un
            hist_u.append(un)
            slots.append(new)
            if len(slots) > order:
                hist_u.pop(0)
                slots.pop(0)
            acc += 1
        else:
            rej += 1
        factor = 5.0 if err == 0.0 else 0.9 * err ** (-1.0 / (p + 1))
        if err > 1.0:
            factor = min(factor, reject_shrink)
        h = h_used * min(5.0, max(0.2, factor))
        if not math.isfinite(h):
            raise RuntimeError(f"adams_pec: non-finite error estimate at u={u}")
        rem = u1 - u
        if err <= 1.0 and h < rem < 2.0 * h:
            # no sliver of a last step (it costs an evaluation for ~nothing): stretch the next step
            # to the end when that is at most 20% longer, else split the rest in two
            h = rem if rem <= _END_STRETCH * h else 0.5 * rem
    stats = AdamsStats(nfe=nfe, accepted=acc, rejected=rej, order=order)
    return as_state(y), stats
