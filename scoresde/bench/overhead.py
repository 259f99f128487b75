"""The sampler-overhead benchmark: wall time / time inside the score, per sampler and batch size,
with the exact mixture score, optionally an untrained network's, and a score of next to no cost
(the samplers' own work measured alone)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .grid import DEFAULT_SAMPLERS, Cell, specs_from_config
from .problems import Problem, load_problem, network_problem
from .runner import Bench
from .tables import fmt, md_table, write_csv

__all__ = ["overhead_rows", "write_overhead"]


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
            return "" if r is None else fmt(1e3 * float(r["score_seconds"]), ".2f")

        cols = [("sampler", lambda lab: lab), ("NFE", (lambda by: lambda lab: str(by[(lab, batches[0])]["nfe"]))(by))]
        cols += [(f"n = {b:,}", (lambda b: lambda lab: cell_str(lab, b))(b)) for b in batches]
        cols += [(f"score ms (n = {b:,})", (lambda b: lambda lab: score_ms(lab, b))(b)) for b in dict.fromkeys((batches[0], batches[-1]))]
        if kind == "exact" and any(math.isfinite(float(r.get("free_us_per_nfe", "nan") or "nan")) for r in rs):
            cols.append((f"sampler us / NFE (free score, n = {batches[0]:,})",
                         (lambda by: lambda lab: fmt(float(by[(lab, batches[0])].get("free_us_per_nfe", "nan") or "nan"),
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
