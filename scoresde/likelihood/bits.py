r"""Bits/dim of discrete data: uniform dequantization (or a Gaussian decoder) on top of the
probability-flow ODE's log-likelihood (:func:`scoresde.likelihood.log_likelihood`) or the ELBO
(:func:`scoresde.likelihood.elbo`), with the scaling's log-determinant made explicit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..sde import SDE, ScoreFn
from .elbo import elbo, gaussian_decoder_logp
from .ode import _check_name, log_likelihood

Tensor = torch.Tensor

__all__ = ["bits_per_dim", "BitsPerDimResult"]


@dataclass
class BitsPerDimResult:
    """What ``bits_per_dim`` returns.

    Attributes:
        bpd: ``[B]`` bits/dim, averaged over the dequantization repeats.
        stderr: ``[B]`` standard error over repeats (``repeats > 1`` only, else None).
        logp: ``[R, B]`` log-density (nats) of each dequantized copy in the model's data space.
        log_det: the scaling term D log((hi - lo) / levels) in nats per sample.
        nfe: score_fn evaluations; seconds: wall time.
        divergence: the divergence that ran (the ODE's; ``"stein"`` etc. for the ELBO's ism).
        nonfinite: points with a NaN/Inf log p (``nonfinite="count"`` in ``kwargs``).
    """

    bpd: Tensor
    stderr: Optional[Tensor]
    logp: Tensor
    log_det: float
    nfe: int
    seconds: float
    divergence: str = ""
    nonfinite: int = 0


def bits_per_dim(score_fn: ScoreFn, sde: SDE, x: Tensor, *, levels: int = 256,
                 data_range: Tuple[float, float] = (-1.0, 1.0), repeats: int = 1,
                 generator: Optional[torch.Generator] = None, method: str = "ode",
                 decoder: str = "dequantize", solver: Optional[str] = None, **kwargs) -> BitsPerDimResult:
    r"""Bits/dim of discrete data under the probability-flow ODE, with uniform dequantization.

    The data are integers k in {0, ..., L - 1}^D (L = ``levels``; 256 for 8-bit images).  Each
    repeat draws u ~ U[0, 1)^D and maps k to the model's data space by

        x = lo + (hi - lo) (k + u) / L,          (lo, hi) = ``data_range``,

    so the density of the dequantized data k + u in [0, L)^D is p_x(x) ((hi - lo) / L)^D, and by
    Jensen's inequality log P(k) >= E_u log p(k + u) (Theis et al. 2016; Ho et al. 2019).  The
    reported value is the bound's estimate, averaged over the repeats,

        bpd = -( E_u[log p_eps(x)] + D log((hi - lo) / L) ) / (D log 2).

    The second term is the scaling's log-determinant (``result.log_det``).  For L = 256 and
    (lo, hi) = (-1, 1) it adds log2(256 / 2) = 7 bits/dim, and for (0, 1) it adds 8: these are
    the "offset" of score_sde_pytorch's likelihood.py (``7 - inverse_scaler(-1)``).

    Args:
        x: integer-valued data ``[B, ...]`` (any integer or float dtype, values in [0, L)).
        levels: number of discrete values per dimension.
        data_range: the interval [lo, hi] that [0, 1] maps to in the model's data space
            (``(-1, 1)`` for centred data, ``(0, 1)`` otherwise).
        repeats: dequantization draws per sample; with more than one, ``stderr`` is the standard
            error over them (it includes Hutchinson noise if any).
        generator: draws the dequantization noise and the Hutchinson probes.
        method: ``"ode"`` (log p_eps by the probability-flow ODE, ``log_likelihood``) or
            ``"elbo"`` (its variational lower bound for the reverse SDE, ``scoresde.elbo``): the
            reported bits/dim are then an upper bound in expectation, and ``stderr`` includes the
            ELBO's Monte Carlo error (with ``repeats = 1``, the ELBO's own standard error).
        decoder: ``"dequantize"`` (the above) or ``"gaussian"``, for models trained on the
            undequantized levels c_k = lo + (hi - lo) k / (L - 1) (``data.images``' plain scaling):
            x_eps ~ N(alpha_eps c_k, sigma_eps^2 I) per repeat and

                log P(k) >= E[log P_dec(k | x_eps) + log q_eps(x_eps)] + D/2 log(2 pi e sigma_eps^2),

            with the Gaussian decoder's bin probability (``elbo.gaussian_decoder_logp``); a
            discrete probability, so there is no scaling term (``log_det = 0``, no 7/8 bits).
            Cost for a model trained *with* dequantization: its q_eps spreads each level over its
            bin (density ~ L / (hi - lo) per dim), while this bound rewards a spike of width
            sigma_eps, so it pays about log(bin / (sqrt(2 pi e) sigma_eps)) nats/dim more than the
            dequantized bound: at eps = 1e-5 on VP (sigma_eps ~ 1e-3) with 256 levels on (-1, 1),
            about 0.9 bits/dim; on VE (sigma_min = 0.01 > bin / 2) the decoder itself is lossy.
        solver: the ODE's method (``log_likelihood``'s ``method``: ``"dopri5"`` by default,
            ``"adams"``, ...), for ``method="ode"``.

            The protocol of Song et al. (2021, score_sde_pytorch's ``likelihood.py``) on a model of
            8-bit images in [lo, hi] is this function with ``levels=256``, ``data_range=(lo, hi)``
            ((-1, 1) centered, (0, 1) not), ``divergence="hutchinson"`` (one Rademacher probe per
            image per pass), ``eps=1e-5``, ``rtol = atol = 1e-5`` and ``repeats`` passes: its
            dequantized input (U + 255 img) / 256 is x above, and its offset is ``log_det``.
        **kwargs: passed to ``log_likelihood`` or ``elbo`` (divergence, probes, rtol, atol, eps,
            n_t, ``max_rows`` (the bound on the rows of one score call; repeats x points are
            chunked by it), ``nonfinite``, ...).
    """
    start = time.perf_counter()
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range!r}")
    if not torch.is_tensor(x) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a tensor of shape [B, ...], got {getattr(x, 'shape', type(x))}")
    k = x.to(torch.float64)
    if not torch.equal(k, k.round()) or k.min() < 0 or k.max() > levels - 1:
        raise ValueError(f"x must hold integers in [0, {levels - 1}] (levels={levels})")
    method = _check_name(method, ("ode", "elbo"), "method")
    decoder = _check_name(decoder, ("dequantize", "gaussian"), "decoder")
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    B, D = x.shape[0], x[0].numel()
    device = generator.device if generator is not None else x.device
    if decoder == "dequantize":
        u = torch.rand((repeats,) + tuple(x.shape), generator=generator, dtype=torch.float64, device=device)
        xq = lo + (hi - lo) * (k[None] + u.to(x.device)) / levels
        log_det = D * math.log((hi - lo) / levels)
    else:
        eps = float(kwargs.get("eps", 1e-5))
        e = torch.tensor([eps], dtype=torch.float64)
        al_e, sg_e = float(sde.mean_coef(e)), float(sde.std(e))
        z = torch.randn((repeats,) + tuple(x.shape), generator=generator, dtype=torch.float64, device=device)
        xq = al_e * (lo + (hi - lo) * k[None] / (levels - 1)) + sg_e * z.to(x.device)
        log_det = 0.0
    xq = xq.reshape((repeats * B,) + tuple(x.shape[1:])).to(dtype)
    if solver is not None:
        if method != "ode":
            raise ValueError(f"solver is the probability-flow ODE's method; method={method!r} solves none")
        kwargs["method"] = solver
    if method == "ode":
        res = log_likelihood(score_fn, sde, xq, generator=generator, **kwargs)
        logp, mc_err = res.logp, None
    else:
        res = elbo(score_fn, sde, xq, generator=generator, **kwargs)
        logp, mc_err = res.elbo, res.stderr
    logp = logp.reshape(repeats, B).to(torch.float64)
    if decoder == "gaussian":
        kr = k[None].expand((repeats,) + tuple(x.shape)).reshape((repeats * B,) + tuple(x.shape[1:]))
        dec = gaussian_decoder_logp(kr, xq, sde, eps, levels, (lo, hi)).reshape(repeats, B)
        logp = logp + dec + 0.5 * D * math.log(2 * math.pi * math.e * sg_e ** 2)
    bpd_r = -(logp + log_det) / (D * math.log(2.0))
    if repeats > 1:
        stderr = bpd_r.std(0) / math.sqrt(repeats)
    elif mc_err is not None:
        stderr = mc_err.to(torch.float64) / (D * math.log(2.0))
    else:
        stderr = None
    return BitsPerDimResult(
        bpd=bpd_r.mean(0).to(dtype),
        stderr=None if stderr is None else stderr.to(dtype),
        logp=logp,
        log_det=log_det,
        nfe=res.nfe,
        seconds=time.perf_counter() - start,
        divergence=getattr(res, "divergence", ""),
        nonfinite=int(getattr(res, "nonfinite", 0)),
    )
