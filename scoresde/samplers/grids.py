r"""Time grids as data: named, explicit, saved to a file, or optimised for one sampler.

Every fixed-step sampler (``pc``, ``dpm_solver``, ``unipc``, ``heun``, ``ipndm`` and the fixed-grid
methods of ``ode``) takes ``grid=`` as

* a name of :data:`scoresde.flow.GRIDS` (``"logsnr"``, ``"karras"``, ``"time_uniform"``, ...);
* an explicit 1-d tensor or sequence of forward times t_0 = T > t_1 > ... > t_N = eps, with
  N the sampler's number of grid steps (``steps``; ``steps - 1`` for ``denoise=True``, whose last
  evaluation is D(x~, eps) itself; see :func:`grid_steps_of`);
* the path of a grid file written by :func:`save_grid` (``.json`` or ``.pt``), so that a sampler
  config names it: ``sampler.grid=path/to/grid.json``;
* the result of :func:`optimize_grid` (anything with a ``.grid`` tensor).

:func:`resolve_grid` turns each form into the float64 tensor the sampler steps on and checks it
(:func:`check_grid`): one dimension, finite, N + 1 points, first = T and last = eps (up to 1e-9
relative, then set exactly), strictly decreasing (so every time lies in [eps, T]).  Each
failure raises ValueError naming it.

**Optimised grids** (:func:`optimize_grid`).  The objective is the sampler's global error against
the probability-flow ODE solved accurately from the same prior noise,

    L(t_1, ..., t_{N-1}) = E_z |x_sampler(z; grid) - x_ODE(z)|^2 / dim,

estimated on a batch of ``n`` prior draws z (x_ODE by dopri5 at rtol = atol = ``ref_tol``, in
log sigma~).  That is the quantity Xue et al. (2024, "Accelerating Diffusion Sampling with
Optimized Time Steps", CVPR) bound and minimise step by step; here it is minimised as a whole,
as Watson et al. (2021, "Learning Fast Samplers for Diffusion Models by Differentiating Through
Sample Quality") do for a sample-quality loss, but without gradients: the few-step solvers keep
their coefficients as Python floats, and with at most a few dozen free times a direct search
costs little next to the reference solve.  The interior times are parameterised as a monotone
map of unconstrained numbers theta (theta_0 = 0 fixed):

    lambda_i = lambda(T) + (lambda(eps) - lambda(T)) sum_{j <= i} softmax(theta)_j,
    t_i = t(lambda_i),

increments in the log-SNR lambda = -log sigma~ (so every grid of N steps from T to eps is
reachable and every theta gives one), and theta is searched by compass search (Kolda, Lewis &
Torczon 2003, "Optimization by Direct Search", Sec. 3: try +-delta along each coordinate, keep an
improvement, halve delta when none), which never accepts a worse grid.  ``.loss`` holds the best
loss after each sweep; ``.nfe`` every score evaluation spent (the reference solve included), to
be reported apart from the sampler's own NFE.  The batch of z should not be the one a benchmark
evaluates on (draw it from its own generator).

The path error is a proxy for the distribution's: it lowered the mode-by-mode W2 in most cells
of benchmarks/results/fewstep.md (5 NFE on ring8: 1.7x the floor against 3.0x on the best named
grid), but not in every one (aniso16, 5 NFE, UniPC bh2: 3.7x against 3.1x on time_quadratic).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ..flow import GRIDS, time_grid
from ..score import CountingScore
from ..sde import SDE, ScoreFn

Tensor = torch.Tensor

# what ``grid=`` accepts: a name of GRIDS, a grid file's path, explicit times, a GridResult
GridLike = Union[str, os.PathLike, Sequence[float], Tensor, Any]

__all__ = ["GridLike", "GRID_FILE_SUFFIXES", "check_grid", "resolve_grid", "save_grid", "load_grid",
           "grid_meta", "grid_steps_of", "GridResult", "optimize_grid", "GRID_SAMPLERS"]

GRID_FILE_SUFFIXES = (".json", ".pt")
_FORMAT = "scoresde.grid"


def check_grid(grid, n_steps: int, T: float, eps: float) -> Tensor:
    """``grid`` as a float64 tensor of ``n_steps + 1`` times from T (the sampler's start time,
    ``t_start`` where it is not T) down to eps, or ValueError.

    The ends must equal T and eps to 1e-9 relative (or 4 rounding units of a float32 tensor's
    dtype); they are then set to exactly T and eps, so a grid read back from text or given in
    float32 steps to the sampler's own ends.
    """
    tol = 1e-9
    if torch.is_tensor(grid) and grid.is_floating_point():
        tol = max(tol, 4 * torch.finfo(grid.dtype).eps)
    try:
        g = torch.as_tensor(list(grid) if not torch.is_tensor(grid) else grid, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"grid must be a name {list(GRIDS)}, a grid file or a 1-d sequence of times; "
                         f"got {type(grid).__name__} ({err})") from None
    g = g.detach().clone()
    if g.dim() != 1:
        raise ValueError(f"grid must be 1-d (times from T down to eps), got shape {list(g.shape)}")
    if g.shape[0] != n_steps + 1:
        raise ValueError(f"grid has {g.shape[0]} times, the sampler takes {n_steps} steps on it: "
                         f"it needs {n_steps + 1} (steps + 1, T first and eps last)")
    if not torch.isfinite(g).all():
        raise ValueError("grid has non-finite times")
    if abs(float(g[0]) - T) > tol * max(1.0, abs(T)):
        raise ValueError(f"grid must start at T = {T} (the sampler's start time: t_start where given), "
                         f"starts at {float(g[0])!r}")
    if abs(float(g[-1]) - eps) > tol * max(abs(eps), 1e-300):
        raise ValueError(f"grid must end at eps = {eps}, ends at {float(g[-1])!r} "
                         "(the sampler's eps and the grid's last time must agree)")
    g[0], g[-1] = T, eps
    d = g[1:] - g[:-1]
    if not (d < 0).all():
        i = int(torch.nonzero(d >= 0)[0])
        raise ValueError(f"grid must be strictly decreasing: t[{i}] = {float(g[i])!r} <= "
                         f"t[{i + 1}] = {float(g[i + 1])!r}")
    return g


def _is_grid_file(grid) -> bool:
    return isinstance(grid, (os.PathLike, str)) and Path(grid).suffix in GRID_FILE_SUFFIXES


def resolve_grid(sde: SDE, grid: GridLike, n_steps: int, eps: float, rho: float = 7.0, device=None,
                 t_start: Optional[float] = None) -> Tensor:
    """The float64 grid of ``n_steps`` steps that ``grid`` (any form of the module docstring) gives.

    ``t_start`` (default T): the grid's first time, where a sampler started below T (SDEdit from
    t0) begins; a named grid spaces its rule over [eps, t_start], explicit times must start there.
    """
    t0 = float(sde.T) if t_start is None else float(t_start)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise ValueError(f"rho must be a number > 0, got {rho!r}")
    if isinstance(grid, str) and grid in GRIDS:
        return time_grid(sde, n_steps, eps, grid, rho, device=device, t_start=t0)
    if isinstance(grid, (str, os.PathLike)):
        if not _is_grid_file(grid):
            raise ValueError(f"unknown grid {str(grid)!r}; valid grids: {list(GRIDS)}, or the path of a "
                             f"grid file {list(GRID_FILE_SUFFIXES)} written by save_grid, or explicit times")
        if not Path(grid).is_file():
            raise ValueError(f"grid file {str(grid)!r} does not exist")
        grid = load_grid(grid)
    elif hasattr(grid, "grid") and not torch.is_tensor(grid):
        grid = grid.grid
    g = check_grid(grid, n_steps, t0, float(eps))
    return g if device is None else g.to(device)


# -- files -----------------------------------------------------------------------------------------
def save_grid(grid, path: Union[str, os.PathLike], meta: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``grid`` (times from T down to eps; a tensor, a sequence or a :class:`GridResult`) and
    ``meta`` (a JSON-able dict: the SDE, sampler, steps, eps, how it was made) to ``path``.

    ``.json``: ``{"format": "scoresde.grid", "grid": [...], "meta": {...}}`` with the times as
    shortest round-trip decimals (read back bit for bit); ``.pt``: the same dict through
    ``torch.save`` with the grid as a float64 tensor.
    """
    if hasattr(grid, "grid") and not torch.is_tensor(grid):
        meta = {**grid.meta, **(meta or {})}
        grid = grid.grid
    g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if g.dim() != 1 or g.shape[0] < 2:
        raise ValueError(f"a grid is a 1-d tensor of at least 2 times, got shape {list(g.shape)}")
    path = Path(path)
    if path.suffix not in GRID_FILE_SUFFIXES:
        raise ValueError(f"grid files end in {list(GRID_FILE_SUFFIXES)}, got {str(path)!r}")
    meta = dict(meta or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps({"format": _FORMAT, "grid": g.tolist(), "meta": meta}, indent=1) + "\n")
    else:
        torch.save({"format": _FORMAT, "grid": g, "meta": meta}, path)
    return path


def _read(path) -> Dict[str, Any]:
    path = Path(path)
    if path.suffix not in GRID_FILE_SUFFIXES:
        raise ValueError(f"grid files end in {list(GRID_FILE_SUFFIXES)}, got {str(path)!r}")
    data = json.loads(path.read_text()) if path.suffix == ".json" else torch.load(path, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != _FORMAT or "grid" not in data:
        raise ValueError(f"{str(path)!r} is not a grid file written by save_grid")
    return data


def load_grid(path: Union[str, os.PathLike]) -> Tensor:
    """The grid (float64 tensor) that :func:`save_grid` wrote to ``path``."""
    return torch.as_tensor(_read(path)["grid"], dtype=torch.float64)


def grid_meta(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``meta`` dict saved with the grid at ``path``."""
    return dict(_read(path).get("meta") or {})


# -- how many grid steps a sampler takes -----------------------------------------------------------
def _denoise_steps(steps: int, opts: Dict[str, Any]) -> int:
    return steps - 1 if opts.get("denoise", False) else steps


def _pc_steps(steps: int, opts: Dict[str, Any]) -> int:
    return steps - 1 if opts.get("predictor", "euler_maruyama") == "none" else steps


GRID_SAMPLERS = {"dpm_solver": _denoise_steps, "heun": _denoise_steps, "ipndm": _denoise_steps,
                 "unipc": lambda steps, opts: steps, "ode": lambda steps, opts: steps, "pc": _pc_steps}


def grid_steps_of(sampler: str, steps: int, options: Optional[Dict[str, Any]] = None) -> int:
    """The number of steps on the time grid that ``sampler`` with ``steps`` and ``options`` takes
    (its grid has that many + 1 times)."""
    if sampler not in GRID_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} takes no time grid; samplers with grid=: {sorted(GRID_SAMPLERS)}")
    return GRID_SAMPLERS[sampler](int(steps), dict(options or {}))


# -- optimised grids -------------------------------------------------------------------------------
@dataclass
class GridResult:
    """What :func:`optimize_grid` returns.

    ``grid``: float64 times from T down to eps (pass it, or a file saved from it, as ``grid=``);
    ``nfe``: every score evaluation the optimisation spent (``nfe_reference`` of them in the
    reference solve), not part of any sampler's NFE; ``loss``: the best mean squared error per
    coordinate after each sweep of the search (``loss[0]``: the initial grid's);
    ``initial_grid``; ``evaluations``: objective evaluations; ``meta``: what was optimised
    (saved with the grid by :func:`save_grid`).
    """

    grid: Tensor
    nfe: int
    loss: List[float]
    initial_grid: Tensor
    nfe_reference: int = 0
    evaluations: int = 0
    meta: Dict[str, Any] = field(default_factory=dict)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        return save_grid(self, path)


def _grid_of_theta(theta: Tensor, lam0: float, lam1: float, sde: SDE, T: float, eps: float) -> Tensor:
    w = torch.softmax(torch.cat([theta.new_zeros(1), theta]), 0)
    lam = lam0 + (lam1 - lam0) * torch.cat([theta.new_zeros(1), torch.cumsum(w, 0)])
    t = sde.t_from_log_snr(lam)
    t[0], t[-1] = T, eps
    return t


def optimize_grid(score_fn: ScoreFn, sde: SDE, steps: int, sampler: str = "unipc", *, data_shape: Sequence[int],
                  n: int = 512, generator: Optional[torch.Generator] = None, eps: float = 1e-3,
                  init: Optional[GridLike] = None, rho: float = 7.0, ref_tol: float = 1e-7,
                  dtype: torch.dtype = torch.float32, device=None, max_sweeps: int = 60,
                  delta: float = 0.5, min_delta: float = 1e-3, max_evaluations: int = 5000,
                  **sampler_options) -> GridResult:
    """The time grid of ``sampler`` at ``steps`` that minimises its error against the accurate
    probability-flow ODE solution from the same prior noise (see the module docstring).

    Args:
        score_fn, sde: any score function (a trained :class:`~scoresde.ScoreModel`, a mixture's
            exact score) and its SDE.
        steps: the sampler's ``steps`` (its NFE for the one-evaluation-a-step solvers).
        sampler: a sampler name of :data:`GRID_SAMPLERS`; ``sampler_options`` its other options
            (``order=3``, ``denoise=True``, ...), fixed during the search.
        data_shape: the shape of one sample (the batch is ``[n, *data_shape]``).
        n: prior draws in the batch the error is averaged over.
        generator: draws that batch (use another than the evaluation's).
        eps: the sampler's eps.
        init: the starting grid (any ``grid=`` form); None: the named grid of
            :data:`~scoresde.flow.GRIDS` with the lowest loss (the search is local, so a good
            start matters; each named grid costs one evaluation of the objective).
        ref_tol: rtol = atol of the dopri5 reference solve.
        dtype, device: of the batch (float64 for closed-form scores where it is cheap).
        max_sweeps, delta, min_delta, max_evaluations: the compass search: start step ``delta`` in
            theta, stop below ``min_delta``, after ``max_sweeps`` sweeps or ``max_evaluations``.

    Returns:
        :class:`GridResult` (``.grid``, ``.nfe``, ``.loss``).
    """
    from . import build_sampler, integrate_probability_flow

    if "grid" in sampler_options or "steps" in sampler_options:
        raise ValueError("optimize_grid sets the sampler's grid and steps itself; pass steps as an argument")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    n_grid = grid_steps_of(sampler, steps, sampler_options)
    if n_grid < 1:
        raise ValueError(f"{sampler} with steps={steps} and {sampler_options} has no grid step to optimise")
    run = build_sampler(sampler, steps=int(steps), **sampler_options)  # checks the options' names
    T = float(sde.T)
    shape = (int(n),) + tuple(int(s) for s in data_shape)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    z = sde.prior_sample(shape, generator=generator, dtype=dtype,
                         device=generator.device if generator is not None else device).to(device)
    counter = CountingScore(score_fn)
    with torch.no_grad():
        ref, _ = integrate_probability_flow(counter, sde, z, T, float(eps), rtol=ref_tol, atol=ref_tol)
    nfe_ref = counter.calls
    dim = math.prod(shape[1:])

    lam_ends = sde.log_snr(torch.tensor([T, float(eps)], dtype=torch.float64))
    lam0, lam1 = float(lam_ends[0]), float(lam_ends[1])
    evals = 0

    def theta_of(grid: Tensor) -> Tensor:
        lam = sde.log_snr(grid)
        inc = (lam[1:] - lam[:-1]) / (lam1 - lam0)
        return torch.log(inc[1:] / inc[0])  # softmax([0, theta]) gives back the grid's increments

    def loss_of(th: Tensor) -> float:
        nonlocal evals
        evals += 1
        grid = _grid_of_theta(th, lam0, lam1, sde, T, float(eps))
        if not (grid[1:] < grid[:-1]).all():  # increments below rounding: not a grid
            return math.inf
        run.options["grid"] = grid
        out = run(counter, sde, shape, eps=eps, device=device, dtype=dtype, x_init=z)
        err = float(((out.x - ref) ** 2).sum() / (n * dim))
        return err if math.isfinite(err) else math.inf

    starts = [init] if init is not None else list(GRIDS)
    best, theta, g0 = math.inf, None, None
    for start in starts:
        g = resolve_grid(sde, start, n_grid, eps, rho)
        th = theta_of(g)
        val = loss_of(th)
        if theta is None or val < best:
            best, theta, g0, init_name = val, th, g, start if isinstance(start, str) else "explicit"
    history = [best]
    step = float(delta)
    for _ in range(int(max_sweeps)):
        if step < min_delta or evals >= max_evaluations or theta.numel() == 0:
            break
        improved = False
        for k in range(theta.numel()):
            for sgn in (1.0, -1.0):
                if evals >= max_evaluations:
                    break
                trial = theta.clone()
                trial[k] += sgn * step
                val = loss_of(trial)
                if val < best:
                    theta, best, improved = trial, val, True
                    break
        history.append(best)
        if not improved:
            step *= 0.5
    grid = _grid_of_theta(theta, lam0, lam1, sde, T, float(eps))
    meta = dict(sampler=sampler, steps=int(steps), options={k: v for k, v in sampler_options.items()},
                sde=type(sde).__name__, T=T, eps=float(eps), n=int(n), ref_tol=ref_tol,
                init=init_name, loss=best, initial_loss=history[0],
                nfe=counter.calls, method="compass search on softmax increments of log-SNR")
    return GridResult(grid, counter.calls, history, g0, nfe_ref, evals, meta)
