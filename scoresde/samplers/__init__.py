"""Samplers for score-based generative models: one entry point, one registry, exact NFE.

>>> import torch, scoresde as sd
>>> sde, mix = sd.VPSDE(), sd.ring8()
>>> out = sd.sample(mix.score_fn(sde), sde, (500, 2), sampler="dpm_solver", steps=10,
...                 generator=torch.Generator().manual_seed(0))
>>> out.x.shape, out.nfe
(torch.Size([500, 2]), 10)

Every sampler is a function ``fn(score_fn, sde, x, ctx, *, eps, **options) -> Tensor`` that
integrates from the prior draw ``x`` at ``t = T`` down to ``eps`` (time runs from 0 = data to
T = noise).  Its options are plain keyword arguments with defaults, so a config can build any
sampler through :func:`build_sampler` (``_target_: scoresde.samplers.build_sampler``).  The score
function reaches a sampler only through a counting wrapper, so ``nfe`` is the number of calls
actually made, never a formula.  Randomness comes only from the caller's ``generator``.

Names (one file per algorithm): ``"pc"`` (predictor-corrector, :mod:`.pc`), ``"ode"``
(probability-flow ODE through torchdiffeq, :mod:`.probability_flow`), ``"sde"`` (reverse-time SDE
through torchsde, :mod:`.reverse_sde`), and the few-step solvers in the scaled variables of
:mod:`scoresde.flow`: ``"dpm_solver"`` (DPM-Solver++ multistep, :mod:`.dpm_solver`), ``"unipc"``
(UniPC, :mod:`.unipc`) and ``"heun"`` (EDM's Heun, :mod:`.heun`).  Their time grids are data
(:mod:`.grids`: a name, explicit times, a saved file, or :func:`optimize_grid`'s result).  ``CountingScore`` lives in
:mod:`scoresde.score` and is re-exported here.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..device import batch_shape, device_of, sde_of
from ..score import CountingScore, NONFINITE, NonFiniteError, check_nonfinite_mode, finish_nonfinite, reraise_nonfinite
from ..sde import PRIORS, SDE, ScoreFn, check_prior, time_dtype

Tensor = torch.Tensor

__all__ = ["SampleResult", "Sampler", "sample", "build_sampler", "SAMPLERS", "PRIORS", "SAMPLE_ARGS", "register_sampler",
           "sampler_options", "SamplerContext", "CountingScore", "NONFINITE", "NonFiniteError"]


@dataclass
class SampleResult:
    """What :func:`sample` returns.

    ``x``: the samples ``[B, ...]``;  ``nfe``: the exact number of score evaluations;
    ``seconds``: wall-clock time of the sampling loop (after a CUDA synchronize);
    ``nonfinite``: the number of samples holding a NaN/Inf (always 0 under ``nonfinite="raise"``,
    which raises instead);
    ``trajectory`` ``[n_times, B, ...]`` and ``times`` ``[n_times]`` (forward time t, from T down
    to eps) when ``return_trajectory=True``, else None;  ``sampler`` and ``options``: what ran.
    """

    x: Tensor
    nfe: int
    seconds: float
    trajectory: Optional[Tensor] = None
    times: Optional[Tensor] = None
    sampler: str = ""
    options: dict = field(default_factory=dict)
    nonfinite: int = 0


class SamplerContext:
    """What every sampler gets besides its options: randomness, trajectory recording, the bar."""

    def __init__(self, generator: Optional[torch.Generator], record: bool, bar=None):
        self.generator = generator
        self.record_on = record
        self.bar = bar
        self.times: list = []
        self.states: list = []

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like ``x``, drawn from the caller's generator.

        The noise is drawn on the generator's device (so a CPU generator gives the same numbers
        whatever device the samples live on) and moved to x's device.
        """
        return self.randn(x.shape, x.dtype, x.device)

    def randn(self, shape, dtype: torch.dtype, device) -> Tensor:
        """Standard normal noise of ``shape`` on ``device``, drawn as :meth:`randn_like` draws it."""
        if self.generator is None:
            return torch.randn(tuple(shape), dtype=dtype, device=device)
        z = torch.randn(tuple(shape), generator=self.generator, dtype=dtype, device=self.generator.device)
        return z.to(device)

    def rand(self, shape, dtype: torch.dtype, device) -> Tensor:
        """Uniform [0, 1) noise of ``shape`` on ``device``, drawn on the generator's device as
        :meth:`randn` draws its normals."""
        if self.generator is None:
            return torch.rand(tuple(shape), dtype=dtype, device=device)
        return torch.rand(tuple(shape), generator=self.generator, dtype=dtype, device=self.generator.device).to(device)

    def record(self, t, x: Tensor) -> None:
        if self.record_on:
            self.times.append(torch.as_tensor(t, dtype=torch.float64).reshape(()).cpu())
            self.states.append(x.detach().clone())

    def expect_nfe(self, n: Optional[int]) -> None:
        """Tell the progress bar how many evaluations to expect (None: unknown, adaptive)."""
        if self.bar is not None:
            self.bar.total = n
            self.bar.refresh()


# name -> sampler function; filled by the submodules below
SAMPLERS: Dict[str, Callable] = {}


def register_sampler(name: str):
    """Decorator adding a sampler function to :data:`SAMPLERS` under ``name``."""

    def deco(fn):
        SAMPLERS[name] = fn
        return fn

    return deco


_COMMON = ("score_fn", "sde", "x", "ctx", "eps")

SAMPLE_ARGS = ("eps", "prior", "nonfinite")
"""Keys a sampler config may hold besides the sampler's options: :func:`sample`'s own arguments."""


def sampler_options(name: str) -> Dict[str, object]:
    """The options of sampler ``name`` with their defaults."""
    fn = _lookup(name)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.name not in _COMMON}


def _lookup(name: str) -> Callable:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {sorted(SAMPLERS)}")
    return SAMPLERS[name]


class Sampler:
    """A sampler with its options fixed; call it like :func:`sample` without ``sampler=``.

    Built by :func:`build_sampler`, which checks the name and the option names at once.  ``eps``
    and ``prior`` (:data:`SAMPLE_ARGS`, the keys a sampler config holds besides the sampler's own
    options) become the defaults of the call.
    """

    def __init__(self, name: str, **options):
        self.fn = _lookup(name)
        valid = sampler_options(name)
        unknown = sorted(set(options) - set(valid) - set(SAMPLE_ARGS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for sampler {name!r}; "
                             f"valid options: {sorted(valid)}")
        self.name = name
        self.call_defaults = {"eps": float(options.pop("eps", 1e-3)), "prior": options.pop("prior", "sde"),
                              "nonfinite": options.pop("nonfinite", "raise")}
        check_prior(self.call_defaults["prior"])
        check_nonfinite_mode(self.call_defaults["nonfinite"])
        self.options = dict(options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"Sampler({self.name!r}{', ' if opts else ''}{opts})"

    def __call__(self, score_fn: ScoreFn, sde: Optional[SDE] = None, shape=None,
                 generator: Optional[torch.Generator] = None, eps: Optional[float] = None,
                 progress: bool = False, device=None, dtype: torch.dtype = torch.float32,
                 return_trajectory: bool = False, x_init: Optional[Tensor] = None,
                 prior: Optional[str] = None, nonfinite: Optional[str] = None) -> SampleResult:
        sde = sde_of(score_fn, sde, f"sampler {self.name!r}")
        eps = self.call_defaults["eps"] if eps is None else eps
        prior = check_prior(self.call_defaults["prior"] if prior is None else prior)
        nonfinite = check_nonfinite_mode(self.call_defaults["nonfinite"] if nonfinite is None else nonfinite)
        if not 0 < eps < sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
        if shape is None:
            if x_init is None:
                raise ValueError("shape is required ([B, *data_shape], or a batch size for a score with "
                                 "data_shape) unless x_init is given")
            shape = tuple(x_init.shape)
        shape = batch_shape(shape, score_fn)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if device is None:
            device = device_of(score_fn, x_init, generator=generator)
        device = torch.device(device)
        # the solver state, times and coefficients: float32 or wider (half precision belongs to
        # the network, which ScoreModel feeds in its own dtype); the samples come back in dtype
        state_dtype = time_dtype(dtype)
        if x_init is None:
            x = sde.prior_sample(shape, generator=generator, dtype=state_dtype,
                                 device=generator.device if generator is not None else device).to(device)
        else:
            if tuple(x_init.shape) != shape:
                raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
            x = x_init.to(device=device, dtype=state_dtype)
        bar = tqdm(total=None, desc=self.name, unit="nfe", leave=False) if progress else None
        counter = CountingScore(score_fn, bar, check_finite=True)
        ctx = SamplerContext(generator, return_trajectory, bar)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            with torch.no_grad():
                if prior == "centred":
                    x = x + sde.prior_mean(counter, x)
                try:
                    out = self.fn(counter, sde, x, ctx, eps=float(eps), **self.options)
                except (AssertionError, RuntimeError, ValueError) as err:
                    # an adaptive solver fed NaN stops on its own (torchdiffeq: "underflow in dt")
                    reraise_nonfinite(f"sampler {self.name!r}", counter, err)
                    raise
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        n_bad = finish_nonfinite(f"sampler {self.name!r}", counter, out, nonfinite)
        traj = times = None
        if return_trajectory:
            traj = torch.stack(ctx.states) if ctx.states else out[None]
            times = torch.stack(ctx.times) if ctx.times else torch.tensor([eps], dtype=torch.float64)
            traj = traj.to(dtype)
        return SampleResult(out.to(dtype), counter.calls, seconds, traj, times, self.name, dict(self.options),
                            nonfinite=n_bad)


def build_sampler(name: str, **options) -> Sampler:
    """Build sampler ``name`` with its options (plain keyword arguments; see :func:`sampler_options`).

    Unknown names or options raise ValueError listing the valid ones.  This is the target a
    Hydra ``sampler`` config calls.
    """
    return Sampler(name, **options)


def sample(score_fn: ScoreFn, sde: Optional[SDE] = None, shape=None, sampler: str = "pc",
           generator: Optional[torch.Generator] = None, eps: float = 1e-3, progress: bool = False,
           device=None, dtype: torch.dtype = torch.float32, return_trajectory: bool = False,
           x_init: Optional[Tensor] = None, prior: str = "sde", nonfinite: str = "raise",
           **options) -> SampleResult:
    """Draw samples of shape ``shape`` by integrating the reverse process from T down to ``eps``.

    Args:
        score_fn: ``score_fn(x, t) -> Tensor`` with ``x [B, ...]`` and ``t [B]``.
        sde: the forward SDE (its prior gives the starting noise); default ``score_fn.sde`` where
            the score carries one (a loaded model does); a different one warns naming both.
        shape: ``[B, ...]``, the shape of the returned samples, or a batch size ``B`` alone for a
            score that carries ``data_shape`` (a loaded model); anything else is a ValueError.
        sampler: a name from :data:`SAMPLERS`; ``options`` are its keyword arguments.
        generator: the only source of randomness (prior draw and every noise); the same seed
            gives the same samples.  The noise is drawn on the generator's device and moved to
            the samples' device: a CPU generator (the default way) gives the same samples on every
            device, up to the device's arithmetic; a generator on the sampling device (e.g.
            ``torch.Generator("cuda")``) avoids the copies and is reproducible on that device
            only.
        eps: the smallest time reached (Song et al.: 1e-3).
        progress: show a tqdm bar counting score evaluations.
        device: where the samples live; default: the score's device when it is (or wraps) a
            module with parameters, else ``x_init``'s, else the generator's, else the CPU.
        dtype: the samples' dtype.  The solver's state, times and coefficients stay float32 or
            wider (float16/bfloat16 run in float32 and are cast at the end); half precision
            belongs to the network (a bf16 :class:`~scoresde.ScoreModel` casts its input).
        return_trajectory: also return the states along the way (``.trajectory``, ``.times``).
        x_init: start from this prior draw instead of drawing one.
        prior: ``"sde"`` (the SDE's N(0, prior_std^2)) or ``"centred"``: the same draw shifted by
            :meth:`SDE.prior_mean <scoresde.sde.SDE.prior_mean>`, Tweedie's estimate of p_T's mean
            (one more score evaluation, counted in ``nfe``).  The SDE prior's mean 0 is not p_T's
            (alpha_T E[x_0]); the probability flow keeps that offset down to the data while the
            reverse SDE contracts it, so ``"centred"`` matters for the ODE samplers when the
            data's mean is far from 0, as for one class of a class-conditional model
            (``benchmarks/results/guidance.md``).  With ``x_init`` the shift is added to it.

        nonfinite: ``"raise"`` (default): a NaN/Inf in the state or the score raises
            :class:`~scoresde.score.NonFiniteError` naming the sampler, the score evaluation and
            its t; ``"count"``: keep going and report the number of non-finite samples in
            ``.nonfinite``.  The check costs two reductions an evaluation and one host sync at the
            end, none per step.  An adaptive solver (``"ode"`` with dopri5) cannot step on a NaN
            error norm: it raises NonFiniteError under either option.

    Returns:
        :class:`SampleResult` with ``.x``, ``.nfe``, ``.seconds``, ``.nonfinite`` and optionally
        the trajectory.
    """
    return build_sampler(sampler, **options)(score_fn, sde, shape, generator=generator, eps=eps,
                                             progress=progress, device=device, dtype=dtype,
                                             return_trajectory=return_trajectory, x_init=x_init, prior=prior,
                                             nonfinite=nonfinite)


# the registry is filled as the sampler modules are imported
from . import grids  # noqa: E402,F401
from . import pc, probability_flow, reverse_sde, dpm_solver, unipc, heun, ipndm  # noqa: E402,F401
from .probability_flow import integrate_probability_flow  # noqa: E402
from .grids import GridResult, load_grid, optimize_grid, save_grid  # noqa: E402

__all__ += ["integrate_probability_flow", "optimize_grid", "save_grid", "load_grid", "GridResult"]
