r"""The one change of variables: every linear SDE as a variance-exploding one.

A linear SDE has p_t(x | x0) = N(alpha(t) x0, sigma(t)^2 I).  In the scaled variables

    x~ = x / alpha(t),        sigma~(t) = sigma(t) / alpha(t) = exp(-lambda(t)),

with lambda(t) = log(alpha / sigma) the SDE's ``log_snr`` (half the log of the signal-to-noise
ratio alpha^2 / sigma^2; decreasing in t), x~ | x0 ~ N(x0, sigma~^2 I): the VE process of noise
level sigma~ (Song et al. 2021, App. B; Karras et al. 2022, "EDM", eq. 4).  With Tweedie's
denoiser D(x~, t) = E[x0 | x_t] = (x + sigma^2 score(x, t)) / alpha the probability-flow ODE
(Song et al., eq. 13) reads, for VP, sub-VP and VE alike,

    dx~/dsigma~ = (x~ - D) / sigma~ = -sigma(t) score(alpha x~, t),
    dx~/dlog sigma~ = x~ - D = -(sigma^2 / alpha) score(alpha x~, t);

the SDE only fixes the range [sigma~(eps), sigma~(T)] and the clock t(sigma~) =
``sde.t_from_log_snr(-log sigma~)``.  The SDE's own formulas (alpha, sigma, lambda and its inverse,
in closed form for the built-ins) stay in :mod:`scoresde.sde`; this module only composes them.

**Time variables** (:data:`TIME_VARIABLES`, one set of names for the ODE sampler and the
likelihood), each an increasing function u(t) on [eps, T]:

* ``"t"``: the SDE's own time (Song et al.'s form).
* ``"sigma"``: u = sigma~ (EDM's sigma).
* ``"log_sigma"``: u = log sigma~ = -lambda.
* ``"vp"``: u = tau, the time at which the default VP SDE of Song et al. (beta_min = 0.1,
  beta_max = 20; :data:`VP_CLOCK`) has the same sigma~: tau = VP.t_from_log_snr(lambda(t)).  For
  that VP SDE, tau = t.  The VP clock is built once, here, from :class:`~scoresde.sde.VPSDE`'s
  defaults; from VP's alpha(tau)^2 = 1 / (1 + sigma~^2), sigma~ dsigma~/dtau = beta(tau) (1 +
  sigma~^2) / 2.

**Time grids** (:func:`time_grid`, :data:`GRIDS`) for the few-step solvers, from T down to eps:
``"logsnr"`` (uniform in lambda), ``"karras"`` (sigma~^(1/rho) uniform; EDM eq. 5),
``"time_uniform"`` (uniform in t), ``"time_quadratic"`` (uniform in sqrt t) and ``"vp_quadratic"``
(uniform in sqrt tau: DPM-Solver's ``time_quadratic`` for VP carried to every SDE through sigma~,
so that a grid in sigma~ does not depend on the SDE, as the ODE in (x~, sigma~) does not).

>>> import torch, scoresde as sd
>>> from scoresde import flow
>>> sde = sd.VESDE()
>>> t = torch.tensor([0.25, 0.5], dtype=torch.float64)
>>> torch.allclose(flow.t_of_sigma(sde, flow.sigma(sde, t)), t)
True
>>> round(float(flow.sigma(sde, torch.tensor([0.0], dtype=torch.float64))), 12)   # VE: sigma~ = sigma
0.01
>>> flow.time_grid(sde, 4, 1e-3, "logsnr").shape
torch.Size([5])
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .sde import SDE, VPSDE, ScoreFn

Tensor = torch.Tensor

__all__ = ["TIME_VARIABLES", "GRIDS", "VP_CLOCK", "sigma", "log_sigma", "t_of_sigma", "t_of_log_sigma",
           "vp_time", "t_of_vp_time", "TimeVariable", "time_variable", "time_grid", "Denoiser"]

TIME_VARIABLES = ("t", "sigma", "log_sigma", "vp")
GRIDS = ("logsnr", "karras", "time_uniform", "time_quadratic", "vp_quadratic")

# the clock of the "vp" time variable and the "vp_quadratic" grid: Song et al.'s default VP SDE
VP_CLOCK = VPSDE()


# -- sigma~(t), t(sigma~) and the VP clock (tensors) -----------------------------------------------
def sigma(sde: SDE, t) -> Tensor:
    """sigma~(t) = sigma(t) / alpha(t) = exp(-lambda(t)), the noise level of the scaled process."""
    return torch.exp(-sde.log_snr(t))


def log_sigma(sde: SDE, t) -> Tensor:
    """log sigma~(t) = -lambda(t)."""
    return -sde.log_snr(t)


def t_of_sigma(sde: SDE, s: Tensor) -> Tensor:
    """The inverse of :func:`sigma`: t with sigma~(t) = s (the SDE's ``t_from_log_snr``)."""
    return sde.t_from_log_snr(-torch.log(s))


def t_of_log_sigma(sde: SDE, r: Tensor) -> Tensor:
    """The inverse of :func:`log_sigma`."""
    return sde.t_from_log_snr(-r)


def vp_time(sde: SDE, t) -> Tensor:
    """tau(t): the time of :data:`VP_CLOCK` with the same sigma~ as ``sde`` at t."""
    return VP_CLOCK.t_from_log_snr(sde.log_snr(t))


def t_of_vp_time(sde: SDE, tau: Tensor) -> Tensor:
    """The inverse of :func:`vp_time`."""
    return sde.t_from_log_snr(VP_CLOCK.log_snr(tau))


# -- time variables --------------------------------------------------------------------------------
class TimeVariable:
    """One time variable u(t) of :data:`TIME_VARIABLES` for one SDE: u(t), t(u) and sigma~(u).

    Tensor methods for the likelihood (float64 ``[n]`` or 0-d tensors) and ``scalar_*`` methods
    (Python floats, closed forms of the SDE) for the ODE sampler, which needs one time a step.
    """

    def __init__(self, sde: SDE, name: str):
        if name not in TIME_VARIABLES:
            raise ValueError(f"unknown time_variable {name!r}; valid: {list(TIME_VARIABLES)}")
        self.sde, self.name = sde, name

    def u_of_t(self, t: Tensor) -> Tensor:
        if self.name == "t":
            return t
        lam = self.sde.log_snr(t)
        if self.name == "sigma":
            return torch.exp(-lam)
        if self.name == "log_sigma":
            return -lam
        return VP_CLOCK.t_from_log_snr(lam)

    def t_of_u(self, u: Tensor) -> Tensor:
        if self.name == "t":
            return u
        if self.name == "sigma":
            return t_of_sigma(self.sde, u)
        if self.name == "log_sigma":
            return t_of_log_sigma(self.sde, u)
        return t_of_vp_time(self.sde, u)

    def u_of_sigma(self, s: Tensor) -> Tensor:
        """u as a function of sigma~ (not for ``"t"``, which depends on the SDE)."""
        if self.name == "sigma":
            return s
        if self.name == "log_sigma":
            return torch.log(s)
        if self.name == "vp":
            return VP_CLOCK.t_from_log_snr(-torch.log(s))
        raise ValueError("time_variable 't' is not a function of sigma~ alone")

    def sigma_of_u(self, u: Tensor) -> Tensor:
        """sigma~ at u (not for ``"t"``)."""
        if self.name == "sigma":
            return u
        if self.name == "log_sigma":
            return torch.exp(u)
        if self.name == "vp":
            return sigma(VP_CLOCK, u)
        raise ValueError("time_variable 't' is not a function of sigma~ alone")

    def sigma_dsigma_du(self, u: Tensor, s: Tensor) -> Tensor:
        """sigma~ dsigma~/du at u, given s = sigma~(u): finite as sigma~ -> 0 for every variable."""
        if self.name == "sigma":
            return s
        if self.name == "log_sigma":
            return s ** 2
        if self.name == "vp":
            return 0.5 * VP_CLOCK.beta(u) * (1.0 + s ** 2)
        raise ValueError("time_variable 't' is not a function of sigma~ alone")

    # one time as Python floats (the ODE sampler's right-hand side, the likelihood's Adams path)
    def scalar_sigma2_rate(self, u: float) -> Tuple[float, float]:
        """(sigma~^2, sigma~ dsigma~/du) at u as Python floats: :meth:`sigma_of_u` squared and
        :meth:`sigma_dsigma_du` in closed form (not for ``"t"``)."""
        if self.name == "vp":
            vp = VP_CLOCK
            s2 = math.expm1(vp.beta_min * u + 0.5 * (vp.beta_max - vp.beta_min) * u * u)
            return s2, 0.5 * (vp.beta_min + u * (vp.beta_max - vp.beta_min)) * (1.0 + s2)
        if self.name == "log_sigma":
            s2 = math.exp(2.0 * u)
            return s2, s2
        if self.name == "sigma":
            return u * u, u
        raise ValueError("time_variable 't' is not a function of sigma~ alone")

    def scalar_u_of_t(self, t: float) -> float:
        if self.name == "t":
            return float(t)
        lam = float(self.sde.log_snr(torch.tensor([float(t)], dtype=torch.float64)))
        if self.name == "sigma":
            return math.exp(-lam)
        if self.name == "log_sigma":
            return -lam
        return float(VP_CLOCK.t_from_log_snr(torch.tensor([lam], dtype=torch.float64)))

    def scalar_t_of_u(self, u: float) -> float:
        if self.name == "t":
            return u
        if self.name == "sigma":
            return self.sde.scalar_t_from_log_snr(-math.log(u))
        if self.name == "log_sigma":
            return self.sde.scalar_t_from_log_snr(-u)
        return float(self.t_of_u(torch.tensor([float(u)], dtype=torch.float64)))


def time_variable(sde: SDE, name: str) -> TimeVariable:
    """The :class:`TimeVariable` ``name`` of ``sde`` (ValueError listing the names if unknown)."""
    return TimeVariable(sde, name)


# -- time grids ------------------------------------------------------------------------------------
def time_grid(sde: SDE, n: int, eps: float, grid: str = "logsnr", rho: float = 7.0,
              device=None, t_start: Optional[float] = None) -> Tensor:
    """``n + 1`` times (float64) from ``t_start`` (default T) down to eps spaced by ``grid`` (see
    the module docstring).

    The ends are exactly t_start and eps (the round trip through lambda would move them by
    rounding).  A start below T (an SDEdit from t0) spaces the same rule over [eps, t0]: the
    grid is the named grid of the shorter interval, not the tail of the grid from T.
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid grids: {list(GRIDS)}")
    if int(n) != n or n < 1:
        raise ValueError(f"the grid needs at least one step, got {n}")
    t0 = float(sde.T) if t_start is None else float(t_start)
    if not eps < t0 <= sde.T:
        raise ValueError(f"t_start must lie in (eps={eps}, T={sde.T}], got {t_start}")
    ends = torch.tensor([t0, eps], dtype=torch.float64, device=device)
    u = torch.linspace(0.0, 1.0, int(n) + 1, dtype=torch.float64, device=device)
    if grid == "time_uniform":
        t = ends[0] + u * (ends[1] - ends[0])
    elif grid == "time_quadratic":
        r = ends.sqrt()
        t = (r[0] + u * (r[1] - r[0])) ** 2
    elif grid == "vp_quadratic":
        r = vp_time(sde, ends).sqrt()
        t = t_of_vp_time(sde, (r[0] + u * (r[1] - r[0])) ** 2)
    else:
        lam = sde.log_snr(ends)
        if grid == "logsnr":
            t = sde.t_from_log_snr(lam[0] + u * (lam[1] - lam[0]))
        else:
            if not rho > 0:
                raise ValueError(f"rho must be positive, got {rho}")
            s = torch.exp(-lam / rho)
            t = sde.t_from_log_snr(-rho * torch.log(s[0] + u * (s[1] - s[0])))
    t[0], t[-1] = t0, eps
    return t


# -- the denoiser in the scaled variables -----------------------------------------------------------
class Denoiser:
    """D(x~, t_i) = x~ + (sigma(t_i)^2 / alpha(t_i)) score(alpha(t_i) x~, t_i) at the times of a grid.

    The coefficients alpha(t_i) (``.alpha``) and sigma(t_i)^2 / alpha(t_i) are computed for the
    whole grid at once and kept as Python floats: each call then costs two passes over the batch
    besides the score, not a dozen one-element tensor ops.  ``.sigma`` holds sigma~(t_i) and
    ``.log_snr`` lambda(t_i), the few-step solvers' step variables, as floats too.
    """

    def __init__(self, score_fn: ScoreFn, sde: SDE, t: Tensor, x: Tensor):
        self.score_fn = score_fn
        al, sg = sde.mean_coef(t), sde.std(t)
        self.alpha, self._c = al.tolist(), (sg ** 2 / al).tolist()
        lam = sde.log_snr(t)
        self.log_snr = lam.tolist()  # one host copy of the scalars, not a sync per step
        self.sigma = torch.exp(-lam).tolist()
        self.times = t.tolist()
        self.t_in = t.to(device=x.device, dtype=x.dtype)  # the score's time input
        self.batch = x.shape[0]

    def __len__(self) -> int:
        return len(self.alpha)

    def __call__(self, xt: Tensor, i: int) -> Tensor:
        score = self.score_fn(xt * self.alpha[i], self.t_in[i].expand(self.batch))
        return torch.add(xt, score, alpha=self._c[i])

    def scale(self, x: Tensor, i: int) -> Tensor:
        """x~ = x / alpha(t_i)."""
        return x / self.alpha[i]

    def unscale(self, xt: Tensor, i: int) -> Tensor:
        """x = alpha(t_i) x~."""
        return xt * self.alpha[i]

