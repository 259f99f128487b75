r"""Editing: SDEdit, the probability-flow encoder and decoder, and latent interpolation.

**SDEdit** (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic
Differential Equations", ICLR, Alg. 1).  A guide g (a coarse stroke image, a blurred digit, a
photograph to restyle) is noised by the forward SDE to a time t0 and the reverse process runs
from there:

    x_t0 = alpha(t0) g + sigma(t0) z,   z ~ N(0, I),     then reverse from t0 down to eps.

t0 trades faithfulness (small t0: the edit stays near g) against realism (large t0: the edit is a
sample of the data; at t0 = T it has forgotten g up to alpha(T) g, 0.0066 g for VP).  What the
edit's law is depends on the reverse process:

* with a **stochastic** sampler (``"sde"``, ``"pc"``) and the exact score, the edit is drawn
  from p(x0 | x_t0), so its law is the posterior averaged over the noised guide,
  int N(x_t0; alpha g, sigma^2 I) p(x0 | x_t0) dx_t0 (for a Gaussian mixture p(x0 | x_t0) is a
  mixture in closed form: :meth:`scoresde.GaussianMixture.posterior_sample`);
* with the **probability-flow ODE** or a few-step solver (``"ode"``, ``"dpm_solver"``, ``"unipc"``,
  ``"heun"``, ``"ipndm"``) the edit is a deterministic function of x_t0, the flow map from t0 to
  eps: its law is the push-forward of N(alpha g, sigma^2 I) through the flow, *not* the posterior
  above.  For Gaussian data N(mu, C) the flow is affine, x0 = mu + A (x_t0 - alpha mu) with
  A = C^1/2 (alpha^2 C + sigma^2 I)^-1/2, so the edits are
  N(mu + alpha A (g - mu), sigma^2 C (alpha^2 C + sigma^2 I)^-1): narrower than the posterior's
  spread, and pulled less far towards the data (tests/test_edit.py checks both laws).

Every sampler of :func:`scoresde.sample` runs from t0 through its ``t_start`` (one loop a sampler,
T by default); ``steps`` counts the steps from t0 down to eps, and each grid maps onto [eps, t0]:
``pc`` takes ``steps`` equal steps in t, ``sde`` equal steps of (t0 - eps) / steps, the fixed-grid
``ode`` methods equal steps of their time variable (log sigma~ by default), the adaptive ones pick
their own, and ``dpm_solver``, ``unipc``, ``heun``, ``ipndm`` space their named grid's rule
(``vp_quadratic``, ``logsnr``, ...) over [eps, t0] (explicit grids must start at t0).
``mask`` edits a region only (SDEdit's stroke-and-mask editing): where ``mask`` is False the edit
keeps the guide, through the ``projection`` score of :mod:`scoresde.inverse` for a mask
operator (the observed pixels follow a diffusion of the guide's, the others see the prior's score
at the joint state), and the kept pixels equal the guide exactly at the end.

**The probability-flow encoder** (Song et al. 2021, Sec. 4.3).  The ODE dx/dt = f x - 1/2 g^2
score is a bijection between x at eps and its latent z at T, uniquely identifiable (a function of
the data and the score only) and exactly invertible up to the solver's error: :func:`encode`
integrates from eps up to T, :func:`decode` from T down to the same eps.  Solvers: any torchdiffeq
method (``dopri5`` at ``rtol = atol``; fixed-grid methods at ``steps``), and the multistep solvers
in the scaled variables of :mod:`scoresde.flow` run towards the noise, ``"ddim"`` (first order:
the DDIM inversion diffusers users run, which is Euler's method in sigma~ and DPM-Solver++'s first
order) and ``"dpm_solver"`` (DPM-Solver++(2M) with ``order=2``), on the reversed grid of
:func:`scoresde.flow.time_grid`; decode them with ``sampler="dpm_solver"`` at ``order=1`` or 2 on
the same grid.  The round trip's error at each solver and tolerance is measured in
benchmarks/results/edit.md.

**Interpolation** (:func:`interpolate`): encode two inputs, interpolate the latents spherically
(slerp of the directions with the norm interpolated linearly, so the path keeps the norm a prior
draw has, where the straight line between two draws would pass through low-norm latents the
decoder never sees), decode.

>>> import torch, scoresde as sd
>>> sde, mix = sd.VPSDE(), sd.ring8()
>>> g = torch.Generator().manual_seed(0)
>>> out = sd.edit.sdedit(mix.score_fn(sde), sde, torch.zeros(4, 2), 0.5, sampler="sde", steps=100, generator=g)
>>> out.x.shape, out.nfe
(torch.Size([4, 2]), 100)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from .flow import Denoiser, time_grid
from .samplers import SampleResult, sample
from .samplers.probability_flow import ADAPTIVE_METHODS, integrate_probability_flow
from .score import CountingScore
from .sde import SDE, ScoreFn, expand_to

Tensor = torch.Tensor

__all__ = ["EditResult", "EncodeResult", "InterpolationResult", "sdedit", "encode", "decode", "interpolate",
           "slerp", "MaskedGuide", "ENCODE_SOLVERS"]

ENCODE_SOLVERS = ("ddim", "dpm_solver")
"""The multistep encoders of :func:`encode` besides torchdiffeq's methods."""

# the default accuracy of encode / decode: dopri5 at rtol = atol = 1e-6 in log sigma~, the round trip
# within 1e-4 relative on a mixture and on a small network (tests/test_edit.py); on the digits U-Net
# 3.5e-5 mean and 1.6e-4 at most over 16 digits, where 1e-7 gives 1.5e-5 at most for 1.6x the NFE
# and the samplers' default 1e-5 gives 1.9e-3 mean (benchmarks/results/edit.md)
DEFAULT_TOL = 1e-6


@dataclass
class EditResult(SampleResult):
    """What :func:`sdedit` returns: a :class:`~scoresde.samplers.SampleResult` (``.x``, ``.nfe``,
    ``.seconds``, ...) plus ``x_t0``, the noised guide the reverse process started from, and
    ``t0``."""

    x_t0: Optional[Tensor] = None
    t0: float = 0.0


@dataclass
class EncodeResult:
    """What :func:`encode` returns: ``z`` the latents at T; ``nfe`` the exact score evaluations;
    ``seconds``; ``solver`` and ``options`` (what ran); ``eps`` the time the encoding started at
    (where :func:`decode` must stop)."""

    z: Tensor
    nfe: int
    seconds: float
    solver: str = ""
    options: dict = field(default_factory=dict)
    eps: float = 1e-3


@dataclass
class InterpolationResult(SampleResult):
    """What :func:`interpolate` returns: ``x`` ``[B, n, ...]`` (row b interpolates pair b, column 0
    decodes x_a, column n - 1 decodes x_b), ``z`` the latents ``[B, n, ...]``, ``weights`` the
    ``n`` interpolation weights in [0, 1]; ``nfe`` counts the encoding's and the decoding's."""

    z: Optional[Tensor] = None
    weights: Optional[Tensor] = None


def _check_t0(sde: SDE, t0: float, eps: float) -> float:
    try:
        t0 = float(t0)
    except (TypeError, ValueError):
        raise TypeError(f"t0 must be a number, got {type(t0).__name__}") from None
    if not (math.isfinite(t0) and eps < t0 <= sde.T):
        raise ValueError(f"t0 must lie in (eps={eps}, T={sde.T}], got {t0}")
    return t0


def _check_x(x, name: str) -> Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a tensor [B, ...], got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape [B, ...] with B >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _randn(shape, generator: Optional[torch.Generator], dtype, device) -> Tensor:
    """Standard normals drawn on the generator's device (the same numbers whatever ``device``)."""
    if generator is None:
        return torch.randn(tuple(shape), dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device).to(device)


# -- SDEdit ------------------------------------------------------------------------------------------
class MaskedGuide:
    """The score of a region edit: the prior's score where ``mask`` is True, the guide's diffusion
    where it is False,

        s~(x, t) = m * s(x, t) - (1 - m) * (x - alpha(t) g) / sigma(t)^2,

    which is the ``projection`` wrapper of :mod:`scoresde.inverse` for the mask operator that
    observes the kept pixels (noiseless, y = g there): the kept pixels follow a diffusion of the
    guide's own, x_t = alpha g + sigma z, along one continuous path, the edited ones see the
    prior's score at the joint state (so they are drawn to fit the kept ones, as far as the score
    knows them).  ``mask`` broadcasts against x (``[B, ...]`` or one ``[...]`` for every sample).
    """

    def __init__(self, score_fn: ScoreFn, sde: SDE, guide: Tensor, mask: Tensor):
        self.score_fn, self.sde, self.guide = score_fn, sde, guide
        self.keep = (~mask).to(guide.dtype)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        s = self.score_fn(x, t)
        alpha, sigma = self.sde.mean_coef(t.to(torch.float64)), self.sde.std(t.to(torch.float64))
        a, s2 = expand_to(alpha.to(x.dtype), x), expand_to((sigma ** 2).to(x.dtype), x)
        keep = self.keep.to(device=x.device, dtype=x.dtype)
        return s - keep * (s + (x - a * self.guide.to(x.device, x.dtype)) / s2)


def _check_mask(mask, x: Tensor) -> Tensor:
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = edit, False = keep the guide), got "
                        f"{type(mask).__name__ if not torch.is_tensor(mask) else mask.dtype}")
    if tuple(mask.shape) not in (tuple(x.shape), tuple(x.shape[1:])):
        raise ValueError(f"mask must have the guide's shape {tuple(x.shape)} or one sample's "
                         f"{tuple(x.shape[1:])}, got {tuple(mask.shape)}")
    return mask.to(x.device)


def sdedit(score_fn: ScoreFn, sde: SDE, x_guide: Tensor, t0: float, sampler: str = "sde",
           generator: Optional[torch.Generator] = None, mask: Optional[Tensor] = None, *,
           eps: float = 1e-3, progress: bool = False, return_trajectory: bool = False,
           **options) -> EditResult:
    """SDEdit (Meng et al. 2022, Alg. 1): noise each guide to t0, run the reverse process to eps.

    Args:
        score_fn: ``score_fn(x, t)``: a network, a mixture's exact score, a guided score
            (:mod:`scoresde.guidance`: a class-conditional edit).
        sde: the forward SDE.
        x_guide: the guides ``[B, ...]`` (one edit each; repeat a guide for several edits of it).
        t0: the starting time in (eps, T]: x_t0 = alpha(t0) g + sigma(t0) z.
        sampler: any :func:`scoresde.sample` sampler; ``options`` its options (``steps`` counts
            the steps from t0 down to eps; see the module docstring for each grid).  The
            stochastic ones draw from the posterior p(x0 | x_t0); the ODE ones map x_t0 through
            the flow (a different law: module docstring).
        generator: the only source of randomness (z first, then the sampler's noise).
        mask: optional bool ``[B, ...]`` or ``[...]``: True where to edit; elsewhere the edit
            keeps the guide (:class:`MaskedGuide`; the kept pixels equal the guide exactly).
        eps: the time the reverse process stops at.

    Returns:
        :class:`EditResult`: ``.x`` the edits, ``.nfe`` the exact score evaluations, ``.x_t0``.
    """
    x_guide = _check_x(x_guide, "x_guide")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    t0 = _check_t0(sde, t0, eps)
    fn = score_fn
    if mask is not None:
        mask = _check_mask(mask, x_guide)
        fn = MaskedGuide(score_fn, sde, x_guide, mask)
    alpha, sigma = sde.coefs(t0, dtype=torch.float64)
    z = _randn(x_guide.shape, generator, x_guide.dtype, x_guide.device)
    x_t0 = float(alpha) * x_guide + float(sigma) * z
    out = sample(fn, sde, tuple(x_guide.shape), sampler=sampler, generator=generator, eps=eps, progress=progress,
                 device=x_guide.device, dtype=x_guide.dtype, return_trajectory=return_trajectory, x_init=x_t0,
                 t_start=t0, **options)
    x = out.x
    if mask is not None:
        x = torch.where(mask, x, x_guide)  # the kept pixels are the guide's, to the last bit
    return EditResult(x, out.nfe, out.seconds, out.trajectory, out.times, out.sampler, out.options,
                      x_t0=x_t0, t0=t0)


# -- the probability-flow encoder --------------------------------------------------------------------
def _multistep(score_fn, sde: SDE, x: Tensor, t: Tensor, order: int) -> Tensor:
    """DPM-Solver++ multistep of order 1 (DDIM) or 2 (2M) along the times ``t`` in either direction
    (increasing: encoding), in x~ = x / alpha with h = lambda_{i+1} - lambda_i:

        x~_{i+1} = e^{-h} x~_i - phi_1 D_i - (phi_1 / 2) (D_i - D_{i-1}) / r_0,   phi_1 = expm1(-h),

    the second term from the second step on (order 2), r_0 = h_{i-1} / h; the last step is first
    order as in :func:`scoresde.samplers.dpm_solver.dpm_solver` (``lower_order_final``): the
    decoder's scheme on the reversed grid (not its exact inverse: the round trip's error is the
    two discretisation errors, which shrink with the steps).  Order 1 is DDIM's inversion, each
    step x~' = D + (sigma~' / sigma~) (x~ - D), Euler's method in sigma~.  NFE = len(t) - 1.
    """
    den = Denoiser(score_fn, sde, t, x)
    lam = den.log_snr
    n = len(den) - 1
    xt = den.scale(x, 0)
    D_prev, h_prev = None, None
    for i in range(n):
        D = den(xt, i)
        h = lam[i + 1] - lam[i]
        phi1 = math.expm1(-h)
        new = torch.add(xt * math.exp(-h), D, alpha=-phi1)
        if order == 2 and D_prev is not None and i < n - 1:
            c = -0.5 * phi1 / (h_prev / h)
            new.add_(D, alpha=c).add_(D_prev, alpha=-c)
        xt, D_prev, h_prev = new, D, h
    return den.unscale(xt, n)


def encode(score_fn: ScoreFn, sde: SDE, x: Tensor, *, method: str = "dopri5", rtol: float = DEFAULT_TOL,
           atol: float = DEFAULT_TOL, steps: Optional[int] = None, order: int = 2, grid: str = "vp_quadratic",
           time_variable: str = "log_sigma", eps: float = 1e-3) -> EncodeResult:
    """The latents z at T of ``x`` (taken as the state at ``eps``) through the probability-flow ODE.

    Args:
        score_fn, sde: the score and its SDE.
        x: ``[B, ...]``.
        method: a torchdiffeq method (adaptive: ``rtol``/``atol``; fixed-grid: ``steps`` equal
            steps of ``time_variable``, default 100), or ``"ddim"`` / ``"dpm_solver"`` (order
            ``order``, 1 or 2): ``steps`` (default 50) multistep steps on the reversed named
            ``grid`` of :func:`scoresde.flow.time_grid` (decode with ``sampler="dpm_solver"``,
            the same ``steps``, ``order`` and ``grid``).
        eps: the start time; :func:`decode` must stop at the same eps for a round trip.

    Returns:
        :class:`EncodeResult` with ``.z`` and ``.nfe``.
    """
    x = _check_x(x, "x")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    counter = CountingScore(score_fn)
    start = time.perf_counter()
    with torch.no_grad():
        if method in ENCODE_SOLVERS:
            order = 1 if method == "ddim" else order
            if order not in (1, 2):
                raise ValueError(f"order must be 1 or 2 for the multistep encoder, got {order}")
            n = 50 if steps is None else steps
            if int(n) != n or n < 1:
                raise ValueError(f"steps must be a positive integer, got {steps}")
            t = time_grid(sde, int(n), eps, grid).flip(0)  # eps up to T
            z = _multistep(counter, sde, x, t, order)
            opts = dict(steps=int(n), order=order, grid=grid)
        else:
            if steps is not None and method in ADAPTIVE_METHODS:
                raise ValueError(f"steps applies to fixed-grid methods, not the adaptive {method!r}")
            z, _ = integrate_probability_flow(counter, sde, x, eps, sde.T, method=method, rtol=rtol, atol=atol,
                                              steps=steps, time_variable=time_variable)
            opts = dict(rtol=rtol, atol=atol, time_variable=time_variable) if method in ADAPTIVE_METHODS else \
                dict(steps=100 if steps is None else int(steps), time_variable=time_variable)
    return EncodeResult(z, counter.calls, time.perf_counter() - start, method, opts, float(eps))


def decode(score_fn: ScoreFn, sde: SDE, z: Tensor, *, sampler: str = "ode", eps: float = 1e-3,
           generator: Optional[torch.Generator] = None, **options) -> SampleResult:
    """x at ``eps`` from latents ``z`` at T: :func:`scoresde.sample` from ``x_init=z``.

    The default is the probability-flow ODE at :func:`encode`'s default accuracy (``dopri5``,
    rtol = atol = 1e-6, log sigma~); any sampler and options may be given (``sampler="dpm_solver",
    order=1, steps=N, grid=...`` decodes a ``"ddim"`` encoding on its grid).  A stochastic sampler
    does not invert the encoder.
    """
    z = _check_x(z, "z")
    if sampler == "ode":
        options.setdefault("rtol", DEFAULT_TOL)
        options.setdefault("atol", DEFAULT_TOL)
    return sample(score_fn, sde, tuple(z.shape), sampler=sampler, generator=generator, eps=eps,
                  device=z.device, dtype=z.dtype, x_init=z, **options)


# -- interpolation -----------------------------------------------------------------------------------
def slerp(z_a: Tensor, z_b: Tensor, w: Tensor) -> Tensor:
    """Spherical interpolation of ``z_a``, ``z_b`` ``[B, ...]`` at weights ``w`` ``[n]``: ``[B, n, ...]``.

    The directions u = z / |z| move along the great circle, u(w) = (sin((1 - w) theta) u_a +
    sin(w theta) u_b) / sin theta with cos theta = u_a . u_b, and the norm is interpolated
    linearly, |z|(w) = (1 - w) |z_a| + w |z_b|: for two prior draws (|z| ~ sqrt(D) each) every
    point has a prior draw's norm, which the straight line (norm down to |z| / sqrt 2 midway for
    orthogonal draws) does not keep.  w = 0 and 1 give z_a and z_b (to rounding).
    """
    if z_a.shape != z_b.shape:
        raise ValueError(f"the two latents must have one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    B = z_a.shape[0]
    a, b = z_a.reshape(B, -1).to(torch.float64), z_b.reshape(B, -1).to(torch.float64)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na, b / nb
    theta = torch.arccos((ua * ub).sum(1, keepdim=True).clamp(-1.0, 1.0))[:, None]  # [B, 1, 1]
    w = w.to(torch.float64)[None, :, None]                                           # [1, n, 1]
    small = theta < 1e-6  # (nearly) one direction: the chord is the arc
    st = torch.where(small, torch.ones_like(theta), torch.sin(theta))
    ca = torch.where(small, 1 - w, torch.sin((1 - w) * theta) / st)
    cb = torch.where(small, w, torch.sin(w * theta) / st)
    u = ca * ua[:, None] + cb * ub[:, None]
    norm = (1 - w) * na[:, None] + w * nb[:, None]
    out = norm * u / u.norm(dim=2, keepdim=True)
    return out.reshape((B, w.shape[1]) + tuple(z_a.shape[1:])).to(z_a.dtype)


def interpolate(score_fn: ScoreFn, sde: SDE, x_a: Tensor, x_b: Tensor, n: int, *, eps: float = 1e-3,
                encode_options: Optional[dict] = None, decode_options: Optional[dict] = None) -> InterpolationResult:
    """Decode ``n`` latents spherically between the latents of ``x_a`` and ``x_b`` ``[B, ...]``
    (:func:`slerp`; Song et al. 2021, Sec. 4.3 and Fig. 5).

    ``encode_options`` / ``decode_options`` go to :func:`encode` / :func:`decode` (defaults: dopri5
    at rtol = atol = 1e-6 both ways).  Returns :class:`InterpolationResult` with ``.x`` ``[B, n, ...]``
    whose first and last columns reproduce x_a and x_b up to the round trip's error.
    """
    x_a, x_b = _check_x(x_a, "x_a"), _check_x(x_b, "x_b")
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have one shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2 (the two end points included), got {n}")
    n, B = int(n), x_a.shape[0]
    enc = encode(score_fn, sde, torch.cat([x_a, x_b]), eps=eps, **(encode_options or {}))
    w = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    z = slerp(enc.z[:B], enc.z[B:], w)                                # [B, n, ...]
    dec = decode(score_fn, sde, z.reshape((B * n,) + tuple(x_a.shape[1:])), eps=eps, **(decode_options or {}))
    x = dec.x.reshape(z.shape)
    return InterpolationResult(x, enc.nfe + dec.nfe, enc.seconds + dec.seconds, None, None, dec.sampler,
                               {"encode": enc.options, "decode": dec.options}, z=z, weights=w)
