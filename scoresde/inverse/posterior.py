"""The one entry point, :func:`sample_posterior`, over every method by name."""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import torch

from ..device import device_of, sde_of
from ..samplers import CountingScore, SamplerContext, sample
from ..score import NonFiniteError, RowChunkedScore, check_max_rows, check_nonfinite_mode, finish_nonfinite
from ..sde import SDE, ScoreFn
from .operators import as_operator
from .base import PosteriorResult
from .dps import dps
from .pigdm import pigdm
from .projection import projection
from .repaint import repaint
from .replacement import replacement
from .smc import smc

Tensor = torch.Tensor

__all__ = ['sample_posterior', 'METHODS', 'WRAPPERS', 'LOOPS']


WRAPPERS: Dict[str, Callable] = {"projection": projection, "dps": dps, "pigdm": pigdm}


LOOPS: Dict[str, Callable] = {"replacement": replacement, "repaint": repaint, "smc": smc}


METHODS = sorted(WRAPPERS) + sorted(LOOPS)


_WRAPPER_OPTIONS = {"projection": (), "dps": ("scale",), "pigdm": ("scale",)}


def sample_posterior(score_fn: ScoreFn, sde: Optional[SDE], op, y: Tensor, method: str = "smc",
                     sampler: Optional[str] = None, generator: Optional[torch.Generator] = None, *,
                     eps: float = 1e-3, device=None, dtype: Optional[torch.dtype] = None,
                     progress: bool = False, max_rows: Optional[int] = None, nonfinite: str = "raise",
                     **options) -> PosteriorResult:
    """Samples of p(x0 | y) for y = A x0 + noise, with the unconditional ``score_fn``.

    Args:
        score_fn: the prior's score ``score_fn(x, t)``.
        sde: its forward SDE (None: ``score_fn.sde``).
        op: a :mod:`scoresde.ops` operator (its ``noise_std`` is the observation noise) or a dense
            ``[m, D]`` matrix (noiseless).
        y: observations ``[B, *obs_shape]``, one a sample (repeat one observation B times for B
            samples of one posterior); the samples have shape ``[B, *op.input_shape(obs_shape)]``.
        method: one of :data:`METHODS` (see the module docstring).
        sampler: for the score wrappers (``projection``, ``dps``, ``pigdm``) any :func:`scoresde.sample`
            sampler (default ``"pc"``); ``replacement`` runs its own PC loop (None or ``"pc"``);
            ``repaint`` and ``smc`` run their own loops (None).
        generator: the only source of randomness.
        eps: the smallest time reached.
        device: where the samples live (default: the score's device when it is a module with
            parameters, else y's).
        max_rows: the most rows one call of ``score_fn`` sees (default
            :data:`scoresde.score.MAX_ROWS`): larger batches (particles x observations) are split
            into calls of at most this many rows.
        nonfinite: ``"raise"`` (default: :class:`~scoresde.score.NonFiniteError` naming the
            method, the evaluation and t) or ``"count"`` (``.nonfinite``: samples holding a
            NaN/Inf; what the benchmarks that measure a method's failures use).
        options: the method's options (``scale`` for dps / pigdm; replacement: predictor, corrector,
            steps, snr, corrector_steps, denoise, langevin_norm; repaint: steps, jump_length, jumps,
            denoise; smc: steps, particles, ess_threshold, grid, potential, twist_cov, moves, move_snr,
            move_kernel, pool, oversample), the rest go to the sampler.

    Returns:
        :class:`PosteriorResult`: ``.x``, ``.nfe`` (forward passes), ``.backward_passes``, ``.seconds``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {METHODS}")
    sde = sde_of(score_fn, sde, "sample_posterior")
    nonfinite = check_nonfinite_mode(nonfinite)
    score_fn = RowChunkedScore(score_fn, check_max_rows(max_rows))
    op = as_operator(op)
    if not torch.is_tensor(y) or y.dim() < 2:
        raise ValueError("y must be a tensor [B, *obs_shape] (one observation a sample)")
    if y.shape[0] == 0:
        raise ValueError(f"y must hold at least one observation (B >= 1), got shape {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError("y must be finite")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    device = torch.device(device) if device is not None else device_of(score_fn, y)
    dtype = dtype or (y.dtype if y.is_floating_point() else torch.get_default_dtype())
    y = y.to(device=device, dtype=dtype)
    shape = (y.shape[0],) + tuple(op.input_shape(tuple(y.shape[1:])))
    info: dict = {}
    if method in WRAPPERS:
        names = _WRAPPER_OPTIONS[method]
        m_opts = {k: options.pop(k) for k in names if k in options}
        wrapped = WRAPPERS[method](score_fn, sde, op, y, **m_opts)
        try:
            out = sample(wrapped, sde, shape, sampler=sampler or "pc", generator=generator, eps=eps,
                         progress=progress, device=device, dtype=dtype, nonfinite=nonfinite, **options)
        except NonFiniteError as err:
            raise NonFiniteError(f"sample_posterior method {method!r}: {err}") from None
        x, nfe, seconds, back = out.x, out.nfe, out.seconds, getattr(wrapped, "backward_passes", 0)
        n_bad = out.nonfinite
        used = dict(out.options, **m_opts)
        sampler_name = out.sampler
    else:
        if sampler not in (None, "pc") or (sampler == "pc" and method != "replacement"):
            raise ValueError(f"method {method!r} runs its own loop: sampler must be None"
                             + (" or 'pc'" if method == "replacement" else "") + f", got {sampler!r}")
        fn = LOOPS[method]
        import inspect
        valid = [p for p in inspect.signature(fn).parameters if p not in
                 ("score_fn", "sde", "op", "y", "x", "ctx", "eps", "info")]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {method!r}; valid options: {sorted(valid)}")
        from tqdm.auto import tqdm
        bar = tqdm(total=None, desc=method, unit="nfe", leave=False) if progress else None
        counter = CountingScore(score_fn, bar, check_finite=True)
        ctx = SamplerContext(generator, False, bar)
        x0 = sde.prior_sample(shape, generator=generator, dtype=dtype,
                              device=generator.device if generator is not None else device).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            extra = {"info": info} if method == "smc" else {}
            with torch.no_grad():
                x = fn(counter, sde, op, y, x0, ctx, eps=float(eps), **extra, **options)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        nfe, back, used, sampler_name = counter.calls, int(info.get("backward_passes", 0)), dict(options), method
        n_bad = finish_nonfinite(f"sample_posterior method {method!r}", counter, x, nonfinite)
    if op.noise_std == 0:
        x = op.consistent(x, y)
    return PosteriorResult(x, nfe, seconds, None, None, sampler_name, used, nonfinite=n_bad, method=method,
                           backward_passes=back, info=info)
