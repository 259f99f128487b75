"""The benchmark runner: one cell (:class:`Bench`), or a whole grid written to files (:func:`run_grid`).

For each **cell** the runner draws the prior noise z from a generator seeded by the cell's seed
and runs the sampler from z (the same z for every sampler of that problem, SDE and seed), then
records:

* ``nfe``, wall ``seconds`` (the sampler's own timer), ``sec_per_nfe``;
* ``score_seconds``: the mean time of one score evaluation in that run (timed around each call),
  and ``overhead`` = seconds / (nfe x score_seconds), the wall time over the time spent in the
  score: 1 means the sampler costs nothing beyond its evaluations.  Timing the evaluations inside
  the same run, rather than NFE x a separately timed evaluation, keeps the ratio steady on a
  shared machine, where the time of one evaluation drifts by 30% from minute to minute;
* for mixture problems, the mode-by-mode ``w2`` and ``weight_error`` (:func:`metrics.mode_w2`),
  the exact-sample floor ``w2_floor`` (:func:`metrics.exact_floor` at the same n) and their
  ratio ``w2_ratio``;
* ``sw2``: the sliced W2 (:func:`metrics.sliced_w2`) to n exact samples (mixtures) or held-out
  data (checkpoints), beside ``sw2_floor``: the same distance between two independent exact (or
  held-out and training) sets of that size, the best a sampler can score;
* for deterministic solvers of the probability-flow ODE (``ode``, ``dpm_solver``, ``unipc``,
  ``heun`` ending at eps), ``ode_err``: the mean over samples of |x - x_ref|, x_ref the solution
  from the same z by dopri5 at rtol = atol = ``ref_tol`` (1e-9) in float64, and ``ode_err_med``,
  its median.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .. import metrics
from ..samplers import build_sampler, integrate_probability_flow
from .grid import DEFAULT_SAMPLERS, DETERMINISTIC, Cell, expand_grid, specs_from_config
from .plots import write_plots
from .problems import Problem, is_checkpoint, load_problem
from .tables import write_csv, write_markdown

Tensor = torch.Tensor

__all__ = ["TimedScore", "time_score", "Bench", "write_results", "run_grid"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedScore:
    """Wraps ``score_fn`` and adds up the wall time spent inside it (synchronizing CUDA around each
    call, so on a GPU it measures the evaluations but slows a sampler that overlaps them)."""

    def __init__(self, score_fn, device: torch.device):
        self.score_fn, self.device, self.seconds, self.calls = score_fn, device, 0.0, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.score_fn(x, t)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def time_score(score_fn, x: Tensor, eps: float, T: float, repeats: int = 9) -> float:
    """Median wall time of one ``score_fn(x, t)`` call (t drawn in [eps, T]), after one warm-up."""
    g = torch.Generator().manual_seed(0)
    ts = (eps + (T - eps) * torch.rand(repeats + 1, generator=g, dtype=torch.float64)).tolist()
    out = []
    with torch.no_grad():
        for i, tt in enumerate(ts):
            t = torch.full((x.shape[0],), tt, dtype=x.dtype, device=x.device)
            _sync(x.device)
            t0 = time.perf_counter()
            score_fn(x, t)
            _sync(x.device)
            if i:
                out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _fmt_options(opts: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(opts.items()))


class Bench:
    """Runs cells; caches what cells share (problems, floors, prior draws, reference solves).

    Args:
        n: samples per cell (the batch size; overhead is meaningful from about 1,000).
        eps: the time the samplers stop at.
        device, dtype: where and in what precision the samplers run (float32 by default).
        ref_tol: rtol = atol of the float64 dopri5 reference solve.
        floor_repeats: exact-sample sets averaged for each floor.
        n_proj: projections of the sliced W2.
    """

    def __init__(self, n: int = 10_000, eps: float = 1e-3, device=None, dtype: torch.dtype = torch.float32,
                 ref_tol: float = 1e-9, floor_repeats: int = 5, n_proj: int = 256, quality: bool = True):
        if n < 2:
            raise ValueError(f"n must be at least 2, got {n}")
        self.n, self.eps, self.dtype = int(n), float(eps), dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.ref_tol, self.floor_repeats, self.n_proj = ref_tol, floor_repeats, n_proj
        self.quality = quality  # False: NFE and timings only (no reference solve, no distances)
        self.problems: Dict[str, Problem] = {}
        self._floor: Dict[str, float] = {}
        self._sw2_floor: Dict[str, float] = {}
        self._noise: Dict[Tuple[str, str, int], Tensor] = {}
        self._ref: Dict[Tuple[str, str, int], Tensor] = {}

    def problem(self, name: str) -> Problem:
        if name not in self.problems:
            self.problems[name] = load_problem(name, device=self.device if is_checkpoint(name) else None)
        return self.problems[name]

    def w2_floor(self, p: Problem) -> float:
        """metrics.exact_floor at this n (the mode-by-mode W2 of exact samples)."""
        if p.name not in self._floor:
            self._floor[p.name] = metrics.exact_floor(p.mixture, self.n, repeats=self.floor_repeats)
        return self._floor[p.name]

    def sw2_floor(self, p: Problem) -> float:
        """Mean sliced W2 between two independent exact (held-out and training) sets of size n."""
        if p.name not in self._sw2_floor:
            vals = [metrics.sliced_w2(p.exact(self.n, 100 + r, 0), p.exact(self.n, 100 + r, 1), self.n_proj,
                                      torch.Generator().manual_seed(r)) for r in range(self.floor_repeats)]
            self._sw2_floor[p.name] = float(sum(vals) / len(vals))
        return self._sw2_floor[p.name]

    def noise(self, p: Problem, sde_name: str, seed: int) -> Tensor:
        """The prior draw z of (problem, SDE, seed), in float64 on the CPU (shared by all samplers)."""
        key = (p.name, sde_name, seed)
        if key not in self._noise:
            g = torch.Generator().manual_seed(seed)
            self._noise[key] = p.sde(sde_name).prior_sample((self.n,) + p.shape, generator=g,
                                                            dtype=torch.float64)
        return self._noise[key]

    @staticmethod
    def sampler_generator(seed: int) -> torch.Generator:
        """The sampler's own noise of a cell with this seed (apart from its prior draw
        :meth:`noise`), the same for our samplers and the peers'."""
        return torch.Generator().manual_seed(1_000_003 + seed)

    def reference(self, p: Problem, sde_name: str, seed: int) -> Tensor:
        """The probability-flow ODE solution from the cell's z: dopri5, rtol = atol = ref_tol."""
        key = (p.name, sde_name, seed)
        if key not in self._ref:
            sde = p.sde(sde_name)
            z = self.noise(p, sde_name, seed).to(self.device, p.dtype)
            with torch.no_grad():
                x, _ = integrate_probability_flow(p.score_fn(sde_name), sde, z, sde.T, self.eps,
                                                  rtol=self.ref_tol, atol=self.ref_tol)
            self._ref[key] = x.to(torch.float64).cpu()
        return self._ref[key]

    def run_cell(self, cell: Cell) -> Dict[str, Any]:
        """Run one cell; returns its row (the keys of :data:`FIELDS`; NaN where a metric does not apply)."""
        p = self.problem(cell.problem)
        sde = p.sde(cell.sde)
        score = p.score_fn(cell.sde)
        sampler = build_sampler(cell.sampler, **cell.opts)
        z = self.noise(p, cell.sde, cell.seed)
        g = self.sampler_generator(cell.seed)
        timed = TimedScore(score, self.device)
        # a method's failures are measured (inf errors), not raised
        out = sampler(timed, sde, z.shape, generator=g, eps=self.eps, device=self.device, dtype=self.dtype,
                      x_init=z.to(self.device, self.dtype), nonfinite="count")
        x = out.x.detach().to(torch.float64).cpu()
        nan = float("nan")
        row: Dict[str, Any] = dict(problem=cell.problem, sde=cell.sde if p.own_sde is None else type(sde).__name__,
                                   label=cell.label, sampler=cell.sampler, options=_fmt_options(cell.opts),
                                   budget=cell.budget if cell.budget is not None else "",
                                   tol=cell.tol if cell.tol is not None else "", seed=cell.seed, n=self.n,
                                   nfe=int(out.nfe), seconds=out.seconds, sec_per_nfe=out.seconds / max(out.nfe, 1))
        # overhead: the sampler's wall time over the time its evaluations took in the same run
        # (on a shared machine this is far steadier than NFE x a separately timed evaluation)
        row["score_seconds"] = timed.seconds / max(timed.calls, 1)
        row["overhead"] = out.seconds / timed.seconds if timed.seconds > 0 else float("nan")
        nan = float("nan")
        if not self.quality:
            row.update({k: nan for k in ("ode_err", "ode_err_med", "w2", "weight_error", "w2_floor", "w2_ratio",
                                         "sw2", "sw2_floor")})
            return row
        deterministic = cell.sampler in DETERMINISTIC and not cell.opts.get("denoise", False)
        if deterministic:
            err = (x - self.reference(p, cell.sde, cell.seed)).reshape(self.n, -1).norm(dim=1)
            err = torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))
            row["ode_err"], row["ode_err_med"] = float(err.mean()), float(err.median())
        else:
            row["ode_err"] = row["ode_err_med"] = nan
        xd = x
        if p.mixture is not None:
            ms = metrics.mode_w2(xd, p.mixture)
            floor = self.w2_floor(p)
            row.update(w2=ms.w2, weight_error=ms.weight_error, w2_floor=floor, w2_ratio=ms.w2 / floor)
        else:
            row.update(w2=nan, weight_error=nan, w2_floor=nan, w2_ratio=nan)
        if torch.isfinite(xd).all():
            row["sw2"] = metrics.sliced_w2(xd, p.exact(self.n, cell.seed, 0), self.n_proj,
                                           torch.Generator().manual_seed(cell.seed))
        else:
            row["sw2"] = math.inf
        row["sw2_floor"] = self.sw2_floor(p)
        return row

    def run(self, cells: Iterable[Cell], progress: bool = True, on_row=None) -> List[Dict[str, Any]]:
        """Run every cell under a tqdm bar; ``on_row(row)`` is called after each (e.g. to save)."""
        from tqdm.auto import tqdm

        cells = list(cells)
        rows = []
        bar = tqdm(cells, desc="bench", unit="cell", disable=not progress)
        for cell in bar:
            bar.set_postfix_str(f"{cell.problem} {cell.sde} {cell.label} "
                                f"{cell.budget if cell.budget is not None else cell.tol}", refresh=False)
            row = self.run_cell(cell)
            rows.append(row)
            if on_row is not None:
                on_row(row)
        return rows


def write_results(rows: Sequence[Dict[str, Any]], out_dir: Union[str, Path], prefix: str = "bench",
                  title: str = "Sampler benchmark", preamble: str = "") -> List[Path]:
    """CSV (every cell), Markdown (headline, overhead, all cells) and PNG plots into ``out_dir``."""
    out_dir = Path(out_dir)
    files = [write_csv(rows, out_dir / f"{prefix}.csv"),
             write_markdown(rows, out_dir / f"{prefix}.md", title=title, preamble=preamble)]
    return files + write_plots(rows, out_dir, prefix)


def run_grid(out_dir: Union[str, Path], problems: Sequence[str] = ("ring8", "aniso16"),
             sdes: Sequence[str] = ("vp", "subvp", "ve"), budgets: Sequence[int] = (5, 10, 20, 50, 100, 200, 500, 1000),
             seeds: Sequence[int] = (0,), n: int = 10_000, eps: float = 1e-3, ref_tol: float = 1e-9,
             floor_repeats: int = 5, device=None, samplers: Optional[Sequence[Dict[str, Any]]] = None,
             only: Optional[Sequence[str]] = None, progress: bool = True, prefix: str = "bench",
             title: str = "Sampler benchmark", preamble: str = "") -> Tuple[List[Dict[str, Any]], List[Path]]:
    """Expand the grid, run every cell, write CSV, Markdown and PNGs into ``out_dir``.

    ``samplers``: spec dicts (default :data:`DEFAULT_SAMPLERS`); ``only``: keep these labels.
    The CSV is rewritten after every cell, so an interrupted run keeps what it measured.
    Returns ``(rows, files)``.
    """
    specs = specs_from_config(samplers if samplers is not None else DEFAULT_SAMPLERS)
    if only is not None:
        known = [s.label for s in specs]
        missing = sorted(set(only) - set(known))
        if missing:
            raise ValueError(f"unknown sampler label(s) {missing} in only; valid labels: {known}")
        specs = [s for s in specs if s.label in set(only)]
    cells = expand_grid(list(problems), list(sdes), specs, list(budgets), list(seeds))
    bench = Bench(n=n, eps=eps, device=device, ref_tol=ref_tol, floor_repeats=floor_repeats)
    out_dir = Path(out_dir)
    rows: List[Dict[str, Any]] = []

    def save(row):
        rows.append(row)
        write_csv(rows, out_dir / f"{prefix}.csv")

    bench.run(cells, progress=progress, on_row=save)
    return rows, write_results(rows, out_dir, prefix=prefix, title=title, preamble=preamble)
