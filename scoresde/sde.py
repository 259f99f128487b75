"""Forward SDEs of score-based generative modelling and their reverse-time forms.

Every SDE here is *linear* with scalar coefficients,

    dx = f(t) x dt + g(t) dw,        t in [0, T],

so the transition from data is Gaussian, p_t(x | x0) = N(alpha(t) x0, sigma(t)^2 I), with the
mean coefficient ``alpha(t) = exp(int_0^t f)`` and the std ``sigma(t)``.  A subclass gives the
four scalar functions of time (``drift_coef``, ``diffusion``, ``mean_coef``, ``std``) and the prior
std; everything else (drift, marginals, the reverse-time SDE, the probability-flow ODE, the
discrete DDPM/SMLD steps, the log-SNR and its inverse) follows here, once, for every sampler and
for the likelihood.

The three SDEs of Song et al. (ICLR 2021) follow their formulas and defaults exactly:

* VP:     beta(t) = b0 + t (b1 - b0),  f = -beta/2,  g = sqrt(beta),
          alpha(t) = exp(-t^2 (b1 - b0)/4 - t b0/2),  sigma = sqrt(1 - alpha^2),  prior N(0, I).
* sub-VP: same drift,  g = sqrt(beta (1 - exp(-2 b0 t - (b1 - b0) t^2))),
          sigma = 1 - alpha^2,  prior N(0, I).
* VE:     sigma(t) = smin (smax/smin)^t,  f = 0,  g = sigma(t) sqrt(2 log(smax/smin)),
          prior N(0, smax^2 I).  (As in Song et al., sigma(0) = smin, not 0: the marginal at t is
          the data convolved with N(0, sigma(t)^2), the perturbation kernel of SMLD.)

Time runs from 0 (data) to T = 1 (noise).  ``t`` is a Python float or a ``[B]`` tensor; ``x`` has
any shape ``[B, ...]``; coefficients broadcast over the trailing dimensions.

The samplers step every sample with the same coefficients, so they take them once a step as Python
floats: ``sde.scalars(t)`` gives ``(f, g, alpha, sigma)`` at one time (closed forms in ``math`` for
the three SDEs above; for any other SDE, its tensor functions evaluated at a one-element tensor),
``sde.scalar_t_from_log_snr(lam)`` the inverse log-SNR, and ``sde.ancestral_coefs`` the ancestral
step's coefficients from floats or tensors alike.

Writing a new SDE takes the four scalar functions and the prior std.  For example, the
variance-exploding SDE of Karras et al. (EDM), sigma(t) = t, scaled to [0, 80]:

>>> import math, torch
>>> import scoresde as sd
>>> class EDMSDE(sd.SDE):
...     '''dx = sqrt(2 s'(t) s(t)) dw with s(t) = smax t.'''
...     def __init__(self, sigma_max: float = 80.0):
...         super().__init__(T=1.0)
...         self.sigma_max = sigma_max
...     def drift_coef(self, t):
...         return torch.zeros_like(t)
...     def diffusion(self, t):
...         return self.sigma_max * torch.sqrt(2.0 * t)
...     def mean_coef(self, t):
...         return torch.ones_like(t)
...     def std(self, t):
...         return self.sigma_max * t
...     @property
...     def prior_std(self) -> float:
...         return self.sigma_max
>>> sde = EDMSDE()
>>> x0 = torch.zeros(4, 2)
>>> mean, std = sde.marginal(x0, 0.5)
>>> std.tolist()
[40.0, 40.0, 40.0, 40.0]
>>> drift, g = sde.sde(x0, torch.full((4,), 0.5))
>>> round(float(g[0]) ** 2, 6)   # g^2 = d sigma^2 / dt = 2 smax^2 t
6400.0
>>> sde.prior_sample((3, 2), generator=torch.Generator().manual_seed(0)).shape
torch.Size([3, 2])
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch

Tensor = torch.Tensor
TimeLike = Union[float, int, Tensor]
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "ReverseSDE",
    "ScoreFn",
    "build_sde",
    "SDES",
    "expand_to",
    "as_time",
    "Scalars",
    "PRIORS",
    "check_prior",
]

PRIORS = ("sde", "centred")
"""The priors of ``scoresde.sample`` and ``scoresde.log_likelihood`` (their ``prior`` argument):
the SDE's N(0, prior_std^2), or the same centred on :meth:`SDE.prior_mean`."""


def check_prior(prior: str) -> str:
    """``prior`` if it is one of :data:`PRIORS`, else ValueError listing them."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; valid priors: {list(PRIORS)}")
    return prior


class Scalars(NamedTuple):
    """The four scalar functions of a linear SDE at one time, as Python floats."""

    f: float
    g: float
    alpha: float
    sigma: float


def expand_to(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``[B]`` (or scalar) to broadcast against ``x [B, ...]``."""
    if coef.dim() == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))


def time_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of times and coefficients for data of ``dtype``: float32 or wider.

    Half-precision data (float16, bfloat16) keeps its times in float32: bfloat16 holds only 8
    significant bits, so a 1,000-step grid would reach the network as about 500 distinct times.
    """
    if not dtype.is_floating_point or dtype.is_complex:
        return torch.get_default_dtype()
    return torch.promote_types(dtype, torch.float32)


def as_time(t: TimeLike, x: Optional[Tensor] = None, *, batch: Optional[int] = None,
            dtype: Optional[torch.dtype] = None, device=None) -> Tensor:
    """Turn a float or tensor time into a ``[B]`` tensor on ``x``'s device, in :func:`time_dtype`
    of x's dtype (x's own dtype unless x is half precision: then float32).

    A scalar is broadcast to the batch size of ``x`` (or ``batch``); a ``[B]`` tensor must match it.
    """
    if x is not None:
        batch = x.shape[0] if batch is None else batch
        dtype = time_dtype(x.dtype) if dtype is None else dtype
        device = x.device if device is None else device
    if not torch.is_tensor(t):
        t = torch.tensor(float(t), dtype=dtype or torch.get_default_dtype(), device=device)
    else:
        if dtype is None and not t.is_floating_point():
            dtype = torch.get_default_dtype()
        t = t.to(device=device if device is not None else t.device, dtype=dtype or t.dtype)
    if t.dim() == 0:
        return t.expand(batch) if batch is not None else t.reshape(1)
    if t.dim() != 1:
        raise ValueError(f"t must be a float or a [B] tensor, got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        if t.shape[0] == 1:
            return t.expand(batch)
        raise ValueError(f"t has {t.shape[0]} entries but x has batch size {batch}")
    return t


class SDE:
    """A linear forward SDE ``dx = f(t) x dt + g(t) dw`` on ``[0, T]``.

    Subclasses define the scalar functions ``drift_coef`` (f), ``diffusion`` (g), ``mean_coef``
    (alpha) and ``std`` (sigma) of a time tensor, and ``prior_std``.  They must be consistent:
    ``d log alpha / dt = f`` and ``d sigma^2/dt = 2 f sigma^2 + g^2``.
    """

    def __init__(self, T: float = 1.0):
        if not T > 0:
            raise ValueError(f"T must be positive, got {T}")
        self.T = float(T)

    # -- the four scalar functions a subclass gives -------------------------------------------
    def drift_coef(self, t: Tensor) -> Tensor:
        """f(t), the linear drift coefficient."""
        raise NotImplementedError

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t), the diffusion coefficient."""
        raise NotImplementedError

    def mean_coef(self, t: Tensor) -> Tensor:
        """alpha(t) = exp(int_0^t f(s) ds), the mean coefficient of p_t(x | x0)."""
        raise NotImplementedError

    def std(self, t: Tensor) -> Tensor:
        """sigma(t), the standard deviation of p_t(x | x0)."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior p_T."""
        raise NotImplementedError

    # -- one time, as Python floats -------------------------------------------------------------
    def scalars(self, t: float) -> Scalars:
        """``(f, g, alpha, sigma)`` at one time ``t``, as Python floats.

        The samplers step every sample with the same coefficients, so they need them once a step,
        not once a sample.  A tensor op on a one-element tensor costs microseconds where float
        arithmetic costs tens of nanoseconds, and at a batch of 1,000 the score itself takes about a
        millisecond: the built-in SDEs override this with closed forms in ``math``.  This generic
        form evaluates the four tensor functions at a float64 ``[1]`` tensor.
        """
        tt = torch.tensor([float(t)], dtype=torch.float64)
        return Scalars(*(float(fn(tt)) for fn in (self.drift_coef, self.diffusion, self.mean_coef, self.std)))

    def scalar_t_from_log_snr(self, lam: float) -> float:
        """:meth:`t_from_log_snr` at one Python float (overridden in closed form by the built-ins)."""
        return float(self.t_from_log_snr(torch.tensor([float(lam)], dtype=torch.float64)))

    def ancestral_coefs(self, al_t, sg_t, al_s, sg_s):
        """The ancestral step from t down to s < t as ``mean = cx x + cs score``, ``var``: returns
        ``(cx, cs, var)`` from alpha and sigma at both times (floats or tensors alike).

        The generic form is the Gaussian posterior q(x_s | x_t, x0_hat) with Tweedie's
        x0_hat = (x + sigma_t^2 score) / alpha_t and the transition (a, v) from s to t:
        mean = (a sigma_s^2 / sigma_t^2) x + (alpha_s v / sigma_t^2) x0_hat,  var = v sigma_s^2 / sigma_t^2.
        """
        a, v = _transition(al_t, sg_t, al_s, sg_s)
        r = sg_s ** 2 / sg_t ** 2
        w = al_s * v / sg_t ** 2 / al_t
        return a * r + w, w * sg_t ** 2, v * r

    # -- derived -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    def sde(self, x: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """Drift ``f(t) x`` (shape of x) and diffusion ``g(t)`` (shape ``[B]``)."""
        t = as_time(t, x)
        return expand_to(self.drift_coef(t), x) * x, self.diffusion(t)

    def marginal(self, x0: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """Mean ``alpha(t) x0`` (shape of x0) and std ``sigma(t)`` (``[B]``) of p_t(x | x0)."""
        t = as_time(t, x0)
        return expand_to(self.mean_coef(t), x0) * x0, self.std(t)

    def coefs(self, t: TimeLike, dtype=None, device=None) -> Tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))`` for a float or tensor ``t``."""
        t = as_time(t, dtype=dtype, device=device)
        return self.mean_coef(t), self.std(t)

    def perturb(self, x0: Tensor, t: TimeLike, noise: Tensor) -> Tensor:
        """A draw of x_t given x0 and standard normal ``noise``: ``alpha x0 + sigma noise``."""
        mean, std = self.marginal(x0, t)
        return mean + expand_to(std, x0) * noise

    def prior_sample(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                     dtype: Optional[torch.dtype] = None, device=None) -> Tensor:
        """A draw from the prior N(0, prior_std^2 I) of the given shape."""
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return z * self.prior_std

    def prior_logp(self, z: Tensor, mean: Optional[Tensor] = None) -> Tensor:
        """log N(z; mean, prior_std^2 I) (mean 0 by default), summed over all but the batch
        dimension: shape ``[B]``."""
        d = z[0].numel()
        s2 = self.prior_std ** 2
        r = z if mean is None else z - mean
        sq = r.reshape(z.shape[0], -1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * sq / s2

    def prior_mean(self, score_fn: ScoreFn, like: Tensor) -> Tensor:
        r"""Tweedie's estimate of the mean of p_T, for the ``"centred"`` prior: one score evaluation.

        The prior N(0, prior_std^2) stands in for p_T = p_0 * N(alpha_T ., sigma_T^2), whose mean
        is alpha_T E[x_0], not 0.  Tweedie's formula at the prior's centre x_T = 0,

            alpha_T E[x_0 | x_T = 0] = 0 + sigma_T^2 grad log p_T(0),

        gives that mean to first order in alpha_T^2 Var(x_0) / sigma_T^2 (x_T = 0 says almost
        nothing about x_0 at t = T, so E[x_0 | x_T = 0] ~ E[x_0]); exactly when p_T is Gaussian
        with covariance sigma_T^2 I.  ``score_fn`` is evaluated once at zeros shaped like ``like``
        ``[B, ...]``, so a class-conditional or guided score gives each sample its own class's
        mean (``scoresde.guidance``).  Why it matters: the probability-flow map carries a prior
        offset down to the data (for a ring8 mode under the default VP SDE, alpha_T mu = 0.026
        becomes 0.0064 at t = eps, about the W2 floor of 2,000 samples), while the reverse SDE
        contracts it by exp(-int beta / 2).
        """
        zero = torch.zeros_like(like)
        t = torch.full((like.shape[0],), float(self.T), dtype=like.dtype, device=like.device)
        return self.scalars(float(self.T)).sigma ** 2 * score_fn(zero, t)

    def log_snr(self, t: TimeLike) -> Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)), decreasing in t."""
        t = as_time(t)
        return torch.log(self.mean_coef(t)) - torch.log(self.std(t))

    def t_from_log_snr(self, lam: Tensor, iters: int = 100) -> Tensor:
        """Inverse of ``log_snr`` (bisection on [0, T]; subclasses give closed forms)."""
        lam = torch.as_tensor(lam)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            go_right = self.log_snr(mid.reshape(-1)).reshape(mid.shape) > lam
            lo = torch.where(go_right, mid, lo)
            hi = torch.where(go_right, hi, mid)
        return 0.5 * (lo + hi)

    def transition(self, t: Tensor, s: Tensor) -> Tuple[Tensor, Tensor]:
        """For s < t, x_t | x_s ~ N(a x_s, v I); returns ``(a, v)``.

        a = alpha(t) / alpha(s),  v = sigma(t)^2 - a^2 sigma(s)^2 (exact for any linear SDE).
        """
        return _transition(self.mean_coef(t), self.std(t), self.mean_coef(s), self.std(s))

    def discretize(self, x: Tensor, t: TimeLike, s: TimeLike) -> Tuple[Tensor, Tensor]:
        """The discrete forward step from s to t > s as ``x_t = x_s + f_d + G z``.

        Returns ``(f_d, G)`` with ``f_d = (a - 1) x`` and ``G = sqrt(v)``: for VP this is
        DDPM's step (a = sqrt(1 - beta_i), G = sqrt(beta_i)), for VE SMLD's
        (f_d = 0, G = sqrt(sigma_t^2 - sigma_s^2)).  Unlike Song et al.'s ``discretize`` it takes
        the two times explicitly, so it works on any time grid.
        """
        t = as_time(t, x)
        s = as_time(s, x)
        a, v = self.transition(t, s)
        return (expand_to(a, x) - 1.0) * x, torch.sqrt(v)

    def ancestral_step(self, x: Tensor, t: TimeLike, s: TimeLike, score: Tensor) -> Tuple[Tensor, Tensor]:
        """One ancestral sampling step from t down to s < t: returns ``(mean, std)`` of x_s.

        The coefficients are :meth:`ancestral_coefs`: the Gaussian posterior q(x_s | x_t, x0_hat)
        in general, DDPM's step for VP and SMLD's for VE, as in Song et al.
        """
        t = as_time(t, x)
        s = as_time(s, x)
        cx, cs, var = self.ancestral_coefs(self.mean_coef(t), self.std(t), self.mean_coef(s), self.std(s))
        cx, cs = (expand_to(c, x) if torch.is_tensor(c) else c for c in (cx, cs))
        return cx * x + cs * score, torch.sqrt(var)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or, with ``probability_flow=True``, the probability-flow ODE)."""
        return ReverseSDE(self, score_fn, probability_flow)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{self.name}({params})"

    def _params(self) -> dict:
        return {}


class ReverseSDE:
    """The reverse-time SDE of ``sde`` under a score function, in forward time t.

        dx = [f(x, t) - c g(t)^2 score(x, t)] dt + sqrt(1 - c) g(t) dw_bar,

    integrated from T down to 0, with c = 1 for the reverse SDE and c = 1/2 with zero
    diffusion for the probability-flow ODE (Song et al. 2021, eqs. 6 and 13).
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward_sde = sde
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.T = sde.T

    def sde(self, x: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """``(drift, diffusion)`` of the reverse-time process at (x, t); diffusion is ``[B]``."""
        t = as_time(t, x)
        drift, g = self.forward_sde.sde(x, t)
        score = self.score_fn(x, t)
        coef = 0.5 if self.probability_flow else 1.0
        drift = drift - expand_to(coef * g ** 2, x) * score
        diffusion = torch.zeros_like(g) if self.probability_flow else g
        return drift, diffusion

    def discretize(self, x: Tensor, t: TimeLike, s: TimeLike) -> Tuple[Tensor, Tensor]:
        """The reverse-diffusion step of Song et al. from t to s < t.

        With the forward step ``(f_d, G)`` from s to t, ``x_s = x - (f_d - G^2 score) + G z``
        (probability flow: ``- (f_d - G^2 score / 2)`` and no noise).  Returns
        ``(rev_f, rev_G)`` so that ``x_s = x - rev_f + rev_G z``.
        """
        t = as_time(t, x)
        f_d, G = self.forward_sde.discretize(x, t, s)
        score = self.score_fn(x, t)
        coef = 0.5 if self.probability_flow else 1.0
        rev_f = f_d - expand_to(coef * G ** 2, x) * score
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


def _transition(al_t, sg_t, al_s, sg_s):
    """(a, v) of x_t | x_s ~ N(a x_s, v I) from alpha and sigma at both times (floats or tensors)."""
    a = al_t / al_s
    v = sg_t ** 2 - a ** 2 * sg_s ** 2
    return a, (v.clamp_min(0.0) if torch.is_tensor(v) else max(v, 0.0))


def _log_sigmoid(v: float) -> float:
    return -math.log1p(math.exp(-v)) if v >= 0 else v - math.log1p(math.exp(v))


def _check_time_dtype(t: Tensor) -> Tensor:
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class VPSDE(SDE):
    """Variance-preserving SDE (the continuous DDPM): dx = -beta(t)/2 x dt + sqrt(beta(t)) dw."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        super().__init__(T)
        if beta_min < 0:
            raise ValueError(f"beta_min must be >= 0, got {beta_min}")
        if not beta_max > beta_min:
            raise ValueError(f"beta_max must be > beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def _params(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_mean_coef(self, t: Tensor) -> Tensor:
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(_check_time_dtype(t))

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(_check_time_dtype(t)))

    def mean_coef(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_mean_coef(_check_time_dtype(t)))

    def std(self, t: Tensor) -> Tensor:
        # 1 - exp(2 log m) via expm1 keeps relative precision at tiny t
        return torch.sqrt(-torch.expm1(2.0 * self._log_mean_coef(_check_time_dtype(t))))

    @property
    def prior_std(self) -> float:
        return 1.0

    def log_snr(self, t: TimeLike) -> Tensor:
        t = _check_time_dtype(as_time(t))
        lm = self._log_mean_coef(t)
        return lm - 0.5 * torch.log(-torch.expm1(2.0 * lm))

    def _t_from_log_mean_coef(self, log_m: Tensor) -> Tensor:
        # solve (b1 - b0)/4 t^2 + b0/2 t + log m = 0 for t >= 0, in the form without cancellation
        db = self.beta_max - self.beta_min
        disc = self.beta_min ** 2 - 4.0 * db * log_m
        return -4.0 * log_m / (self.beta_min + torch.sqrt(disc))

    def t_from_log_snr(self, lam: Tensor, iters: int = 100) -> Tensor:
        # alpha^2 = sigmoid(2 lambda)
        log_m = 0.5 * torch.nn.functional.logsigmoid(2.0 * torch.as_tensor(lam))
        return self._t_from_log_mean_coef(log_m)

    def scalars(self, t: float) -> Scalars:
        t = float(t)
        beta = self.beta(t)  # plain arithmetic: a float in, a float out
        lm = self._log_mean_coef(t)
        return Scalars(-0.5 * beta, math.sqrt(beta) if beta >= 0 else math.nan, math.exp(lm),
                       math.sqrt(-math.expm1(2.0 * lm)))

    def scalar_t_from_log_snr(self, lam: float) -> float:
        log_m = 0.5 * _log_sigmoid(2.0 * float(lam))
        db = self.beta_max - self.beta_min
        return -4.0 * log_m / (self.beta_min + math.sqrt(self.beta_min ** 2 - 4.0 * db * log_m))

    def ancestral_coefs(self, al_t, sg_t, al_s, sg_s):
        """DDPM's ancestral step (Ho et al. 2020, Alg. 2; Song et al.'s AncestralSamplingPredictor):
        x_s = (x + beta_i score) / sqrt(1 - beta_i) + sqrt(beta_i) z, with 1 - beta_i = a^2, beta_i = v."""
        a, v = _transition(al_t, sg_t, al_s, sg_s)
        return 1.0 / a, v / a, v


class SubVPSDE(VPSDE):
    """Sub-VP SDE: VP's drift, g(t)^2 = beta(t) (1 - exp(-2 b0 t - (b1 - b0) t^2)), std 1 - alpha^2."""

    def diffusion(self, t: Tensor) -> Tensor:
        t = _check_time_dtype(t)
        return torch.sqrt(self.beta(t) * -torch.expm1(4.0 * self._log_mean_coef(t)))

    def std(self, t: Tensor) -> Tensor:
        return -torch.expm1(2.0 * self._log_mean_coef(_check_time_dtype(t)))

    def log_snr(self, t: TimeLike) -> Tensor:
        t = _check_time_dtype(as_time(t))
        lm = self._log_mean_coef(t)
        return lm - torch.log(-torch.expm1(2.0 * lm))

    def t_from_log_snr(self, lam: Tensor, iters: int = 100) -> Tensor:
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 / (e^-lam + sqrt(e^-2lam + 4)), i.e.
        # log alpha = -asinh(e^-lam / 2): no difference of two numbers near log 2, which would lose
        # the relative precision of a small e^-lam (2e-10 at t = 1e-5); for lam < 0 the same as
        # log 2 + lam - log1p(sqrt(1 + 4 e^(2 lam))), without e^-lam overflowing
        lam = torch.as_tensor(lam)
        pos = -torch.asinh(0.5 * torch.exp(-lam.clamp_min(0.0)))
        neg = math.log(2.0) + lam - torch.log1p(torch.sqrt(1.0 + 4.0 * torch.exp(2.0 * lam.clamp_max(0.0))))
        return self._t_from_log_mean_coef(torch.where(lam >= 0, pos, neg))

    def scalars(self, t: float) -> Scalars:
        t = float(t)
        beta = self.beta(t)
        lm = self._log_mean_coef(t)
        g2 = beta * -math.expm1(4.0 * lm)
        return Scalars(-0.5 * beta, math.sqrt(g2) if g2 >= 0 else math.nan, math.exp(lm), -math.expm1(2.0 * lm))

    def scalar_t_from_log_snr(self, lam: float) -> float:
        lam = float(lam)
        # log alpha as in t_from_log_snr
        if lam < 0:
            log_m = math.log(2.0) + lam - math.log1p(math.sqrt(1.0 + 4.0 * math.exp(2.0 * lam)))
        else:
            log_m = -math.asinh(0.5 * math.exp(-lam))
        db = self.beta_max - self.beta_min
        return -4.0 * log_m / (self.beta_min + math.sqrt(self.beta_min ** 2 - 4.0 * db * log_m))

    def ancestral_coefs(self, al_t, sg_t, al_s, sg_s):
        return SDE.ancestral_coefs(self, al_t, sg_t, al_s, sg_s)


class VESDE(SDE):
    """Variance-exploding SDE (continuous SMLD): sigma(t) = smin (smax/smin)^t, dx = g(t) dw."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        super().__init__(T)
        if not sigma_min > 0:
            raise ValueError(f"sigma_min must be > 0, got {sigma_min}")
        if not sigma_max > sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _params(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(_check_time_dtype(t))

    def diffusion(self, t: Tensor) -> Tensor:
        return self.std(t) * math.sqrt(2.0 * self._log_ratio)

    def mean_coef(self, t: Tensor) -> Tensor:
        return torch.ones_like(_check_time_dtype(t))

    def std(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(_check_time_dtype(t) * self._log_ratio)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def log_snr(self, t: TimeLike) -> Tensor:
        t = _check_time_dtype(as_time(t))
        return -math.log(self.sigma_min) - t * self._log_ratio

    def t_from_log_snr(self, lam: Tensor, iters: int = 100) -> Tensor:
        return (-torch.as_tensor(lam) - math.log(self.sigma_min)) / self._log_ratio

    def scalars(self, t: float) -> Scalars:
        sigma = self.sigma_min * math.exp(float(t) * self._log_ratio)
        return Scalars(0.0, sigma * math.sqrt(2.0 * self._log_ratio), 1.0, sigma)

    def scalar_t_from_log_snr(self, lam: float) -> float:
        return (-float(lam) - math.log(self.sigma_min)) / self._log_ratio

    def ancestral_coefs(self, al_t, sg_t, al_s, sg_s):
        """SMLD's ancestral step (Song et al.'s AncestralSamplingPredictor for VE):
        mean = x + (sigma_t^2 - sigma_s^2) score, var = sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2."""
        dv = sg_t ** 2 - sg_s ** 2
        return 1.0, dv, sg_s ** 2 * dv / sg_t ** 2


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def build_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by name: ``"vp"``, ``"subvp"`` or ``"ve"``."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in SDES:
        raise ValueError(f"unknown SDE {name!r}; valid names: {sorted(SDES)}")
    return SDES[key](**kwargs)
