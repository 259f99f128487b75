"""Benchmark engine: samplers on a grid of problem x SDE x sampler x NFE budget x seed.

The library half of ``scoresde-bench`` (the Hydra app in :mod:`scoresde.apps.bench` is a thin
layer over it), usable from a notebook:

>>> import scoresde as sd
>>> from scoresde import bench
>>> cells = bench.expand_grid(["ring8"], ["vp"], [bench.SamplerSpec("dpm_solver", "dpm_solver")],
...                           budgets=[10], seeds=[0])
>>> rows = bench.Bench(n=500).run(cells, progress=False)     # doctest: +SKIP
>>> bench.write_results(rows, "out/")                          # doctest: +SKIP

A **sampler spec** names a sampler and its fixed options and says how an NFE budget becomes its
options: ``steps = round(budget / nfe_per_step)`` (1 for Euler-type methods and DPM-Solver, 2 for
Heun or a predictor with one corrector step, 4 for RK4 or torchsde's SRK), or, for adaptive ODE
solvers, a list of tolerances (rtol = atol) in place of budgets.  The NFE reported is always the
count the sampler's wrapper made, never the budget.

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

The **likelihood benchmark** (:func:`likelihood_rows`, :func:`write_likelihood`) computes
``sd.log_likelihood`` of exact mixture samples against their exact log p_eps: error against
tolerance and NFE, the exact trace against Hutchinson with 1..K probes (the estimator's spread and
its time), time per sample, and beside them a reference method passed in as a callable (Song et
al.'s scipy RK45 over a flattened NumPy state, re-created in benchmarks/likelihood.py).

A **problem** is an exact-score Gaussian mixture by name (``ring8``, ``aniso16``, ...: every error
is the sampler's) or the path of a trained checkpoint (:func:`scoresde.load_model`); a checkpoint
brings its own SDE, and its samples are judged in its model space against its data set's held-out
split (and its mixture, when the data set is one).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from . import metrics
from .mixture import MIXTURES, GaussianMixture, build_mixture
from .samplers import build_sampler, integrate_probability_flow
from .sde import SDE, build_sde

Tensor = torch.Tensor

__all__ = ["SamplerSpec", "Cell", "Problem", "load_problem", "expand_grid", "Bench", "aggregate",
           "write_results", "write_csv", "write_markdown", "write_plots", "time_score", "DETERMINISTIC",
           "FIELDS", "DEFAULT_SAMPLERS", "QUICK_SAMPLERS", "specs_from_config"]

# samplers that solve the probability-flow ODE without noise: their error against a tight
# reference solve from the same z is defined
DETERMINISTIC = ("ode", "dpm_solver", "unipc", "heun")


@dataclass
class SamplerSpec:
    """One sampler of the grid: ``name`` and fixed ``options``, and how a budget maps to steps.

    ``tolerances`` (adaptive ODE solvers): rtol = atol values, one cell each, instead of budgets.
    ``budgets``: this sampler's own budgets (default: the grid's), kept within
    [``min_nfe``, ``max_nfe``].
    """

    label: str
    name: str
    options: Dict[str, Any] = field(default_factory=dict)
    nfe_per_step: float = 1.0
    budgets: Optional[List[int]] = None
    min_nfe: int = 1
    max_nfe: int = 10 ** 9
    tolerances: Optional[List[float]] = None

    def __post_init__(self):
        build_sampler(self.name, **self.options)  # unknown names/options fail here, naming them
        if not self.nfe_per_step > 0:
            raise ValueError(f"nfe_per_step must be positive, got {self.nfe_per_step} ({self.label})")
        if self.tolerances is not None and any(not tol > 0 for tol in self.tolerances):
            raise ValueError(f"tolerances must be positive, got {self.tolerances} ({self.label})")

    def settings(self, budgets: Sequence[int]) -> List[Tuple[Optional[int], Optional[float], Dict[str, Any]]]:
        """``(budget, tol, options)`` for each cell of this sampler."""
        if self.tolerances is not None:
            return [(None, float(tol), {**self.options, "rtol": float(tol), "atol": float(tol)})
                    for tol in self.tolerances]
        out = []
        for b in (self.budgets if self.budgets is not None else budgets):
            b = int(b)
            if not self.min_nfe <= b <= self.max_nfe:
                continue
            steps = max(1, int(round(b / self.nfe_per_step)))
            out.append((b, None, {**self.options, "steps": steps}))
        return out


@dataclass(frozen=True)
class Cell:
    """One run: a problem, an SDE, a sampler with its options, a budget (or tolerance), a seed."""

    problem: str
    sde: str
    label: str
    sampler: str
    options: Tuple[Tuple[str, Any], ...]
    budget: Optional[int]
    tol: Optional[float]
    seed: int

    @property
    def opts(self) -> Dict[str, Any]:
        return dict(self.options)


def is_checkpoint(problem: str) -> bool:
    """A problem name that is not a known mixture is a checkpoint path."""
    return problem not in MIXTURES


def expand_grid(problems: Sequence[str], sdes: Sequence[str], samplers: Sequence[SamplerSpec],
                budgets: Sequence[int], seeds: Sequence[int]) -> List[Cell]:
    """The grid's cells, in order problem, SDE, sampler, budget/tolerance, seed.

    A checkpoint problem brings its own SDE: it gets one SDE entry, ``"checkpoint"``.
    Unknown SDE names raise ValueError; a sampler whose budgets all fall outside its
    [min_nfe, max_nfe] simply has no cells.
    """
    for s in sdes:
        build_sde(s)  # names checked before any work
    if not problems or not sdes or not samplers or not seeds:
        raise ValueError("the grid needs at least one problem, SDE, sampler and seed")
    labels = [s.label for s in samplers]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"sampler labels must be unique; repeated: {dup}")
    cells = []
    for p in problems:
        for s in (["checkpoint"] if is_checkpoint(p) else sdes):
            for spec in samplers:
                for budget, tol, opts in spec.settings(budgets):
                    for seed in seeds:
                        cells.append(Cell(p, s, spec.label, spec.name, tuple(sorted(opts.items())),
                                          budget, tol, int(seed)))
    return cells


class Problem:
    """What a cell samples: a score, an SDE, and exact (or held-out) samples to compare with.

    ``mixture`` is set when the target is a Gaussian mixture (mode-by-mode W2 applies; exact
    samples come from it).  A checkpoint's samples are compared in its model space (where its
    data set's held-out split and mixture live).
    """

    def __init__(self, name: str, shape: Tuple[int, ...], mixture: Optional[GaussianMixture] = None,
                 model=None, sde: Optional[SDE] = None, data=None):
        self.name, self.shape, self.mixture = name, tuple(shape), mixture
        self.model, self.own_sde, self.data = model, sde, data
        self._scores: Dict[str, Any] = {}

    @property
    def dtype(self) -> torch.dtype:
        # the exact mixture score runs in float64 for the reference solve; networks in float32
        return torch.float64 if self.model is None else torch.float32

    def sde(self, name: str) -> SDE:
        return self.own_sde if self.own_sde is not None else build_sde(name)

    def score_fn(self, sde_name: str):
        if sde_name not in self._scores:
            self._scores[sde_name] = (self.mixture.score_fn(self.sde(sde_name)) if self.model is None
                                      else self.model)
        return self._scores[sde_name]

    def exact(self, n: int, seed: int, which: int = 0) -> Tensor:
        """``n`` exact samples (``which`` tells independent sets apart): from the mixture, else the
        held-out split (which=0) and fresh data or the training split (which=1)."""
        g = torch.Generator().manual_seed(10_000 * (which + 1) + seed)
        if self.mixture is not None:
            return self.mixture.sample(n, generator=g, dtype=torch.float64)
        d = self.data
        if which == 1 and d.sampler is not None:
            return d.sampler(n, g).to(torch.float64).cpu()
        pool = d.test if which == 0 else d.train
        if pool is None or pool.shape[0] < n:
            raise ValueError(f"problem {self.name!r}: need {n} data points to compare with, "
                             f"have {0 if pool is None else pool.shape[0]}; lower n")
        return pool[torch.randperm(pool.shape[0], generator=g)[:n]].to(torch.float64).cpu()


def load_problem(name: str, device=None) -> Problem:
    """A mixture by name, or a checkpoint path (:func:`scoresde.load_model`, data set rebuilt
    from its config)."""
    if not is_checkpoint(name):
        mix = build_mixture(name)
        return Problem(name, mix.event_shape, mixture=mix)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ValueError(f"problem {name!r} is neither a mixture ({sorted(MIXTURES)}) nor a checkpoint file")
    from .data import build_dataset
    from .train import load_model

    model = load_model(path, device=device)
    data_cfg = dict((model.checkpoint.get("config") or {}).get("data") or {})
    data = build_dataset(data_cfg.pop("name"), **data_cfg)
    return Problem(name, tuple(data.event_shape), mixture=data.mixture, model=model, sde=model.sde, data=data)


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


FIELDS = ["problem", "sde", "label", "sampler", "options", "budget", "tol", "seed", "n", "nfe", "seconds",
          "sec_per_nfe", "score_seconds", "overhead", "w2", "weight_error", "w2_floor", "w2_ratio", "sw2",
          "sw2_floor", "ode_err", "ode_err_med"]


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
        g = torch.Generator().manual_seed(1_000_003 + cell.seed)  # the sampler's own noise
        timed = TimedScore(score, self.device)
        out = sampler(timed, sde, z.shape, generator=g, eps=self.eps, device=self.device, dtype=self.dtype,
                      x_init=z.to(self.device, self.dtype))
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


# ---------------------------------------------------------------------------------------------
# aggregation and writers

_NUMERIC = ["nfe", "seconds", "sec_per_nfe", "score_seconds", "overhead", "w2", "weight_error", "w2_floor",
            "w2_ratio", "sw2", "sw2_floor", "ode_err", "ode_err_med"]


def _mean(vals: List[float]) -> float:
    vals = [float(v) for v in vals]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def aggregate(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows averaged over seeds (same problem, SDE, label, budget, tol): means, plus ``seeds``
    and ``w2_ratio_sd`` / ``sw2_sd`` (standard deviation over the seeds)."""
    groups: Dict[tuple, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["problem"], r["sde"], r["label"], str(r["budget"]), str(r["tol"]))].append(r)
    out = []
    for rs in groups.values():
        a = {k: rs[0][k] for k in ("problem", "sde", "label", "sampler", "options", "budget", "tol", "n")}
        for k in _NUMERIC:
            a[k] = _mean([r[k] for r in rs])
        a["seeds"] = len(rs)
        for k, sd_k in (("w2_ratio", "w2_ratio_sd"), ("sw2", "sw2_sd")):
            vals = [float(r[k]) for r in rs]
            a[sd_k] = statistics.stdev(vals) if len(vals) > 1 and all(map(math.isfinite, vals)) else float("nan")
        out.append(a)
    return out


def read_csv(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Rows written by :func:`write_csv`, numbers as numbers (to redraw tables and plots)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k, v in r.items():
                if k in _NUMERIC or k in ("n", "seed"):
                    r[k] = float(v) if v != "" else float("nan")
                elif k in ("budget",) and v != "":
                    r[k] = int(float(v))
                elif k in ("tol",) and v != "":
                    r[k] = float(v)
            out.append(r)
    return out


def write_csv(rows: Sequence[Dict[str, Any]], path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0].keys()) if rows else FIELDS
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _f(v, spec: str = ".3f") -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def md_table(rows: Sequence[Dict[str, Any]], cols: Sequence[Tuple[str, Any]]) -> str:
    """A Markdown table: ``cols`` are (header, row -> str)."""
    head = "| " + " | ".join(c[0] for c in cols) + " |\n|" + "|".join("---" for _ in cols) + "|\n"
    return head + "".join("| " + " | ".join(c[1](r) for c in cols) + " |\n" for r in rows)


def _quality_key(rows) -> Tuple[str, str]:
    """Which number measures quality: W2/floor for mixtures, else sliced W2."""
    if any(math.isfinite(float(r["w2_ratio"])) or math.isinf(float(r["w2_ratio"])) for r in rows
           if not (isinstance(r["w2_ratio"], float) and math.isnan(r["w2_ratio"]))):
        return "w2_ratio", "W2 / exact floor"
    return "sw2", "sliced W2"


def headline(agg: Sequence[Dict[str, Any]]) -> str:
    """Per problem and SDE: quality of each budgeted sampler (rows) at each NFE budget (columns),
    and the adaptive solvers' tolerance, NFE and quality."""
    out = []
    for (prob, sde) in sorted({(r["problem"], r["sde"]) for r in agg}, key=lambda k: (k[0], _sde_order(k[1]))):
        rs = [r for r in agg if r["problem"] == prob and r["sde"] == sde]
        qk, qname = _quality_key(rs)
        budgets = sorted({int(r["budget"]) for r in rs if r["budget"] != ""})
        labels = list(dict.fromkeys(r["label"] for r in rs if r["budget"] != ""))
        out.append(f"### {prob}, {sde}: {qname} by NFE budget\n")
        if labels:
            cells = {(r["label"], int(r["budget"])): r for r in rs if r["budget"] != ""}
            cols = [("sampler", lambda lab: lab)] + [
                (str(b), (lambda b: lambda lab: _f(cells[(lab, b)][qk], ".2f") if (lab, b) in cells else "")(b))
                for b in budgets]
            out.append(md_table(labels, cols))
        adaptive = [r for r in rs if r["budget"] == ""]
        if adaptive:
            out.append("\n" + md_table(adaptive, [("adaptive sampler", lambda r: r["label"]),
                                                  ("tol", lambda r: _f(r["tol"], "g")),
                                                  ("NFE", lambda r: _f(r["nfe"], ".0f")),
                                                  (qname, lambda r: _f(r[qk], ".2f")),
                                                  ("ODE error", lambda r: _f(r["ode_err"], ".1e"))]))
        out.append("")
    return "\n".join(out)


def overhead_table(rows: Sequence[Dict[str, Any]], min_n: int = 1000) -> List[Dict[str, Any]]:
    """Per sampler label: the median overhead over its cells with n >= min_n and NFE >= 10."""
    groups: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if int(r["n"]) >= min_n and float(r["nfe"]) >= 10:
            groups[r["label"]].append(r)
    out = []
    for lab, rs in groups.items():
        ov = [float(r["overhead"]) for r in rs]
        out.append(dict(label=lab, sampler=rs[0]["sampler"], cells=len(rs), median=statistics.median(ov),
                        max=max(ov), score_ms=1e3 * statistics.median(float(r["score_seconds"]) for r in rs),
                        met=statistics.median(ov) <= 1.1))
    return out


def write_markdown(rows: Sequence[Dict[str, Any]], path: Union[str, Path], title: str = "Sampler benchmark",
                   preamble: str = "") -> Path:
    """Headline tables, the overhead table, then every aggregated cell."""
    path = Path(path)
    agg = aggregate(rows)
    md = [f"# {title}\n", preamble, "## Headline\n", headline(agg)]
    ov = overhead_table(rows)
    if ov:
        md.append("## Sampler overhead: wall time / (NFE x one score evaluation), goal <= 1.1\n")
        md.append(md_table(ov, [("sampler", lambda r: r["label"]), ("cells", lambda r: str(r["cells"])),
                                ("median", lambda r: _f(r["median"], ".2f")), ("max", lambda r: _f(r["max"], ".2f")),
                                ("one score eval (ms)", lambda r: _f(r["score_ms"], ".2f")),
                                ("<= 1.1", lambda r: "yes" if r["met"] else "**no**")]))
    md.append("## All cells (mean over seeds)\n")
    for (prob, sde) in sorted({(r["problem"], r["sde"]) for r in agg}, key=lambda k: (k[0], _sde_order(k[1]))):
        rs = [r for r in agg if r["problem"] == prob and r["sde"] == sde]
        md.append(f"### {prob}, {sde}\n")
        md.append(md_table(rs, [("sampler", lambda r: r["label"]), ("budget/tol", lambda r: str(r["budget"] or r["tol"])),
                                ("NFE", lambda r: _f(r["nfe"], ".0f")), ("s", lambda r: _f(r["seconds"], ".2f")),
                                ("ms/NFE", lambda r: _f(1e3 * r["sec_per_nfe"], ".2f")),
                                ("overhead", lambda r: _f(r["overhead"], ".2f")),
                                ("W2", lambda r: _f(r["w2"], ".4f")), ("W2/floor", lambda r: _f(r["w2_ratio"], ".2f")),
                                ("sd", lambda r: _f(r["w2_ratio_sd"], ".2f")),
                                ("weight err", lambda r: _f(r["weight_error"], ".4f")),
                                ("SW2", lambda r: _f(r["sw2"], ".4f")), ("SW2 floor", lambda r: _f(r["sw2_floor"], ".4f")),
                                ("ODE err", lambda r: _f(r["ode_err"], ".1e"))]))
    floors = {r["problem"]: (r["w2_floor"], r["sw2_floor"]) for r in agg}
    md.append("Floors (n = %s): " % (agg[0]["n"] if agg else "") + "; ".join(
        f"{k}: W2 {_f(a, '.4f') or '-'}, SW2 {_f(b, '.4f')}" for k, (a, b) in floors.items()) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md))
    return path


def _sde_order(s: str) -> int:
    order = ["vp", "subvp", "ve"]
    return order.index(s) if s in order else len(order)


def write_plots(rows: Sequence[Dict[str, Any]], out_dir: Union[str, Path], prefix: str = "bench") -> List[Path]:
    """One PNG per problem: quality against NFE (top) and against seconds (bottom), a column per SDE,
    a line per sampler (mean over seeds; adaptive solvers along their tolerances)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    labels = list(dict.fromkeys(r["label"] for r in agg))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colors = {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}
    marks = "os^vDx*<>ph"
    for prob in dict.fromkeys(r["problem"] for r in agg):
        prs = [r for r in agg if r["problem"] == prob]
        qk, qname = _quality_key(prs)
        sdes = sorted({r["sde"] for r in prs}, key=_sde_order)
        fig, axes = plt.subplots(2, len(sdes), figsize=(5.2 * len(sdes), 8), squeeze=False)
        for j, s in enumerate(sdes):
            for i, (xk, xname) in enumerate((("nfe", "NFE"), ("seconds", "wall seconds"))):
                ax = axes[i][j]
                for li, lab in enumerate(labels):
                    pts = sorted((float(r[xk]), float(r[qk])) for r in prs if r["sde"] == s and r["label"] == lab
                                 and math.isfinite(float(r[qk])))
                    if pts:
                        ax.plot([a for a, _ in pts], [b for _, b in pts], "-" + marks[li % len(marks)],
                                color=colors[lab], label=lab, ms=4)
                floor = 1.0 if qk == "w2_ratio" else _mean([r["sw2_floor"] for r in prs])
                ax.axhline(floor, color="k", lw=0.8)
                ax.set_xscale("log"), ax.set_yscale("log")
                ax.set_xlabel(xname), ax.set_ylabel(qname)
                ax.set_title(f"{prob}, {s}: {qname} against {xname}", fontsize=9)
                ax.grid(True, which="both", alpha=0.2)
        axes[0][-1].legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        p = out_dir / f"{prefix}_{Path(prob).stem}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def write_results(rows: Sequence[Dict[str, Any]], out_dir: Union[str, Path], prefix: str = "bench",
                  title: str = "Sampler benchmark", preamble: str = "") -> List[Path]:
    """CSV (every cell), Markdown (headline, overhead, all cells) and PNG plots into ``out_dir``."""
    out_dir = Path(out_dir)
    files = [write_csv(rows, out_dir / f"{prefix}.csv"),
             write_markdown(rows, out_dir / f"{prefix}.md", title=title, preamble=preamble)]
    return files + write_plots(rows, out_dir, prefix)


# ---------------------------------------------------------------------------------------------
# the default grid

def _spec(label, name, nfe_per_step=1.0, min_nfe=1, max_nfe=10 ** 9, tolerances=None, **options):
    return dict(label=label, name=name, options=options, nfe_per_step=nfe_per_step, min_nfe=min_nfe,
                max_nfe=max_nfe, tolerances=tolerances)


# label, sampler, how a budget maps to steps.  Only Euler-Maruyama goes up to 1,000 evaluations (the
# reference point); the others stop where they have converged, so the full grid fits in about 15
# minutes on one CPU core.
DEFAULT_SAMPLERS: List[Dict[str, Any]] = [
    _spec("pc euler_maruyama", "pc", min_nfe=20, predictor="euler_maruyama", corrector="none"),
    _spec("pc ancestral", "pc", min_nfe=20, max_nfe=200, predictor="ancestral", corrector="none"),
    _spec("pc reverse_diffusion+langevin", "pc", 2.0, min_nfe=20, max_nfe=200, predictor="reverse_diffusion",
          corrector="langevin", langevin_norm="batch"),
    _spec("sde euler", "sde", min_nfe=20, max_nfe=500, method="euler"),
    _spec("sde srk", "sde", 2.0, min_nfe=20, max_nfe=200, method="srk"),
    _spec("ode rk4", "ode", 4.0, min_nfe=20, max_nfe=200, method="rk4"),
    _spec("ode dopri5", "ode", tolerances=[1e-3, 1e-4, 1e-5], method="dopri5"),
    _spec("dpm_solver 2", "dpm_solver", max_nfe=100, order=2),
    _spec("dpm_solver 3", "dpm_solver", max_nfe=100, order=3),
    _spec("unipc", "unipc", max_nfe=100),
    _spec("heun", "heun", 2.0, min_nfe=10, max_nfe=100),
]
QUICK_SAMPLERS = ["pc euler_maruyama", "sde euler", "ode dopri5", "dpm_solver 2", "heun"]


def specs_from_config(items: Sequence[Dict[str, Any]]) -> List[SamplerSpec]:
    """SamplerSpecs from plain dicts (a config list); unknown keys raise ValueError naming them."""
    valid = set(SamplerSpec.__dataclass_fields__)
    specs = []
    for it in items:
        it = dict(it)
        bad = sorted(set(it) - valid)
        if bad:
            raise ValueError(f"unknown sampler spec key(s) {bad}; valid: {sorted(valid)}")
        if "label" not in it or "name" not in it:
            raise ValueError(f"a sampler spec needs a label and a name, got {it}")
        it["options"] = dict(it.get("options") or {})
        for k in ("budgets", "tolerances"):
            if it.get(k) is not None:
                it[k] = list(it[k])
        specs.append(SamplerSpec(**it))
    return specs


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


# ---------------------------------------------------------------------------------------------
# likelihood benchmark

def _resolve(ref):
    """A callable, or ``"module:function"`` imported (e.g. the reference method of
    benchmarks/likelihood.py)."""
    if ref is None or callable(ref):
        return ref
    import importlib

    mod, _, fn = str(ref).partition(":")
    if not fn:
        raise ValueError(f"reference must be 'module:function', got {ref!r}")
    return getattr(importlib.import_module(mod), fn)


def likelihood_rows(problems: Sequence[str] = ("ring8", "aniso16"), sdes: Sequence[str] = ("vp", "subvp", "ve"),
                    n: int = 500, tolerances: Sequence[float] = (1e-3, 1e-4, 1e-5, 1e-6),
                    probes: Sequence[int] = (1, 2, 4, 8), probe_tol: float = 1e-5, eps: float = 1e-5,
                    reference=None, seed: int = 0, progress: bool = True) -> List[Dict[str, Any]]:
    """Probability-flow log-likelihoods of n exact mixture samples against their exact log p_eps.

    Per problem and SDE (the prior term is the exact log p_T, so the error is the solver's):

    * ``exact`` divergence at each tolerance (rtol = atol): mean and max |logp - exact|, NFE,
      seconds, seconds per sample;
    * ``hutchinson`` with each number of probes at ``probe_tol``: the same, plus ``sd``: the
      standard deviation over samples of (Hutchinson - exact-trace) log p, the estimator's noise;
    * ``reference``: the reference method (Song et al.'s likelihood.py: scipy RK45 over a
      NumPy-flattened state with one probe), when given as ``reference(score_fn, sde, x, eps=,
      rtol=, atol=, generator=) -> (logp [B], z, nfe, seconds)`` or ``"module:function"``
      (:func:`song_reference`: the re-creation in benchmarks/likelihood.py), at each tolerance;
      its prior term is swapped for the exact one too.
    """
    import scoresde as sd

    log_likelihood = getattr(sd, "log_likelihood", None)
    if log_likelihood is None:  # pragma: no cover - until the likelihood module is installed
        raise ValueError("the likelihood benchmark needs scoresde.log_likelihood")
    ref_fn = _resolve(reference)
    from tqdm.auto import tqdm

    jobs = [(p, s) for p in problems for s in sdes]
    rows: List[Dict[str, Any]] = []
    for prob, sde_name in tqdm(jobs, desc="likelihood", disable=not progress):
        mix, sde = build_mixture(prob), build_sde(sde_name)
        score = mix.score_fn(sde)
        x = mix.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        exact = mix.log_prob_t(x, sde, eps)
        prior = lambda z, mix=mix, sde=sde: mix.log_prob_t(z, sde, sde.T)  # noqa: E731

        def row(method, tol, k, logp, nfe, seconds, trace=None):
            err = (logp.double().cpu() - exact).abs()
            r = dict(problem=prob, sde=sde_name, method=method, tol=tol, probes=k, n=n, nfe=int(nfe),
                      seconds=seconds, sec_per_sample=seconds / n, err_mean=float(err.mean()),
                      err_max=float(err.max()), sd=float("nan"))
            if trace is not None:
                r["sd"] = float((logp.double().cpu() - trace).std())
            rows.append(r)

        trace = None
        for tol in tolerances:
            res = log_likelihood(score, sde, x, divergence="exact", rtol=tol, atol=tol, eps=eps, prior_logp=prior)
            row("exact trace", tol, 0, res.logp, res.nfe, res.seconds)
            if tol == probe_tol:
                trace = res.logp.double().cpu()
        if trace is None:
            trace = log_likelihood(score, sde, x, divergence="exact", rtol=probe_tol, atol=probe_tol, eps=eps,
                                   prior_logp=prior).logp.double().cpu()
        for k in probes:
            res = log_likelihood(score, sde, x, divergence="hutchinson", probes=int(k), rtol=probe_tol,
                                 atol=probe_tol, eps=eps, prior_logp=prior,
                                 generator=torch.Generator().manual_seed(seed + 1))
            row("hutchinson", probe_tol, int(k), res.logp, res.nfe, res.seconds, trace)
        if ref_fn is not None:
            for tol in tolerances:
                logp, z, nfe, seconds = ref_fn(score, sde, x, eps=eps, rtol=tol, atol=tol,
                                               generator=torch.Generator().manual_seed(seed + 1))
                # the same exact prior term as ours, so both errors are the solvers' alone
                logp = (torch.as_tensor(logp).double().cpu() - sde.prior_logp(z.double()).cpu()
                        + prior(z.double()).cpu())
                row("reference (scipy RK45, 1 probe)", tol, 1, logp, nfe, seconds, trace)
    return rows


def write_likelihood(rows: Sequence[Dict[str, Any]], out_dir: Union[str, Path], prefix: str = "likelihood",
                     preamble: str = "") -> List[Path]:
    """likelihood.csv, likelihood.md (per problem and SDE) and likelihood.png (error against NFE)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    csv_path = write_csv(rows, out_dir / f"{prefix}.csv")
    md = ["# Likelihood benchmark\n", preamble]
    cols = [("method", lambda r: r["method"]), ("tol", lambda r: _f(r["tol"], "g")),
            ("probes", lambda r: str(r["probes"]) if r["probes"] else "exact"), ("NFE", lambda r: str(r["nfe"])),
            ("mean abs err (nats)", lambda r: _f(r["err_mean"], ".2e")),
            ("max abs err", lambda r: _f(r["err_max"], ".2e")),
            ("sd vs exact trace", lambda r: _f(r["sd"], ".3f")), ("s", lambda r: _f(r["seconds"], ".2f")),
            ("ms / sample", lambda r: _f(1e3 * r["sec_per_sample"], ".3f"))]
    keys = sorted({(r["problem"], r["sde"]) for r in rows}, key=lambda k: (k[0], _sde_order(k[1])))
    for prob, s in keys:
        md += [f"## {prob}, {s}\n", md_table([r for r in rows if r["problem"] == prob and r["sde"] == s], cols)]
    md_path = out_dir / f"{prefix}.md"
    md_path.write_text("\n".join(md))
    probs = list(dict.fromkeys(k[0] for k in keys))
    sdes = sorted({k[1] for k in keys}, key=_sde_order)
    fig, axes = plt.subplots(len(probs), len(sdes), figsize=(4.8 * len(sdes), 3.8 * len(probs)), squeeze=False)
    for i, prob in enumerate(probs):
        for j, s in enumerate(sdes):
            ax = axes[i][j]
            rs = [r for r in rows if r["problem"] == prob and r["sde"] == s]
            for m, style in (("exact trace", "o-"), ("reference (scipy RK45, 1 probe)", "s--")):
                pts = sorted((r["nfe"], r["err_mean"]) for r in rs if r["method"] == m)
                if pts:
                    ax.plot([a for a, _ in pts], [b for _, b in pts], style, label=m)
            for r in rs:
                if r["method"] == "hutchinson":
                    ax.plot([r["nfe"]], [r["err_mean"]], "^", color="C2", alpha=0.4 + 0.6 * min(r["probes"], 8) / 8)
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.set_xlabel("NFE"), ax.set_ylabel("mean |log p - exact| (nats)")
            ax.set_title(f"{prob}, {s} (triangles: Hutchinson)", fontsize=9)
            ax.grid(True, which="both", alpha=0.2)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / f"{prefix}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [csv_path, md_path, png]


# ---------------------------------------------------------------------------------------------
# sampler overhead

def network_problem(problem: str, sde: str, network: Dict[str, Any], seed: int = 0) -> Problem:
    """``problem`` (a mixture name) with the score of an untrained network in place of its exact one.

    ``network`` is a model config (the keys of ``conf/model/*.yaml``: ``name``, the network's
    arguments, ``parameterization``, ``time_input``).  The weights are drawn from ``seed``, and the
    output layer, which the networks start at zero, is drawn too, so that the flow moves and the
    adaptive solvers take steps as they would; an evaluation costs what a trained one would.
    """
    from .score import build_score_model

    base = load_problem(problem)
    if base.model is not None:
        raise ValueError(f"problem {problem!r} already has its own network; give a mixture name")
    net = dict(network)
    param, time_input = net.pop("parameterization", "noise"), net.pop("time_input", "t")
    net["data_shape"] = list(base.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_score_model({"sde": {"name": sde}, "model": net, "parameterization": param,
                                   "time_input": time_input})
        out = getattr(model.net, "out", None)
        if out is not None and hasattr(out, "reset_parameters"):
            out.reset_parameters()
    model.eval()
    return Problem(f"{problem}+{net['name']}", base.shape, mixture=base.mixture, model=model)


def overhead_rows(batches: Sequence[int] = (1000, 10_000, 50_000), budget: int = 50, problem: str = "ring8",
                  sde: str = "vp", samplers: Optional[Sequence[Dict[str, Any]]] = None, repeats: int = 2,
                  only: Optional[Sequence[str]] = None, progress: bool = True,
                  network: Optional[Dict[str, Any]] = None,
                  network_batches: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Overhead (wall time / time inside the score) of each sampler at ``budget`` NFE, per batch size.

    Each sampler runs ``repeats`` times per batch size; the row keeps the smallest overhead (the
    run least disturbed by other jobs).  Adaptive samplers run at their tightest tolerance.  Rows
    have ``score`` = ``"exact"`` (the mixture's exact score); with ``network`` (a model config, see
    :func:`network_problem`) every cell runs again with that network's score (``score`` =
    ``"network"``), the cost a trained model of the default architecture would have, at
    ``network_batches`` (default: ``batches``).
    """
    from tqdm.auto import tqdm

    specs = specs_from_config(samplers if samplers is not None else DEFAULT_SAMPLERS)
    if only is not None:
        specs = [s for s in specs if s.label in set(only)]
    kinds = [("exact", None, batches)]
    if network is not None:
        kinds.append(("network", network_problem(problem, sde, network),
                      batches if network_batches is None else network_batches))
    out = []
    jobs = []
    for kind, prob, kind_batches in kinds:
        for b in kind_batches:
            runner = Bench(n=int(b), quality=False)
            if prob is not None:
                runner.problems[prob.name] = prob
            name = prob.name if prob is not None else problem
            for spec in specs:
                if spec.tolerances is not None:
                    tol = min(spec.tolerances)
                    opts = {**spec.options, "rtol": tol, "atol": tol}
                else:
                    opts = {**spec.options, "steps": max(1, int(round(budget / spec.nfe_per_step)))}
                jobs.append((kind, runner, Cell(name, sde, spec.label, spec.name, tuple(sorted(opts.items())),
                                                None if spec.tolerances is not None else budget,
                                                min(spec.tolerances) if spec.tolerances is not None else None, 0)))
    # the samplers' own cost: the first batch size again with a score that costs next to nothing
    free = _FreeProblem(load_problem(problem))
    free_runner = Bench(n=int(batches[0]), quality=False)
    free_runner.problems[free.name] = free
    for spec in specs:
        c = next(c for k, _, c in jobs if k == "exact" and c.label == spec.label)
        jobs.append(("free", free_runner, dataclasses.replace(c, problem=free.name)))
    free_cost: Dict[str, float] = {}
    for kind, runner, c in tqdm(jobs, desc="overhead", disable=not progress):
        rows = [runner.run_cell(c) for _ in range(repeats)]
        if kind == "free":
            free_cost[c.label] = min(r["seconds"] / max(r["nfe"], 1) for r in rows)
            continue
        best = min(rows, key=lambda r: r["overhead"])
        best["score"] = kind
        out.append(best)
    for r in out:
        r["free_us_per_nfe"] = 1e6 * free_cost[r["label"]] if r["score"] == "exact" else float("nan")
    return out


class _FreeProblem(Problem):
    """A problem whose score is -x (that of N(0, I); one pass over the batch): a sampler's wall time
    per evaluation on it is its own cost, the part that the overhead ratio divides by the score's."""

    def __init__(self, base: Problem):
        super().__init__(f"{base.name}+free score", base.shape, mixture=base.mixture)

    def score_fn(self, sde_name: str):
        return lambda x, t: -x


def write_overhead(rows: Sequence[Dict[str, Any]], out_dir: Union[str, Path], prefix: str = "bench_overhead",
                   preamble: str = "") -> List[Path]:
    """Tables sampler x batch size of overheads (goal <= 1.1), one per score kind, as CSV and Markdown."""
    out_dir = Path(out_dir)
    rows = [dict(r, score=r.get("score", "exact")) for r in rows]
    csv_path = write_csv(rows, out_dir / f"{prefix}.csv")
    md = ["# Sampler overhead: wall time / (NFE x time of one score evaluation), goal <= 1.1\n", preamble]
    titles = {"exact": "Exact mixture score", "network": "Network score (an untrained network of the default architecture)"}
    for kind in dict.fromkeys(r["score"] for r in rows):
        rs = [r for r in rows if r["score"] == kind]
        batches = sorted({int(r["n"]) for r in rs})
        labels = list(dict.fromkeys(r["label"] for r in rs))
        by = {(r["label"], int(r["n"])): r for r in rs}

        def cell_str(lab, b, by=by):
            r = by.get((lab, b))
            if r is None:
                return ""
            v = float(r["overhead"])
            return f"{v:.3f}" if v <= 1.1 else f"**{v:.3f}**"

        def score_ms(lab, b, by=by):
            r = by.get((lab, b))
            return "" if r is None else _f(1e3 * float(r["score_seconds"]), ".2f")

        cols = [("sampler", lambda lab: lab), ("NFE", (lambda by: lambda lab: str(by[(lab, batches[0])]["nfe"]))(by))]
        cols += [(f"n = {b:,}", (lambda b: lambda lab: cell_str(lab, b))(b)) for b in batches]
        cols += [(f"score ms (n = {b:,})", (lambda b: lambda lab: score_ms(lab, b))(b)) for b in dict.fromkeys((batches[0], batches[-1]))]
        if kind == "exact" and any(math.isfinite(float(r.get("free_us_per_nfe", "nan") or "nan")) for r in rs):
            cols.append((f"sampler us / NFE (free score, n = {batches[0]:,})",
                         (lambda by: lambda lab: _f(float(by[(lab, batches[0])].get("free_us_per_nfe", "nan") or "nan"),
                                                    ".0f"))(by)))
        md += [f"## {titles.get(kind, kind)} ({rs[0]['problem']})\n", md_table(labels, cols)]
    md.append("Bold: above the goal.  The score evaluations are timed inside the run "
              "(scoresde.bench.TimedScore), so the ratio does not drift with the machine's load.  "
              "'Free score': the sampler's wall time per evaluation with the score -x (about a microsecond), "
              "its own cost measured alone (in a run the same work takes longer: the score's "
              "work leaves the caches cold).\n")
    md_path = out_dir / f"{prefix}.md"
    md_path.write_text("\n".join(md))
    return [csv_path, md_path]


def song_reference(score_fn, sde: SDE, x: Tensor, *, eps: float, rtol: float, atol: float,
                   generator: Optional[torch.Generator] = None):
    """The reference method re-created in benchmarks/likelihood.py (scipy RK45 over a flattened
    NumPy state, one Rademacher probe), in :func:`likelihood_rows`' interface:
    ``(logp [B], z, nfe, seconds)``.  Needs a source checkout (benchmarks/ is not installed)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "likelihood.py"
    if not path.is_file():
        raise ValueError(f"the reference method lives in {path}, which this installation lacks")
    spec = importlib.util.spec_from_file_location("_scoresde_benchmarks_likelihood", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    probe = (torch.randint(0, 2, tuple(x.shape), generator=generator) * 2 - 1).to(torch.float32)
    t0 = time.perf_counter()
    logp, z, nfe = mod.reference_log_likelihood(score_fn, sde, x.float(), probe, rtol=rtol, atol=atol, eps=eps)
    return logp, z, int(nfe), time.perf_counter() - t0
