r"""Log-likelihoods through the probability-flow ODE (bits/dim for discrete data: :mod:`.bits`).

The probability-flow ODE of a linear SDE (Song et al., ICLR 2021, eq. 13),

    dx/dt = v(x, t) = f(t) x - 1/2 g(t)^2 s(x, t),        s = grad_x log p_t,

carries p_eps to p_T, and along one of its paths the instantaneous change of variables
(Chen et al. 2018, "Neural ODEs", Thm. 1) gives d log p_t(x_t)/dt = -div v(x_t, t).  Hence

    log p_eps(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt,
    div v = D f(t) - 1/2 g(t)^2 tr(grad_x s(x, t)).                                      (1)

``log_likelihood`` integrates the augmented state [x, Delta] with torchdiffeq on the data's device,
replaces log p_T by the prior ``sde.prior_logp`` and reports log p_eps(x) in nats.  With the exact
score of p_t the only errors are the solver's and the prior's: p_T is not exactly N(0, prior_std^2),
and for VE with sigma_max = 50 that mismatch alone is about 1.4e-3 nats/dim on the 2-d ring and
1.8e-3 on the 16-d mixture (5e-4 and less for VP).  ``prior_logp=`` takes the exact p_T where it is
known, to measure or remove it.

**The time variable.**  ``time_variable="t"`` integrates (1) as written, as Song et al. do.  The
default ``"vp"`` integrates the same ODE after an exact change of variables that puts every linear
SDE in one form.  Write rho = sigma(t) / alpha(t) = exp(-lambda(t)) (lambda = log-SNR).  Since
p_t(x | x0) = N(alpha x0, sigma^2 I), the scaled state y = x / alpha has y | x0 ~ N(x0, rho^2 I)
(the "VE form", Song et al. 2021 App. B; Karras et al. 2022 eq. 4).  With f = (log alpha)' and
g^2 = (sigma^2)' - 2 f sigma^2 = 2 sigma^2 (log rho)':

    dy/dt   = (dx/dt - f x) / alpha = -1/2 g^2 s / alpha,
    dy/drho = (dy/dt) / rho'(t) = -rho alpha s(alpha y, t(rho)),                               (2)
    div_y(dy/drho) = -rho alpha^2 tr(grad_x s).

The PF-ODE of any linear SDE is therefore (2), the SDE entering only through the range of rho
(Kingma et al. 2021, "Variational Diffusion Models", sec. 5.1: the likelihood depends on the noise
schedule only through its end points).  We integrate the bounded state w = x / a(t) with
a = sqrt(alpha^2 + sigma^2) = alpha sqrt(1 + rho^2) (x itself for VP; y / sqrt(1 + rho^2) for VE,
which stays O(1) where y grows like rho), against u = tau(rho), the time of the default VP SDE
(b0 = 0.1, b1 = 20; the VP clock of ``scoresde.flow``, where this change of variables and its
names live) at the same log-SNR, 1 + rho^2 = exp(b0 tau + (b1 - b0) tau^2 / 2).  With
r = rho drho/du = beta(tau) (1 + rho^2) / 2, from (2):

    dw/du = -r / (1 + rho^2) w - alpha r / sqrt(1 + rho^2) s(a w, t),
    div_w = -D r / (1 + rho^2) - alpha^2 r tr(grad_x s),
    log p_eps(x) = log p_T(x_T) + D log(a(T) / a(eps)) + int_{u(eps)}^{u(T)} div_w du,       (3)

since log p_t(x) = log p_w(w) - D log a(t).  Nothing is approximated: (3) is (1) after the
substitution t -> u(t), a bijection because the log-SNR decreases strictly, and the end-point term
is closed form.  For the VP SDE it *is* (1); a sub-VP or VE SDE is integrated on the VP SDE's
clock, where its path is as smooth as VP's.  Measured (``benchmarks/likelihood.py``): dopri5 at
rtol = atol = 1e-5 takes 92-98 score evaluations on every SDE and mixture, against 122-158 for
sub-VP and VE in their own t, at the same error.  Minus the log-SNR (``"log_sigma"``,
u = log rho) and EDM's sigma (``"sigma"``, u = rho) are offered too, with the same state; both
cost more steps (120-230) in our tests.

The state's log-det is carried per dimension (ell = Delta / D), so rtol and atol bound nats/dim
whatever D is.  The solver receives t(u) through ``sde.t_from_log_snr``; a trial point outside
[eps, T] (an adaptive solver's first-step probe can overshoot) is clamped to the interval, so the
SDE is never evaluated outside it.

**Divergence.**  ``divergence="exact"`` takes the trace of the D x D Jacobian from one forward
pass and one batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)`` over the
D basis vectors): the Jacobian rows of all samples come out together because the samples are
independent, d/dx_b sum_b' e_i . s(x_b') = e_i^T grad s(x_b).  (This presumes the score of one
sample does not depend on the others, true of any network in eval mode.)  For large D,
``divergence="hutchinson"`` uses the Hutchinson-Skilling estimator tr A = E[e^T A e] with
Rademacher or Gaussian probes e drawn once per solve from ``generator``.  Fixing the probes makes
the ODE deterministic and keeps the estimate unbiased: e^T (int A dt) e has mean int tr A dt.
With ``probes = P > 1`` each probe integrates its own log-det; ``logp`` is their mean and
``stderr`` their standard deviation over sqrt(P).

Reference: score_sde_pytorch's ``likelihood.py`` calls scipy's RK45 on a NumPy copy of the state,
evaluates the score twice per step (once for the drift, once inside the divergence) and converts
to bits/dim with an unexplained "offset"; here the score runs once per step, the state never
leaves the device, and the offset is the explicit log-determinant of ``bits_per_dim``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torchdiffeq import odeint

from .. import flow
from ..device import sde_of
from ..score import CountingScore, check_max_rows, check_nonfinite_mode, finish_nonfinite, reraise_nonfinite
from ..sde import SDE, ScoreFn, check_prior, time_dtype
from .adams import adams_pec
from .divergence import _basis_chunks, _exact_jacobian, _exact_trace, _quadratic_forms, _vjps

Tensor = torch.Tensor

__all__ = [
    "log_likelihood",
    "LikelihoodResult",
    "DIVERGENCES",
    "AUTO_EXACT_MAX_DIM",
    "resolve_divergence",
    "NOISES",
    "TIME_VARIABLES",
]

DIVERGENCES = ("exact", "hutchinson")
AUTO = "auto"
# divergence="auto": the exact trace up to this dimension, Hutchinson above.  The exact trace costs
# D backward passes an evaluation: at D = 192 (a tiny U-Net on 3x8x8) 11.0 s against 0.53 s with
# one Hutchinson probe (issue 29), at CIFAR's D = 3072 sixteen times more; up to D = 64 (the
# mixtures, the 8x8 digits) it is cheap and removes the estimator's variance.
AUTO_EXACT_MAX_DIM = 64
NOISES = ("rademacher", "gaussian")
TIME_VARIABLES = flow.TIME_VARIABLES  # ("t", "sigma", "log_sigma", "vp")

# the hand-written adaptive Adams PEC method (scoresde.likelihood.adams), beside torchdiffeq's methods
ADAMS = "adams"


@dataclass
class LikelihoodResult:
    """What ``log_likelihood`` returns.

    Attributes:
        logp: log p_eps(x) in nats, ``[B]`` (the mean over probes for Hutchinson).
        z: the latent x_T, shape of x.
        nfe: number of score_fn evaluations (over all batch chunks).
        seconds: wall time of the whole computation.
        stderr: ``[B]`` standard error of the Hutchinson estimate over its probes
            (``probes > 1`` only, else None).
        prior_logp: the prior term log p_T(z), ``[B]``; ``logp - prior_logp`` is the ODE's part.
        divergence: the divergence that ran (``"exact"`` or ``"hutchinson"``; what
            ``divergence="auto"`` chose).
        nonfinite: points whose log p is NaN/Inf (0 unless ``nonfinite="count"``).
    """

    logp: Tensor
    z: Tensor
    nfe: int
    seconds: float
    stderr: Optional[Tensor] = None
    prior_logp: Optional[Tensor] = None
    divergence: str = ""
    nonfinite: int = 0

    @property
    def delta_logp(self) -> Tensor:
        """log p_eps(x) - log p_T(z): the change of log-density along the ODE path."""
        return self.logp - self.prior_logp


# -- time variables ---------------------------------------------------------------------------
class _TimeVariable:
    """The integration variable u(t), increasing in t, and the ODE written in it.

    The state is x / a(t); with its u-derivative written as ``lin * state + cs * s(x, t)``, its
    divergence is ``D lin + cs a tr(grad_x s)`` and log p_x = log p_state - D log a.
    """

    def __init__(self, sde: SDE, eps: float, dtype: torch.dtype, device):
        self.sde = sde
        self.dtype, self.device = dtype, device
        self.t_lo = torch.tensor(eps, dtype=dtype, device=device)
        self.t_hi = torch.tensor(sde.T, dtype=dtype, device=device)
        self.u_lo = self.u_of_t(self.t_lo)
        self.u_hi = self.u_of_t(self.t_hi)

    def u_of_t(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def scale(self, t: Tensor) -> Tensor:
        """a(t), the factor between x and the state."""
        raise NotImplementedError

    def coefs(self, u: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(t, a, lin, cs)`` at u, with u clamped to [u(eps), u(T)]."""
        raise NotImplementedError

    def scalar_coefs(self, u: float) -> Tuple[float, float, float, float]:
        """:meth:`coefs` at one Python float, as Python floats (the hand-written solvers' path:
        a tensor op on a 0-d tensor costs microseconds, a dozen of them per evaluation add up to a
        tenth of the score's own cost at a batch of 1,000).  This generic form goes through
        :meth:`coefs`; the noise-level variables override it in closed form."""
        return tuple(float(v) for v in self.coefs(torch.tensor(float(u), dtype=self.dtype, device=self.device)))


class _TimeT(_TimeVariable):
    """Song et al.'s form: state x, u = t, dx/dt = f x - 1/2 g^2 s."""

    def u_of_t(self, t):
        return t

    def scale(self, t):
        return torch.ones_like(t)

    def coefs(self, u):
        t = u.clamp(self.t_lo, self.t_hi).reshape(1)
        f = self.sde.drift_coef(t)[0]
        g = self.sde.diffusion(t)[0]
        return t[0], torch.ones_like(f), f, -0.5 * g ** 2


class _NoiseLevelTime(_TimeVariable):
    """The VP form of any linear SDE against a time variable u of rho = sigma / alpha
    (:class:`scoresde.flow.TimeVariable`: ``"vp"``, ``"log_sigma"`` or ``"sigma"``).

    State w = x / a with a = alpha sqrt(1 + rho^2) = sqrt(alpha^2 + sigma^2).  From (2),
    dw/drho = -rho/(1 + rho^2) w - rho alpha / sqrt(1 + rho^2) s, so with r = rho drho/du
    (``flow.TimeVariable.sigma_dsigma_du``, finite as rho -> 0):
    lin = -r / (1 + rho^2),  cs = -alpha r / sqrt(1 + rho^2),  cs a = -alpha^2 r.
    """

    name = ""

    def __init__(self, sde: SDE, eps: float, dtype: torch.dtype, device):
        self.flow = flow.TimeVariable(sde, self.name)
        super().__init__(sde, eps, dtype, device)
        self._u_lo, self._u_hi = float(self.u_lo), float(self.u_hi)
        self._t_lo, self._t_hi = float(self.t_lo), float(self.t_hi)

    def u_of_t(self, t):
        return self.flow.u_of_t(t.reshape(1))[0]

    def scale(self, t):
        t = t.reshape(1)
        return torch.sqrt(self.sde.mean_coef(t) ** 2 + self.sde.std(t) ** 2)[0]

    def coefs(self, u):
        u = u.clamp(self.u_lo, self.u_hi)
        rho = self.flow.sigma_of_u(u)
        t = flow.t_of_sigma(self.sde, rho.reshape(1))[0].clamp(self.t_lo, self.t_hi)
        alpha = self.sde.mean_coef(t.reshape(1))[0]
        c = torch.sqrt(1.0 + rho ** 2)
        r = self.flow.sigma_dsigma_du(u, rho)
        return t, alpha * c, -r / c ** 2, -alpha * r / c

    def scalar_coefs(self, u):
        # the same formulas as coefs() in float64 math, rho^2 and r from scoresde.flow's closed forms
        u = min(max(float(u), self._u_lo), self._u_hi)
        rho2, r = self.flow.scalar_sigma2_rate(u)
        t = min(max(self.sde.scalar_t_from_log_snr(-0.5 * math.log(rho2)), self._t_lo), self._t_hi)
        alpha = self.sde.scalars(t).alpha
        c = math.sqrt(1.0 + rho2)
        return t, alpha * c, -r / (c * c), -alpha * r / c


class _TimeVP(_NoiseLevelTime):
    """u = tau, the VP clock of :mod:`scoresde.flow` (the default VP SDE's time at the same rho):
    1 + rho^2 = exp(b0 tau + (b1 - b0) tau^2 / 2), so rho drho/dtau = beta(tau) (1 + rho^2) / 2."""

    name = "vp"


class _TimeLogSigma(_NoiseLevelTime):
    """u = log rho = -lambda: rho drho/du = rho^2."""

    name = "log_sigma"


class _TimeSigma(_NoiseLevelTime):
    """u = rho = sigma / alpha (EDM's sigma): rho drho/du = rho."""

    name = "sigma"


_TIME_VARIABLE_CLASSES = {"vp": _TimeVP, "t": _TimeT, "log_sigma": _TimeLogSigma, "sigma": _TimeSigma}
assert set(_TIME_VARIABLE_CLASSES) == set(flow.TIME_VARIABLES)


# -- the augmented ODE --------------------------------------------------------------------------
class _AugmentedODE:
    """Right-hand side of d[state, ell]/du for torchdiffeq; ell = Delta / D is ``[P, B]``."""

    def __init__(self, score: CountingScore, tv: _TimeVariable, probes: Optional[Tensor]):
        self.score, self.tv, self.probes = score, tv, probes
        self.batched = [True]
        self._probe_sq: Optional[Tensor] = None

    def divergence_terms(self, s: Tensor, x: Tensor) -> Tensor:
        """``[P, B]``: tr(grad s) (P = 1) or e_p^T (grad s) e_p for each probe."""
        if self.probes is not None:
            return _quadratic_forms(s, x, self.probes, self.batched)
        return _exact_trace(s, x, self.batched)[None]

    def __call__(self, u: Tensor, state: Tuple[Tensor, Tensor]):
        y = state[0]
        t, a, lin, cs = self.tv.coefs(u.to(self.tv.dtype))
        dtype = y.dtype
        a, lin, cs = a.to(dtype), lin.to(dtype), cs.to(dtype)
        with torch.enable_grad():
            x = (a * y).detach().requires_grad_(True)
            s = self.score(x, t.to(dtype).expand(y.shape[0]))
            quad = self.divergence_terms(s, x)
        D = y[0].numel()
        dy = lin * y + cs * s.detach()
        # the log-det is carried per dimension so that rtol/atol mean nats/dim in any D
        dell = lin + (cs * a / D) * quad.detach()
        return dy, dell

    def at_float(self, u: float, state: Tuple[Tensor, Tensor]):
        """:meth:`__call__` at a Python-float u (the hand-written solvers): the coefficients as
        floats, so the only tensor work is the score, its vector-Jacobian products and two axpys."""
        return self._at_float(u, state[0])[:2]

    def _score_graph(self, u: float, y: Tensor):
        """``(x, s, coefs)``: the score at x = a(u) y with its autograd graph, for the backward
        passes that follow, and ``(t, a, lin, cs)`` as floats."""
        t, a, lin, cs = coefs = self.tv.scalar_coefs(u)
        with torch.enable_grad():
            x = (y * a).requires_grad_(True)
            s = self.score(x, torch.full((y.shape[0],), t, dtype=y.dtype, device=y.device))
        return x, s, coefs

    def _at_float(self, u: float, y: Tensor):
        """``(dy, dell, quad, coefs)``: :meth:`at_float`'s derivatives, the quadratic forms ``[P, B]``
        and ``(t, a, lin, cs)``."""
        x, s, coefs = self._score_graph(u, y)
        t, a, lin, cs = coefs
        quad = self.divergence_terms(s, x)
        s, quad = s.detach(), quad.detach()
        dy = torch.add(s * cs, y, alpha=lin)
        dell = (quad * (cs * a / y[0].numel())).add_(lin)
        return dy, dell, quad, coefs

    def with_rayleigh(self, u: float, state: Tuple[Tensor, Tensor]):
        r""":meth:`at_float` and, for the Adams solver's implicit corrector, the Jacobian of dy/du
        approximated per sample by j I (``[B, 1]``): j = lin + cs a mu, with mu = mean_p
        e_p^T (grad s) e_p / |e_p|^2 the probes' Rayleigh quotient, the mean eigenvalue of grad s as
        the probes see it, read off the quadratic forms the Hutchinson estimate computes anyway
        (tr(grad s) / D with the exact trace)."""
        y = state[0]
        dy, dell, quad, (t, a, lin, cs) = self._at_float(u, y)
        if self.probes is None:
            mu = quad[0] / y[0].numel()
        else:
            if self._probe_sq is None:  # |e_p|^2, the same every step: computed once a solve
                self._probe_sq = self.probes.reshape(quad.shape + (-1,)).pow(2).sum(-1)
            mu = (quad / self._probe_sq).mean(0)
        return (dy, dell), (mu * (cs * a) + lin)[:, None]

    def score_jacobian(self, u: float, y: Tensor):
        """The score at x = a(u) y, its Jacobian ``[B, D, D]`` (:func:`_exact_jacobian`) and the
        coefficients ``(t, a, lin, cs)``: one forward and D backward passes."""
        x, s, coefs = self._score_graph(u, y)
        return s.detach(), _exact_jacobian(s, x, self.batched), coefs

    def from_jacobian(self, y: Tensor, s: Tensor, J: Tensor, coefs, jacobian: bool = True):
        """:meth:`at_float`'s ``(dy, dell)`` from a :meth:`score_jacobian` (the quadratic forms read
        off J), and with ``jacobian`` the Jacobian of dy/du in y = lin I + cs a grad_x s (x = a y)."""
        t, a, lin, cs = coefs
        D = y[0].numel()
        if self.probes is None:
            quad = torch.diagonal(J, dim1=1, dim2=2).sum(-1)[None]
        else:
            e = self.probes.reshape(self.probes.shape[0], y.shape[0], D)
            quad = torch.einsum("pbi,bij,pbj->pb", e, J, e)
        dy = torch.add(s * cs, y, alpha=lin)
        dell = (quad * (cs * a / D)).add_(lin)
        if not jacobian:
            return dy, dell
        jac = J * (cs * a)
        jac.diagonal(dim1=1, dim2=2).add_(lin)
        return (dy, dell), jac

    def with_jacobian(self, u: float, state: Tuple[Tensor, Tensor]):
        """:meth:`at_float` and the Jacobian of dy/du in y, ``[B, D, D]``, for the Adams solver's
        implicit corrector; exact divergence only, whose trace is this Jacobian's: one set of
        backward passes gives both."""
        y = state[0]
        return self.from_jacobian(y, *self.score_jacobian(u, y))


class _GaussianFrame:
    r"""Local-Gaussian coordinates for the Adams solver (``options={"frame": "gaussian"}``).

    Near the data the score of p_t at a point is that of a Gaussian to first order: with the
    Jacobian of the score at t = eps, grad_x s = U diag(lam) U^T (symmetrised; U orthonormal),
    p_eps is locally N(alpha mu, alpha^2 U diag(c + rho^2) U^T) with c_i = -1 / (alpha^2 lam_i) - rho^2
    (directions with lam_i >= 0 have no Gaussian part: c_i = inf below) and, by Tweedie, mu =
    y + U diag(c + rho^2) U^T alpha s in the VE form y = x / alpha.  Under the probability flow of
    that Gaussian, y - mu = U diag(sqrt(c + rho^2)) z with z constant, and the log-det rate is
    sum_i r / (c_i + rho^2) with r = rho drho/du.  So we integrate, per sample,

        z = S^{-1} U^T (q w - mu),    S = diag(sqrt(c + rho^2)),   q = sqrt(1 + rho^2) (y = q w),
        dz/du = S^{-1} U^T dy/du - k z,    k_i = r / (c_i + rho^2),    dy/du = q dw/du + (r / q) w,
        d ell~/du = d ell/du - sum_i omega_i k_i / D,    ell = ell~ + sum_i omega_i [log(c_i + rho^2) / 2] / D,

    omega_i = 1 for the exact trace and (U^T e)_i^2 for a Hutchinson probe e (its quadratic form
    e^T (grad s) e has the Gaussian part r sum_i omega_i / (c_i + rho^2) after the scaling).
    This is a change of coordinates and a control variate with a closed-form integral, nothing
    approximated: the solution is the same, but z and ell~ stay constant until the modes of the data
    start to interact, so the steps the knee at rho^2 ~ c costs in w are not taken.  For the
    implicit corrector, dz/du has the Jacobian diag(1/S) U^T (J_w + (r / q^2) I) U diag(S) - diag(k).

    It needs the full Jacobian once, at eps (D backward passes; the solver's first evaluation reuses
    it), so it is for small D (``_IMPLICIT_MAX_DIM``).
    """

    def __init__(self, tv: "_NoiseLevelTime", aug: "_AugmentedODE", w0: Tensor):
        self.tv, self.aug = tv, aug
        self.u0 = float(tv.u_lo)
        B, D = w0.shape[0], w0[0].numel()
        self.shape, self.D = w0.shape, D
        s_raw, J, coefs = aug.score_jacobian(self.u0, w0)
        t, a = coefs[0], coefs[1]
        s = s_raw.reshape(B, D)
        alpha = tv.sde.scalars(t).alpha
        rho2_0, _ = tv.flow.scalar_sigma2_rate(self.u0)
        lam, U = torch.linalg.eigh(0.5 * (J + J.transpose(1, 2)))
        self.gauss = lam < 0
        c = -1.0 / (alpha * alpha * torch.where(self.gauss, lam, -torch.ones_like(lam))) - rho2_0
        self.c = torch.where(self.gauss, c.clamp_min(0.0), torch.zeros_like(c))
        self.U, self.Ut = U.contiguous(), U.transpose(1, 2).contiguous()
        y0 = w0.reshape(B, D) * a / alpha
        shift = torch.where(self.gauss, (self.c + rho2_0) * self._ut(alpha * s), torch.zeros_like(s))
        self.mu = y0 + self._u(shift)
        if aug.probes is None:
            self.omega = self.gauss.to(w0.dtype)[None]                          # [1, B, D]
        else:
            e = aug.probes.reshape(aug.probes.shape[0], B, D)
            self.omega = torch.matmul(e.unsqueeze(-2), U).squeeze(-2).pow(2) * self.gauss  # [P, B, D]: (U^T e)^2
        # the solver's first evaluation is at w0: the score and Jacobian just computed serve it
        self._first = (s_raw, J, coefs)

    def _u(self, v: Tensor) -> Tensor:
        return torch.bmm(self.U, v.unsqueeze(-1)).squeeze(-1)

    def _ut(self, v: Tensor) -> Tensor:
        return torch.bmm(self.Ut, v.unsqueeze(-1)).squeeze(-1)

    def _scales(self, u: float):
        rho2, r = self.tv.flow.scalar_sigma2_rate(min(max(u, self.tv._u_lo), self.tv._u_hi))
        S = torch.where(self.gauss, torch.sqrt(self.c + rho2), torch.ones_like(self.c))
        k = torch.where(self.gauss, r / (self.c + rho2), torch.zeros_like(self.c))
        return S, k, rho2, r

    def w_of_z(self, u: float, z: Tensor) -> Tensor:
        S, _, rho2, _ = self._scales(u)
        return self._w(z, S, math.sqrt(1.0 + rho2))

    def _w(self, z: Tensor, S: Tensor, q: float) -> Tensor:
        return ((self.mu + self._u(S * z)) / q).reshape(self.shape)

    def z_of_w(self, u: float, w: Tensor) -> Tensor:
        S, _, rho2, _ = self._scales(u)
        return self._ut(w.reshape(w.shape[0], -1) * math.sqrt(1.0 + rho2) - self.mu) / S

    def log_det_cv(self, u_a: float, u_b: float) -> Tensor:
        """int_{u_a}^{u_b} of the control variate, per dimension: ``[P, B]``."""
        c = torch.where(self.gauss, self.c, torch.ones_like(self.c))
        ra, rb = (self.tv.flow.scalar_sigma2_rate(v)[0] for v in (u_a, u_b))
        return (self.omega * (0.5 * (torch.log(c + rb) - torch.log(c + ra)))).sum(-1) / self.D

    def __call__(self, u: float, state: Tuple[Tensor, Tensor], jacobian: bool = False):
        z, _ = state
        S, k, rho2, r = self._scales(u)
        q = math.sqrt(1.0 + rho2)
        w = self._w(z, S, q)
        if self._first is not None and u == self.u0:
            out = self.aug.from_jacobian(w, *self._first, jacobian=jacobian)
            self._first = None
        elif jacobian:
            out = self.aug.with_jacobian(u, (w, None))
        else:
            out = self.aug.at_float(u, (w, None))
        (dw, dell), Jw = out if jacobian else (out, None)
        wf, dwf = w.reshape(w.shape[0], -1), dw.reshape(w.shape[0], -1)
        dz = self._ut(dwf * q + wf * (r / q)) / S - k * z
        dell = dell - (self.omega * k).sum(-1) / self.D
        if not jacobian:
            return dz, dell
        Jw = Jw + (r / (q * q)) * torch.eye(self.D, dtype=Jw.dtype, device=Jw.device)
        Jz = (self.Ut @ Jw @ self.U) * (S[:, None, :] / S[:, :, None])
        Jz.diagonal(dim1=1, dim2=2).sub_(k)
        return (dz, dell), Jz


# -- validation -------------------------------------------------------------------------------
def _check_name(value: str, valid: Sequence[str], what: str) -> str:
    key = str(value).lower()
    if key not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid names: {list(valid)}")
    return key


def check_data(sde: SDE, x: Tensor) -> None:
    """The checks every density estimate makes of its inputs: a scoresde SDE and finite
    floating-point data of shape ``[B, ...]`` (ValueError naming what is wrong)."""
    if not isinstance(sde, SDE):
        raise ValueError(f"sde must be a scoresde SDE, got {type(sde).__name__}")
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor of shape [B, ...]")
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x must have shape [B, ...] with B >= 1 and a non-empty data shape, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x has non-finite entries")


def resolve_divergence(divergence: str, D: int) -> str:
    """``"exact"`` or ``"hutchinson"``; ``"auto"`` is the exact trace for D <=
    :data:`AUTO_EXACT_MAX_DIM`, Hutchinson above."""
    key = _check_name(divergence, DIVERGENCES + (AUTO,), "divergence")
    if key != AUTO:
        return key
    return "exact" if D <= AUTO_EXACT_MAX_DIM else "hutchinson"


def _check_inputs(sde: SDE, x: Tensor, divergence, probes, noise, rtol, atol, method, eps, batch_size,
                  time_variable):
    import importlib

    check_data(sde, x)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    divergence = resolve_divergence(divergence, x[0].numel() if x.dim() > 0 and x.shape[0] > 0 else 0)
    noise = _check_name(noise, NOISES, "noise")
    time_variable = _check_name(time_variable, TIME_VARIABLES, "time_variable")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    if divergence == "exact" and probes != 1:
        raise ValueError(f"probes={probes} applies to divergence='hutchinson' only; the exact trace has no probes")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"{name} must be a positive number, got {tol!r}")
    if not (isinstance(eps, (int, float)) and 0 < eps < sde.T):
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    solvers = importlib.import_module("torchdiffeq._impl.odeint").SOLVERS
    if method not in solvers and method != ADAMS:
        raise ValueError(f"unknown method {method!r}; valid: {ADAMS!r} or a torchdiffeq method {sorted(solvers)}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return divergence, noise, time_variable


# the Adams solver's implicit corrector by default up to this D (exact divergence): its Jacobian
# [B, D, D] and one batched D x D solve a step stay cheap next to the D backward passes
_IMPLICIT_MAX_DIM = 64
RAYLEIGH = "rayleigh"


def _adams_implicit(value, divergence: str, D: int, frame: bool):
    """``options["implicit"]`` for ``method="adams"``: returns True (the exact Jacobian), ``"rayleigh"``
    (:meth:`_AugmentedODE.with_rayleigh`) or False.  ``"auto"`` (the default) is True with the exact
    divergence for D <= ``_IMPLICIT_MAX_DIM`` and ``"rayleigh"`` with Hutchinson probes outside the
    Gaussian frame; True needs the exact divergence, ``"rayleigh"`` no frame."""
    if isinstance(value, str) and value == "auto":
        if divergence == "exact":
            return D <= _IMPLICIT_MAX_DIM
        return False if frame else RAYLEIGH
    if not (isinstance(value, bool) or (isinstance(value, str) and value == RAYLEIGH)):
        raise ValueError(f"options['implicit'] must be True, False, 'rayleigh' or 'auto', got {value!r}")
    if value is True and divergence != "exact":
        raise ValueError("options['implicit']=True needs divergence='exact' (the corrector uses the Jacobian "
                         "that the exact trace computes; Hutchinson probes do not give it: use 'rayleigh')")
    if value == RAYLEIGH and frame:
        raise ValueError("options['implicit']='rayleigh' works in w, not in the Gaussian frame: "
                         "pass frame='none'")
    return value


# the Adams solver's step rules in the Gaussian frame.  There the solution is constant until the
# modes interact, so the first step (a share of the interval) can be 5x bolder than in w; and the
# controller, growing h 5x a step over that flat stretch, would leap into the region where they do
# and be rejected two to four times, so no step is longer than 1/16 of the interval and a rejected
# step is retried at most half as long.  Measured (ring8 and aniso16 VP, 1,000 points, exact trace,
# rtol 1.5e-3 .. 4e-3): 2-5 fewer evaluations at equal or smaller error than the defaults
# (0.002, 1/8, no shrink), which stay the w path's (there the shrink measured 0-4% worse).  The
# price: a framed solve takes at least 17 evaluations (a nearly Gaussian score, a small random MLP
# on 4-d data, that the w path solves in 13 at rtol 1e-3 takes 20); pass max_step to change it.
_FRAME_STEPS = {"first_step": 0.01, "max_step": 1 / 16, "reject_shrink": 0.5}


def _adams_frame(value, time_variable: str, divergence: str, D: int) -> bool:
    """``options["frame"]`` for ``method="adams"``: ``"gaussian"`` (:class:`_GaussianFrame`),
    ``"none"``, or ``"auto"`` (the default): gaussian with the exact divergence for D <=
    ``_IMPLICIT_MAX_DIM`` in a noise-level time variable (``"vp"``, ``"log_sigma"``, ``"sigma"``),
    whose rho the frame is written in.  With Hutchinson probes the frame's one full Jacobian costs D
    backward passes, which its 5-20% fewer steps do not repay in wall time (measured, 1,000
    points, rtol 2e-4: 209 -> 270 ms on aniso16, 200 -> 203 ms on ring8), so it is asked for there."""
    if value not in ("auto", "gaussian", "none"):
        raise ValueError(f"options['frame'] must be 'gaussian', 'none' or 'auto', got {value!r}")
    if value == "gaussian" and time_variable == "t":
        raise ValueError("options['frame']='gaussian' needs a noise-level time variable ('vp', 'log_sigma' or "
                         "'sigma'), not 't'")
    if value == "auto":
        return divergence == "exact" and time_variable != "t" and D <= _IMPLICIT_MAX_DIM
    return value == "gaussian"


def _draw_probes(noise: str, shape, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    device = generator.device if generator is not None else x.device
    if noise == "gaussian":
        e = torch.randn(shape, generator=generator, dtype=x.dtype, device=device)
    else:
        e = torch.randint(0, 2, shape, generator=generator, device=device).to(x.dtype) * 2 - 1
    return e.to(x.device)


def _time_dtype(device) -> torch.dtype:
    # the time maps in float64 where the device has it
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


# -- public API -------------------------------------------------------------------------------
def log_likelihood(score_fn: ScoreFn, sde: Optional[SDE] = None, x: Optional[Tensor] = None, *,
                   divergence: str = "auto", probes: int = 1,
                   noise: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                   eps: float = 1e-5, generator: Optional[torch.Generator] = None,
                   time_variable: str = "vp", batch_size: Optional[int] = None,
                   prior_logp: Optional[Callable[[Tensor], Tensor]] = None, options: Optional[dict] = None,
                   progress: bool = False, prior: str = "sde", max_rows: Optional[int] = None,
                   nonfinite: str = "raise") -> LikelihoodResult:
    r"""log p_eps(x) in nats through the probability-flow ODE (see the module docstring).

        log p_eps(x) = log p_T(x_T) + int_eps^T [D f(t) - 1/2 g(t)^2 tr(grad_x s(x_t, t))] dt

    Args:
        score_fn: ``score_fn(x, t) -> grad_x log p_t(x)``, x ``[B, ...]``, t ``[B]``.
        sde: the forward SDE the score belongs to (default ``score_fn.sde``).
        x: data ``[B, ...]`` (any data shape), on the device to compute on.
        divergence: ``"auto"`` (default: ``"exact"`` for D <= :data:`AUTO_EXACT_MAX_DIM` = 64,
            ``"hutchinson"`` above; ``.divergence`` of the result says which ran), ``"exact"``
            (trace of the Jacobian, D backward passes an evaluation, batched; for small D) or
            ``"hutchinson"`` (unbiased trace estimate; for large D).
        probes: Hutchinson probes, drawn once per solve; their estimates are averaged and their
            spread gives ``stderr``.
        noise: Hutchinson probe distribution, ``"rademacher"`` (smaller variance) or ``"gaussian"``.
        rtol, atol: solver tolerances; torchdiffeq's error norm is the larger of the RMS errors
            (over the batch) of the state and of the log-det per dimension.
        method: a torchdiffeq method (``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"rk4"``, ...;
            fixed-step methods need ``options={"step_size": h}`` in the time variable's units), or
            ``"adams"``: :func:`scoresde.likelihood.adams.adams_pec`, a variable-step Adams-Bashforth-Moulton
            method in PEC mode (order 4 predictor, order 5 corrector, one score evaluation per
            step, Milne's error estimate in the same mixed norm; ``options={"order": k}``).  At
            rtol = atol = 1e-5 it takes about as many evaluations as dopri5 for a 20-50x smaller
            error; at equal error about half as many (``benchmarks/likelihood.py``).  With the exact
            divergence and D <= 64 two more things are on by default (``options`` keys, each
            ``True``/``False`` or ``"auto"``, ``"gaussian"``/``"none"`` or ``"auto"``):
            ``"implicit"``, the linearly implicit corrector, which uses the Jacobian the exact trace
            computes anyway (``scoresde.likelihood.adams``), and ``"frame"``, the local-Gaussian coordinates
            of :class:`_GaussianFrame`, in which the flow is constant until the data's modes
            interact.  Together, at rtol = atol = 2.5e-3 on the benchmark's mixtures (1,000
            points), 25-39 evaluations for 1.4e-4 .. 1.8e-4 nats/dim, where the explicit corrector
            without the frame takes 47-57 for 8e-5 .. 1.4e-4 at 1e-3.  With Hutchinson probes
            (no Jacobian at hand) ``"implicit"`` defaults to ``"rayleigh"``: the corrector with the
            Jacobian approximated per sample by a multiple of the identity, the probes' Rayleigh
            quotient (:meth:`_AugmentedODE.with_rayleigh`; free).  Measured on ring8 at rtol 2e-4 ..
            5e-4: 0.78-0.85x the explicit corrector's error at the same or fewer steps; on the 16-d
            mixture within +-10%.
        eps: the ODE starts at t = eps (Song et al. use 1e-5): the result is log p_eps, the
            density of the data blurred by the SDE up to eps.
        generator: draws the Hutchinson probes.
        time_variable: ``"vp"`` (default: the VP form x / sqrt(alpha^2 + sigma^2) on the VP
            SDE's clock), ``"t"`` (x against the SDE's own t, as Song et al.), ``"log_sigma"`` or
            ``"sigma"`` (the VP form against log rho = -lambda or rho; the names of
            ``scoresde.flow.TIME_VARIABLES``, shared with the ODE sampler).  All solve the same ODE exactly;
            they differ in step count (see the module docstring).
        batch_size: solve at most this many samples at once (memory); each chunk is its own solve.
        max_rows: the most rows one score call sees (default :data:`scoresde.score.MAX_ROWS`):
            the chunks are at most ``min(batch_size, max_rows)`` samples.  An adaptive solve's
            steps depend on its chunk (the error norm is over the chunk), so results move within
            the tolerance when the chunking changes.
        nonfinite: ``"raise"`` (default): a NaN/Inf in the state, the score or log p raises
            :class:`~scoresde.score.NonFiniteError` naming the evaluation and t; ``"count"``: the
            number of such points is ``.nonfinite``.
        prior_logp: ``log p_T`` in place of ``sde.prior_logp`` (for example the exact p_T of a
            mixture, to measure the solver alone).
        options: passed to ``torchdiffeq.odeint``; for ``method="adams"`` its keys above and
            ``order``, ``first_step``, ``max_step``, ``reject_shrink`` of :func:`scoresde.likelihood.adams.adams_pec`.
        progress: show a tqdm bar over the batch chunks.
        prior: ``"sde"`` (N(0, prior_std^2)) or ``"centred"``: N(m, prior_std^2) with m =
            :meth:`SDE.prior_mean <scoresde.sde.SDE.prior_mean>` (one more score evaluation a
            chunk), the density of the model that ``scoresde.sample(..., prior="centred")`` samples.

    Returns:
        ``LikelihoodResult(logp, z, nfe, seconds, stderr, prior_logp)``.
    """
    start = time.perf_counter()
    sde = sde_of(score_fn, sde, "log_likelihood")
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a tensor [B, ...], got {type(x).__name__}")
    nonfinite = check_nonfinite_mode(nonfinite)
    max_rows = check_max_rows(max_rows)
    divergence, noise, time_variable = _check_inputs(
        sde, x, divergence, probes, noise, rtol, atol, method, eps, batch_size, time_variable)
    # the solver's state, times and the log-determinant: float32 or wider (half-precision data
    # is solved in float32; the network's precision is its own, see ScoreModel)
    x = x.to(time_dtype(x.dtype))
    B = x.shape[0]
    D = x[0].numel()
    probe_all = None
    if divergence == "hutchinson":
        probe_all = _draw_probes(noise, (probes,) + tuple(x.shape), x, generator)
    if check_prior(prior) == "centred" and prior_logp is not None:
        raise ValueError("give prior='centred' or prior_logp, not both")
    prior_fn = sde.prior_logp if prior_logp is None else prior_logp
    tv = _TIME_VARIABLE_CLASSES[time_variable](sde, float(eps), _time_dtype(x.device), x.device)
    a_lo, a_hi = tv.scale(tv.t_lo), tv.scale(tv.t_hi)
    log_det_ends = D * (torch.log(a_hi) - torch.log(a_lo))   # exact: int_eps^T D f dt in the scaled form
    u_span = torch.stack([tv.u_lo, tv.u_hi])
    score = CountingScore(score_fn, check_finite=True)
    bs = min(B if batch_size is None else batch_size, max_rows)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=B, desc="log_likelihood", unit="sample")

    if method == ADAMS:
        # the solver's options, checked before any work: one reading for every batch chunk
        opts = dict(options or {})
        frame = _adams_frame(opts.pop("frame", "auto"), time_variable, divergence, D)
        implicit = _adams_implicit(opts.pop("implicit", "auto"), divergence, D, frame)
        if frame:
            for key, v in _FRAME_STEPS.items():
                opts.setdefault(key, v)

    logps, zs, priors, errs = [], [], [], []
    try:
        with torch.no_grad():
            for i in range(0, B, bs):
                xc = x[i:i + bs]
                pc = None if probe_all is None else probe_all[:, i:i + bs]
                func = _AugmentedODE(score, tv, pc)
                P = 1 if pc is None else pc.shape[0]
                y0 = xc / a_lo.to(x.dtype)
                d0 = torch.zeros(P, xc.shape[0], dtype=x.dtype, device=x.device)
                if method == ADAMS:
                    u0, u1 = float(tv.u_lo), float(tv.u_hi)
                    if frame:
                        fr = _GaussianFrame(tv, func, y0)
                        rhs = (lambda u, st: fr(u, st, jacobian=True)) if implicit else fr
                        (z1, d1), _ = adams_pec(rhs, (fr.z_of_w(u0, y0), d0), u0, u1, rtol=rtol, atol=atol,
                                                implicit=implicit, **opts)
                        y1, d1 = fr.w_of_z(u1, z1), d1 + fr.log_det_cv(u0, u1)
                    else:
                        rhs = {True: func.with_jacobian, RAYLEIGH: func.with_rayleigh}.get(implicit, func.at_float)
                        (y1, d1), _ = adams_pec(rhs, (y0, d0), u0, u1, rtol=rtol, atol=atol, implicit=bool(implicit),
                                                **opts)
                else:
                    ys, ds = odeint(func, (y0, d0), u_span, rtol=rtol, atol=atol, method=method, options=options)
                    y1, d1 = ys[-1], ds[-1]
                z = y1 * a_hi.to(x.dtype)
                if prior == "centred":
                    with torch.no_grad():
                        lp_T = sde.prior_logp(z, mean=sde.prior_mean(score, z))
                else:
                    lp_T = prior_fn(z)
                per_probe = lp_T[None] + D * d1 + log_det_ends.to(x.dtype)   # [P, B]
                logps.append(per_probe.mean(0))
                errs.append(per_probe.std(0) / math.sqrt(P) if P > 1 else None)
                zs.append(z)
                priors.append(lp_T)
                if bar is not None:
                    bar.update(xc.shape[0])
    except (AssertionError, RuntimeError) as err:
        # an adaptive solver fed NaN stops on its own (torchdiffeq: "underflow in dt")
        reraise_nonfinite("log_likelihood", score, err)
        raise
    if bar is not None:
        bar.close()
    logp = torch.cat(logps)
    n_bad = finish_nonfinite("log_likelihood", score, logp[:, None], nonfinite, what="points' log p")
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return LikelihoodResult(
        logp=logp,
        z=torch.cat(zs),
        nfe=score.calls,
        seconds=time.perf_counter() - start,
        stderr=None if errs[0] is None else torch.cat(errs),
        prior_logp=torch.cat(priors),
        divergence=divergence,
        nonfinite=n_bad,
    )
