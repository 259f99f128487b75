r"""The variational bound (ELBO) of the reverse-SDE model, per data point, by Monte Carlo.

**The model.**  A score function s(x, t) defines the reverse-time SDE (Song et al., ICLR 2021,
eq. 6) dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dw_bar, run from x_T ~ pi down to eps; its density
at eps is q_eps.  For the *forward* process started at a point x at time eps, write
x_t | x ~ N(a_t x, v_t I) with a_t = alpha(t) / alpha(eps), v_t = sigma(t)^2 - a_t^2 sigma(eps)^2
(``sde.transition(t, eps)``).  Girsanov's theorem against that forward process gives, for every x
(Huang, Lim & Courville 2021, "A variational perspective on diffusion-based generative models and
score matching", Thm. 3; Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training of
score-based diffusion models", Thm. 1 and eq. 20),

    log q_eps(x) >= ELBO(x) = E log pi(x_T) + D log a_T
                              - int_eps^T g(t)^2 E[div s(x_t, t) + |s(x_t, t)|^2 / 2] dt,       (1)

all expectations over x_t | x.  The middle term is -int div f dt = -D int_eps^T f dt = D log a_T
(f(x, t) = f(t) x).  The gap is a path-space KL divergence,

    log q_eps(x) - ELBO(x) = 1/2 int_eps^T g^2 E|s(x_t, t) - grad log q_t(x_t)|^2 dt,              (2)

q_t the model's own marginal: the bound is tight for *every* x when s is the exact score of a
diffusion and pi its exact p_T, whatever x is (the model, not the data, is measured).  It is NOT
ordered against the probability-flow ODE likelihood of an imperfect score: the ODE's density is a
different model (the PF-ODE of s is not the reverse SDE of s unless s is some diffusion's score),
and the ELBO may lie above or below it; only log q_eps (the reverse SDE's density) is bounded.

**The prior and drift terms** are closed form for the SDE's prior pi = N(0, s^2 I): with
x_T ~ N(a_T x, v_T I), E log pi(x_T) = -D/2 log(2 pi s^2) - (a_T^2 |x|^2 + D v_T) / (2 s^2).
A ``prior_logp`` callable (for example a mixture's exact p_T) is estimated by Monte Carlo instead,
one x_T per time draw, inside the standard error.

**Estimators of the diffusion integral.**  Each time draw t (``n_t`` of them per point) and its
noise give one unbiased estimate of int g^2 E[...] dt; ``elbo`` is their mean, ``stderr`` their
standard deviation over sqrt(n_t).

* ``estimator="dsm"`` (default): the denoising form.  Stein's lemma on the Gaussian x_t | x,
  E[div s(x_t)] = E[s(x_t) . (x_t - a x) / v] = E[s(x_t) . z] / sqrt(v) with x_t = a x + sqrt(v) z,
  turns the integrand into E[1/2 |s + z / sqrt(v)|^2 - |z|^2 / (2 v)], the DSM loss of data at eps
  less its z-only part.  Written one-sided, s(x_t) . z / sqrt(v) has variance ~ |s|^2 / v, and
  v_t ~ (t - eps) near eps, so its time integral has *infinite* variance.  We use the antithetic
  pair x_+- = a x +- sqrt(v) z (each exactly N(a x, v I), so the estimate stays unbiased):

      1/4 (|s_+|^2 + |s_-|^2) + (s_+ - s_-) . z / (2 sqrt(v)),

  whose divergence part tends to z^T (grad s) z as v -> 0: bounded variance.  No autograd; two
  score rows per draw.  ``divergence`` must be ``"stein"`` (its default) here.
* ``estimator="ism"``: the implicit form (1) at x_t = a x + sqrt(v) z with the divergence by
  ``"exact"`` trace (autograd, chunked over the D basis vectors as in ``log_likelihood``),
  ``"hutchinson"`` (Rademacher or Gaussian probes, e^T (grad s) e) or ``"stein"``: a split of the
  transition noise, y = a x + sqrt(v/2) z1 and the pair y +- c z2 with c = sqrt(v/2), each
  point again exactly N(a x, v I), and by Stein's lemma on z2
  E[(s(y + c z2) - s(y - c z2)) . z2 / (2c)] = E[div s(y + c z2)] = E_{x_t}[div s(x_t)], so the
  estimate is unbiased without autograd.  ``probes`` pairs (or Hutchinson probes) per draw.

**Importance sampling of t** (``importance_sampling=True``): t ~ q(t) proportional to
g(t)^2 / sigma(t)^2 (uniform in log-SNR; ``losses.importance_time``), weight 1 / q(t).  For VE
g^2 / sigma^2 is constant, so q is uniform in t there.  It is off by default because, measured,
it *raises* the variance here: the per-draw variance with the exact score and exact p_T (16
points, 2,000 draws, float64) was, uniform vs. q, ring8 VP 225 vs 365, sub-VP 229 vs 638, aniso16
VP 2,518 vs 9,317, sub-VP 2,961 vs 20,034 (DSM; ISM alike), VE identical.  With transitions from
eps the integrand has no 1/t spike to remove (that spike belongs to the training loss, whose noise
comes from t = 0: see ``losses.dsm_bound``), and q spends its draws at small t where the
integrand is small.  A variance-matched proposal g^2 / (a^2 + v) (uniform in log(1 + v / a^2))
was also measured and lost to uniform (ring8 VP 558, aniso16 VP 10,334).

**Cost.**  ``nfe`` is the counted number of ``score_fn`` calls; rows are batched, so one call
evaluates many (point, time) pairs: ``evaluations`` is the number of score rows per data point
(n_t for ISM, 2 n_t for the Stein pairs).

The draws are right-skewed (ring8, VE, exact score: skewness 2.6, kurtosis 14; the rare large
draws come from large t, where g^2 is large): with a few hundred draws the sample mean is typically
low and ``stderr`` understates the error (n_t = 256 gave z = -3.5 where n_t = 4000 gave +0.4 on the
same points).  Trust the 4-standard-error statements from n_t of about 1,000 up.

Precision: the Stein pairs difference two scores a distance 2 sqrt(v) apart; in float32 near eps
this costs variance (not bias).  Use float64 data for tight checks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..device import sde_of
from ..losses import importance_norm, importance_time
from ..score import CountingScore, check_max_rows, check_nonfinite_mode, finish_nonfinite
from ..sde import SDE, ScoreFn, expand_to, time_dtype
from .divergence import _exact_trace, _quadratic_forms
from .ode import check_data, resolve_divergence

Tensor = torch.Tensor

__all__ = ["elbo", "ELBOResult", "ESTIMATORS", "DIVERGENCES", "NOISES", "gaussian_decoder_logp"]

ESTIMATORS = ("dsm", "ism")
DIVERGENCES = ("exact", "hutchinson", "stein")
NOISES = ("rademacher", "gaussian")


@dataclass
class ELBOResult:
    """What :func:`elbo` returns (all per point, nats).

    Attributes:
        elbo: ``[B]`` the bound's estimate, ``prior + drift + diffusion``.
        stderr: ``[B]`` its Monte Carlo standard error over the ``n_t`` draws.
        prior: ``[B]`` E log pi(x_T) (closed form for the SDE's prior, else its MC mean).
        drift: ``[B]`` D log a_T (exact).
        diffusion: ``[B]`` the MC mean of -int g^2 E[div s + |s|^2/2] dt.
        draws: ``[n_t, B]`` the per-draw estimates whose mean is ``elbo`` (for variance studies).
        nfe: counted ``score_fn`` calls.
        evaluations: score rows per data point (n_t, or 2 n_t with Stein pairs, times probes).
        seconds: wall time.
        nonfinite: points with a NaN/Inf draw (0 unless ``nonfinite="count"``).
    """

    elbo: Tensor
    stderr: Tensor
    prior: Tensor
    drift: Tensor
    diffusion: Tensor
    draws: Tensor
    nfe: int
    evaluations: int
    seconds: float
    nonfinite: int = 0


def _check_name(value: str, valid, what: str) -> str:
    key = str(value).lower()
    if key not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid names: {list(valid)}")
    return key


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _randn(shape, x: Tensor, generator) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def _probes(noise: str, shape, x: Tensor, generator) -> Tensor:
    if noise == "gaussian":
        return _randn(shape, x, generator)
    device = generator.device if generator is not None else x.device
    e = torch.randint(0, 2, shape, generator=generator, device=device).to(x.dtype) * 2 - 1
    return e.to(x.device)


def _integrand(score: ScoreFn, estimator: str, divergence: str, noise: str, probes: int,
               m: Tensor, v: Tensor, t: Tensor, generator) -> Tensor:
    """E[div s(x_t) + |s(x_t)|^2 / 2] estimated once per row, x_t ~ N(m, v I): ``[R]``.

    ``m`` is a [R, ...] batch of means a_t x, ``v`` and ``t`` are ``[R]``.
    """
    R = m.shape[0]
    sv = expand_to(torch.sqrt(v), m)
    if estimator == "dsm" or divergence == "stein":
        if estimator == "dsm":
            z = _randn(m.shape, m, generator)
            centre, c, z2 = m, sv, z[None]                              # pair a x +- sqrt(v) z
        else:
            z1 = _randn(m.shape, m, generator)
            z2 = _randn((probes,) + tuple(m.shape), m, generator)
            c = sv * math.sqrt(0.5)
            centre = m + c * z1                                         # y ~ N(a x, v/2)
        P = z2.shape[0]
        plus = (centre[None] + c[None] * z2).reshape((P * R,) + m.shape[1:])
        minus = (centre[None] - c[None] * z2).reshape((P * R,) + m.shape[1:])
        tt = t.repeat(2 * P)
        s = score(torch.cat([plus, minus]), tt).reshape((2, P, R, -1))
        sq = 0.25 * (s[0].pow(2).sum(-1) + s[1].pow(2).sum(-1))        # [P, R]
        div = ((s[0] - s[1]) * z2.reshape(P, R, -1)).sum(-1) / (2.0 * c.reshape(1, R))
        return (div + sq).mean(0)
    z = _randn(m.shape, m, generator)
    with torch.enable_grad():
        xt = (m + sv * z).detach().requires_grad_(True)
        s = score(xt, t)
        if divergence == "exact":
            div = _exact_trace(s, xt, [True])
        else:
            e = _probes(noise, (probes,) + tuple(m.shape), m, generator)
            div = _quadratic_forms(s, xt, e, [False]).mean(0)   # a loop of backwards: any score
    return div.detach() + 0.5 * s.detach().pow(2).reshape(R, -1).sum(-1)


def elbo(score_fn: ScoreFn, sde: Optional[SDE] = None, x: Optional[Tensor] = None, *, n_t: int = 64, estimator: str = "dsm",
         divergence: Optional[str] = None, probes: int = 1, noise: str = "rademacher",
         importance_sampling: bool = False, eps: float = 1e-5,
         prior_logp: Optional[Callable[[Tensor], Tensor]] = None, batch_size: Optional[int] = None,
         generator: Optional[torch.Generator] = None, max_rows: Optional[int] = None,
         nonfinite: str = "raise") -> ELBOResult:
    r"""A per-point lower bound on log q_eps(x) of the reverse-SDE model, in nats (module docstring).

        ELBO(x) = E log pi(x_T) + D log a_T - int_eps^T g^2 E[div s(x_t, t) + |s(x_t, t)|^2 / 2] dt

    Args:
        score_fn: ``score_fn(x, t)``, x ``[R, ...]``, t ``[R]``.
        sde: the forward SDE (linear; its ``transition`` gives a_t, v_t from eps).
        x: points ``[B, ...]`` (any data shape) on the device to compute on, read as data at eps.
        n_t: time draws per point (>= 2, for the standard error).
        estimator: ``"dsm"`` (denoising form, antithetic Stein pairs) or ``"ism"``.
        divergence: for ``"ism"``: ``"exact"`` (the default up to D = 64,
            :data:`~scoresde.likelihood.ode.AUTO_EXACT_MAX_DIM`), ``"hutchinson"`` (the default
            above) or ``"stein"``; for ``"dsm"`` only ``"stein"`` (the default).
        probes: Hutchinson probes or Stein pairs per draw (``"ism"`` with those divergences only).
        noise: Hutchinson probe law, ``"rademacher"`` or ``"gaussian"``.
        importance_sampling: t ~ q proportional to g^2 / sigma^2 (uniform for VE) instead of
            U(eps, T); off by default (it raised the variance in every measured case).
        eps: the bound is on the density at t = eps (Song et al. use 1e-5 for likelihoods).
        prior_logp: log pi in place of the SDE's N(0, prior_std^2 I) (then estimated by MC).
        batch_size: at most this many points at once (each with its ``n_t`` draws).
        generator: all the randomness (times, noise, probes, prior draws).
        max_rows: the most rows one score call sees (default :data:`scoresde.score.MAX_ROWS`):
            the ``n_t`` draws of the points (times their Stein pairs or probes) are split into
            calls of at most this many rows, whatever ``batch_size`` and ``n_t`` are.  The noise
            is drawn call by call, so a different split gives other (equally valid) draws.
        nonfinite: ``"raise"`` (default) or ``"count"`` (``.nonfinite``: points whose bound is
            NaN/Inf), as for :func:`~scoresde.likelihood.log_likelihood`.

    Returns:
        :class:`ELBOResult` (``elbo``, ``stderr``, ``prior``, ``drift``, ``diffusion``, ``draws``,
        ``nfe``, ``evaluations``, ``seconds``, ``nonfinite``).
    """
    start = time.perf_counter()
    sde = sde_of(score_fn, sde, "elbo")
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a tensor [B, ...], got {type(x).__name__}")
    check_data(sde, x)
    x = x.to(time_dtype(x.dtype))       # half-precision data: the estimate in float32
    nonfinite = check_nonfinite_mode(nonfinite)
    max_rows = check_max_rows(max_rows)
    n_t = _positive_int(n_t, "n_t", 2)
    estimator = _check_name(estimator, ESTIMATORS, "estimator")
    if divergence is None:
        divergence = "stein" if estimator == "dsm" else "auto"
    if divergence == "auto" and estimator == "ism":
        divergence = resolve_divergence("auto", x[0].numel() if len(x) else 0)
    divergence = _check_name(divergence, DIVERGENCES, "divergence")
    noise = _check_name(noise, NOISES, "noise")
    probes = _positive_int(probes, "probes")
    if estimator == "dsm" and divergence != "stein":
        raise ValueError(f"estimator='dsm' takes the divergence by Stein's identity on the transition "
                         f"(divergence='stein'); divergence={divergence!r} applies to estimator='ism'")
    if probes != 1 and (estimator == "dsm" or divergence == "exact"):
        raise ValueError(f"probes={probes} applies to estimator='ism' with divergence 'hutchinson' "
                         "or 'stein' only")
    if not (isinstance(eps, (int, float)) and 0 < eps < sde.T):
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")

    B, D = x.shape[0], x[0].numel()
    f64 = torch.float32 if x.device.type == "mps" else torch.float64
    dev = generator.device if generator is not None else x.device
    # times first, so the same generator gives the same t whatever the estimator
    if importance_sampling:
        t = importance_time(sde, n_t * B, eps, generator=generator, dtype=f64, device=dev).to(x.device)
        Z = importance_norm(sde, eps)
        weight = Z * sde.std(t) ** 2 / sde.diffusion(t) ** 2          # 1 / q(t)
    else:
        u = torch.rand(n_t * B, generator=generator, dtype=f64, device=dev).to(x.device)
        t = eps + (sde.T - eps) * u
        weight = torch.full_like(t, sde.T - eps)
    t = t.reshape(n_t, B)
    weight = weight.reshape(n_t, B)
    t_eps = torch.full_like(t, eps)
    a, v = sde.transition(t, t_eps)
    g2 = sde.diffusion(t) ** 2
    v = v.clamp_min(torch.finfo(f64).tiny)     # t == eps exactly: the pair's difference is then 0

    score = CountingScore(score_fn, check_finite=True)
    rows_per_draw = (2 if (estimator == "dsm" or divergence == "stein") else 1) * \
        (probes if (estimator == "ism" and divergence == "stein") else 1)
    if rows_per_draw > max_rows:
        raise ValueError(f"max_rows={max_rows} is below the {rows_per_draw} score rows one draw needs "
                         f"(Stein pairs x probes)")
    per_call = max_rows // rows_per_draw          # draws a score call holds
    bs = B if batch_size is None else batch_size
    vals = []
    with torch.no_grad():
        for i in range(0, B, bs):
            xc = x[i:i + bs]
            b = xc.shape[0]
            # draw j of point i is row j * b + i of [n_t * b]; a call takes rows [r, r + per_call),
            # its points gathered by index, so no [n_t * b, ...] copy of the data is ever made
            ac = a[:, i:i + bs].reshape(-1).to(x.dtype)
            vc = v[:, i:i + bs].reshape(-1).to(x.dtype)
            tc = t[:, i:i + bs].reshape(-1).to(x.dtype)
            parts = []
            for r in range(0, n_t * b, per_call):
                rows = slice(r, min(r + per_call, n_t * b))
                idx = torch.arange(rows.start, rows.stop, device=x.device) % b
                xr = xc[idx]
                m = expand_to(ac[rows], xr) * xr
                parts.append(_integrand(score, estimator, divergence, noise, probes, m, vc[rows], tc[rows], generator))
            vals.append(torch.cat(parts).reshape(n_t, b).to(f64))
    val = torch.cat(vals, 1)                                            # [n_t, B]
    diff_draws = -(weight * g2) * val

    T = torch.full((1,), sde.T, dtype=f64, device=x.device)
    e = torch.full((1,), eps, dtype=f64, device=x.device)
    aT, vT = (c[0] for c in sde.transition(T, e))
    drift = torch.full((B,), D * float(torch.log(aT)), dtype=f64, device=x.device)
    if prior_logp is None:
        s2 = sde.prior_std ** 2
        sq = x.to(f64).reshape(B, -1).pow(2).sum(1)
        prior_draws = (-0.5 * D * math.log(2 * math.pi * s2) - (aT ** 2 * sq + D * vT) / (2 * s2))[None]
        prior_draws = prior_draws.expand(n_t, B)
    else:
        zT = _randn((n_t,) + tuple(x.shape), x, generator)
        xT = aT.to(x.dtype) * x[None] + torch.sqrt(vT).to(x.dtype) * zT
        prior_draws = prior_logp(xT.reshape((n_t * B,) + tuple(x.shape[1:]))).reshape(n_t, B).to(f64)
    draws = prior_draws + drift[None] + diff_draws
    n_bad = finish_nonfinite("elbo", score, draws.t(), nonfinite, what="points' draws")
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    dtype = x.dtype
    return ELBOResult(
        elbo=draws.mean(0).to(dtype),
        stderr=(draws.std(0) / math.sqrt(n_t)).to(dtype),
        prior=prior_draws.mean(0).to(dtype),
        drift=drift.to(dtype),
        diffusion=diff_draws.mean(0).to(dtype),
        draws=draws.to(dtype),
        nfe=score.calls,
        evaluations=n_t * rows_per_draw,
        seconds=time.perf_counter() - start,
        nonfinite=n_bad,
    )


def gaussian_decoder_logp(k: Tensor, x_eps: Tensor, sde: SDE, eps: float, levels: int,
                          data_range=(-1.0, 1.0)) -> Tensor:
    r"""log P(k | x_eps) of the Gaussian decoder at eps, summed over dimensions: ``[B]``.

    The levels sit at c_k = lo + (hi - lo) k / (L - 1) (the plain scaling of ``data.images``);
    the decoder is N(x_eps / alpha_eps, (sigma_eps / alpha_eps)^2 I) integrated over each level's
    bin [c_k - h, c_k + h], h = (hi - lo) / (2 (L - 1)), the end bins open to -+inf (Ho et al.
    2020, eq. 13).  Computed as a difference of normal CDFs in float64 with log-space tails.
    """
    lo, hi = (float(r) for r in data_range)
    e = torch.tensor([float(eps)], dtype=torch.float64, device=x_eps.device)
    al, sg = float(sde.mean_coef(e)), float(sde.std(e))
    mu = x_eps.to(torch.float64) / al
    tau = sg / al
    kf = k.to(torch.float64)
    width = (hi - lo) / (levels - 1)
    c = lo + width * kf
    upper = (c + 0.5 * width - mu) / tau
    lower = (c - 0.5 * width - mu) / tau
    upper = torch.where(kf >= levels - 1, torch.full_like(upper, math.inf), upper)
    lower = torch.where(kf <= 0, torch.full_like(lower, -math.inf), lower)
    # log(Phi(u) - Phi(l)) stably: reflect so the bin lies on the side where the CDF is small
    flip = (lower + upper) > 0
    u2 = torch.where(flip, -lower, upper)
    l2 = torch.where(flip, -upper, lower)
    log_u = torch.special.log_ndtr(u2)
    log_l = torch.special.log_ndtr(l2)
    logp = log_u + torch.log1p(-torch.exp((log_l - log_u).clamp(max=0.0)))
    return logp.reshape(k.shape[0], -1).sum(1)
