"""The benchmark grid: sampler specs, cells, and the grid's expansion (problem x SDE x sampler x
NFE budget x seed).

A **sampler spec** names a sampler and its fixed options and says how an NFE budget becomes its
options: ``steps = round(budget / nfe_per_step)`` (1 for Euler-type methods and DPM-Solver, 2 for
Heun or a predictor with one corrector step, 4 for RK4 or torchsde's SRK), or, for adaptive ODE
solvers, a list of tolerances (rtol = atol) in place of budgets.  The NFE reported is always the
count the sampler's wrapper made, never the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..samplers import build_sampler
from ..sde import build_sde
from .problems import is_checkpoint

__all__ = ["DETERMINISTIC", "SamplerSpec", "Cell", "expand_grid", "DEFAULT_SAMPLERS", "QUICK_SAMPLERS",
           "specs_from_config"]


# samplers that solve the probability-flow ODE without noise: their error against a tight
# reference solve from the same z is defined
DETERMINISTIC = ("ode", "dpm_solver", "unipc", "heun", "ipndm")


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
