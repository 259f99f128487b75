"""Samplers for score-based generative models: one entry point, one registry, exact NFE.

>>> import torch, scoresde as sd
>>> sde, mix = sd.VPSDE(), sd.ring8()
>>> out = sd.sample(mix.score_fn(sde), sde, (500, 2), sampler="dpm_solver", steps=10,
...                 generator=torch.Generator().manual_seed(0))
>>> out.x.shape, out.nfe
(torch.Size([500, 2]), 10)

Every sampler is a function ``fn(score_fn, sde, x, ctx, *, eps, t_start, **options) -> Tensor``
that integrates from ``x`` at ``t_start`` (T, a prior draw, by default; an SDEdit's x_t0 at
t0 < T, :mod:`scoresde.edit`) down to ``eps`` (time runs from 0 = data to T = noise).  Its options are plain keyword arguments with defaults, so a config can build any
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

Per-item noise.  A ``torch.Generator`` gives one stream for the whole batch, so a sample depends on
its place in the batch and on the batch size.  ``generator=ItemNoise(seed, indices)`` instead
gives item ``indices[k]`` of the batch its own generator, seeded from ``(seed, index)`` alone:
its prior draw and every noise the sampler draws for it come from that stream, one row at a time,
so the set of samples is the same however the indices are split into batches, processes or
machines (bit for bit for equal batch sizes; to float rounding where the batch size changes
the kernels the score network runs).  Samplers whose arithmetic mixes the items do not keep this:
the pc sampler's Langevin corrector with ``langevin_norm="batch"`` (its step is a batch mean) is
refused, and adaptive ODE solvers (``sampler="ode"`` with dopri5 and the like) choose their steps
over the whole batch, so there a sample agrees with another batching only to the solver's
tolerance.  ``sd.sample(generator=torch.Generator())`` keeps its one stream (the pinned reference
outputs).
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
           "sampler_options", "SamplerContext", "CountingScore", "ItemNoise", "item_seed", "NONFINITE",
           "NonFiniteError"]

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def item_seed(seed: int, index: int) -> int:
    """The generator seed of item ``index`` of a run seeded ``seed`` (SplitMix64 of both, 63 bits),
    so distinct (seed, index) pairs give unrelated streams."""
    if int(seed) != seed or int(index) != index or index < 0:
        raise ValueError(f"seed must be an integer and index a non-negative integer, got {seed}, {index}")
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ int(index)) >> 1


class ItemNoise:
    """Per-item random streams for a batch: item ``indices[k]``'s numbers come from a CPU generator
    seeded by :func:`item_seed` ``(seed, indices[k])`` (see the module docstring).  Pass it as
    ``generator=`` to :func:`sample`.  Each draw takes, for each item in turn, one row of the
    item's shape per leading step, so an item's stream does not depend on how the draws are
    chunked.  The numbers are drawn on the CPU and moved to the samples' device."""

    def __init__(self, seed: int, indices: Sequence[int]):
        idx = [int(i) for i in indices]
        if not idx:
            raise ValueError("indices must be a non-empty sequence of item indices")
        self.seed, self.indices = int(seed), idx
        self.generators = [torch.Generator().manual_seed(item_seed(seed, i)) for i in idx]
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.indices)

    def _draw(self, fn, shape, dtype, batch_dim: int) -> Tensor:
        shape = tuple(int(s) for s in shape)
        if shape[batch_dim] != len(self.generators):
            raise ValueError(f"ItemNoise holds {len(self.generators)} items, the draw has a batch of "
                             f"{shape[batch_dim]} (shape {shape}, batch dimension {batch_dim})")
        lead, row = shape[:batch_dim], shape[batch_dim + 1:]
        out = torch.empty((len(self.generators),) + lead + row, dtype=dtype)
        steps = out.view((len(self.generators), -1) + row) if lead else out.unsqueeze(1)
        for j in range(steps.shape[1]):
            for k, g in enumerate(self.generators):
                steps[k, j] = fn(row, generator=g, dtype=dtype)
        return out.movedim(0, batch_dim)

    def randn(self, shape, dtype: torch.dtype = torch.float32, batch_dim: int = 0) -> Tensor:
        """Standard normals of ``shape``, item k's along ``batch_dim`` from its own stream."""
        return self._draw(torch.randn, shape, dtype, batch_dim)

    def rand(self, shape, dtype: torch.dtype = torch.float32, batch_dim: int = 0) -> Tensor:
        """Uniform [0, 1) numbers as :meth:`randn`."""
        return self._draw(torch.rand, shape, dtype, batch_dim)


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

    def __init__(self, generator, record: bool, bar=None):
        self.generator = generator          # a torch.Generator, an ItemNoise or None
        self.per_item = isinstance(generator, ItemNoise)
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

    def randn(self, shape, dtype: torch.dtype, device, batch_dim: int = 0) -> Tensor:
        """Standard normal noise of ``shape`` on ``device``, drawn as :meth:`randn_like` draws it;
        ``batch_dim``: where the batch is in ``shape`` (per-item noise draws each item's part
        from its own stream)."""
        if self.per_item:
            return self.generator.randn(shape, dtype, batch_dim).to(device)
        if self.generator is None:
            return torch.randn(tuple(shape), dtype=dtype, device=device)
        z = torch.randn(tuple(shape), generator=self.generator, dtype=dtype, device=self.generator.device)
        return z.to(device)

    def rand(self, shape, dtype: torch.dtype, device, batch_dim: int = 0) -> Tensor:
        """Uniform [0, 1) noise of ``shape`` on ``device``, drawn on the generator's device as
        :meth:`randn` draws its normals."""
        if self.per_item:
            return self.generator.rand(shape, dtype, batch_dim).to(device)
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


_COMMON = ("score_fn", "sde", "x", "ctx", "eps", "t_start")

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
                 prior: Optional[str] = None, t_start: Optional[float] = None,
                 nonfinite: Optional[str] = None) -> SampleResult:
        sde = sde_of(score_fn, sde, f"sampler {self.name!r}")
        eps = self.call_defaults["eps"] if eps is None else eps
        prior = check_prior(self.call_defaults["prior"] if prior is None else prior)
        nonfinite = check_nonfinite_mode(self.call_defaults["nonfinite"] if nonfinite is None else nonfinite)
        if not 0 < eps < sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
        t0 = float(sde.T) if t_start is None else float(t_start)
        if not eps < t0 <= sde.T:
            raise ValueError(f"t_start must lie in (eps={eps}, T={sde.T}], got {t_start}")
        if t0 < sde.T:
            if x_init is None:
                raise ValueError("t_start < T needs x_init, a draw of p_t_start (the prior is p_T's)")
            if prior != "sde":
                raise ValueError(f"prior={prior!r} shifts a draw at T; with t_start < T give x_init as it is")
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
        if isinstance(generator, ItemNoise) and len(generator) != shape[0]:
            raise ValueError(f"generator is an ItemNoise of {len(generator)} items for a batch of {shape[0]}")
        if x_init is None and isinstance(generator, ItemNoise):
            x = (generator.randn(shape, state_dtype) * sde.prior_std).to(device)     # prior_sample, item by item
        elif x_init is None:
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
                    out = self.fn(counter, sde, x, ctx, eps=float(eps), t_start=t0, **self.options)
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
           x_init: Optional[Tensor] = None, prior: str = "sde", t_start: Optional[float] = None,
           nonfinite: str = "raise",
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
            only.  An :class:`ItemNoise` gives each item its own stream from
            (seed, index), so samples do not depend on the batching (see the module docstring).
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
        t_start: start the reverse process at this time in (eps, T] instead of T (default T),
            from ``x_init``, a draw of p_t_start (SDEdit, :func:`scoresde.edit.sdedit`).  Every
            sampler's time grid then spans [eps, t_start]: ``steps`` counts the steps from
            t_start down to eps, and a named grid spaces its rule over that interval.
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
                                             t_start=t_start, nonfinite=nonfinite)


# the registry is filled as the sampler modules are imported
from . import grids  # noqa: E402,F401
from . import pc, probability_flow, reverse_sde, dpm_solver, unipc, heun, ipndm  # noqa: E402,F401
from .probability_flow import integrate_probability_flow  # noqa: E402
from .grids import GridResult, load_grid, optimize_grid, save_grid  # noqa: E402

__all__ += ["integrate_probability_flow", "optimize_grid", "save_grid", "load_grid", "GridResult"]
