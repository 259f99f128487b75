"""Benchmark tables: rows to CSV and back, averages over seeds, and the Markdown tables
(headline, overhead, every cell)."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

__all__ = ["FIELDS", "aggregate", "read_csv", "write_csv", "fmt", "md_table", "headline", "overhead_table",
           "write_markdown", "quality_key", "sde_order", "mean_or_nan"]

# the columns of a cell's row (Bench.run_cell), in the CSV's order
FIELDS = ["problem", "sde", "label", "sampler", "options", "budget", "tol", "seed", "n", "nfe", "seconds",
          "sec_per_nfe", "score_seconds", "overhead", "w2", "weight_error", "w2_floor", "w2_ratio", "sw2",
          "sw2_floor", "ode_err", "ode_err_med"]

_NUMERIC = ["nfe", "seconds", "sec_per_nfe", "score_seconds", "overhead", "w2", "weight_error", "w2_floor",
            "w2_ratio", "sw2", "sw2_floor", "ode_err", "ode_err_med"]


def mean_or_nan(vals: List[float]) -> float:
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
            a[k] = mean_or_nan([r[k] for r in rs])
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


def fmt(v, spec: str = ".3f") -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def md_table(rows: Sequence[Dict[str, Any]], cols: Sequence[Tuple[str, Any]]) -> str:
    """A Markdown table: ``cols`` are (header, row -> str)."""
    head = "| " + " | ".join(c[0] for c in cols) + " |\n|" + "|".join("---" for _ in cols) + "|\n"
    return head + "".join("| " + " | ".join(c[1](r) for c in cols) + " |\n" for r in rows)


def quality_key(rows) -> Tuple[str, str]:
    """Which number measures quality: W2/floor for mixtures, else sliced W2."""
    if any(math.isfinite(float(r["w2_ratio"])) or math.isinf(float(r["w2_ratio"])) for r in rows
           if not (isinstance(r["w2_ratio"], float) and math.isnan(r["w2_ratio"]))):
        return "w2_ratio", "W2 / exact floor"
    return "sw2", "sliced W2"


def headline(agg: Sequence[Dict[str, Any]]) -> str:
    """Per problem and SDE: quality of each budgeted sampler (rows) at each NFE budget (columns),
    and the adaptive solvers' tolerance, NFE and quality."""
    out = []
    for (prob, sde) in sorted({(r["problem"], r["sde"]) for r in agg}, key=lambda k: (k[0], sde_order(k[1]))):
        rs = [r for r in agg if r["problem"] == prob and r["sde"] == sde]
        qk, qname = quality_key(rs)
        budgets = sorted({int(r["budget"]) for r in rs if r["budget"] != ""})
        labels = list(dict.fromkeys(r["label"] for r in rs if r["budget"] != ""))
        out.append(f"### {prob}, {sde}: {qname} by NFE budget\n")
        if labels:
            cells = {(r["label"], int(r["budget"])): r for r in rs if r["budget"] != ""}
            cols = [("sampler", lambda lab: lab)] + [
                (str(b), (lambda b: lambda lab: fmt(cells[(lab, b)][qk], ".2f") if (lab, b) in cells else "")(b))
                for b in budgets]
            out.append(md_table(labels, cols))
        adaptive = [r for r in rs if r["budget"] == ""]
        if adaptive:
            out.append("\n" + md_table(adaptive, [("adaptive sampler", lambda r: r["label"]),
                                                  ("tol", lambda r: fmt(r["tol"], "g")),
                                                  ("NFE", lambda r: fmt(r["nfe"], ".0f")),
                                                  (qname, lambda r: fmt(r[qk], ".2f")),
                                                  ("ODE error", lambda r: fmt(r["ode_err"], ".1e"))]))
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
                                ("median", lambda r: fmt(r["median"], ".2f")), ("max", lambda r: fmt(r["max"], ".2f")),
                                ("one score eval (ms)", lambda r: fmt(r["score_ms"], ".2f")),
                                ("<= 1.1", lambda r: "yes" if r["met"] else "**no**")]))
    md.append("## All cells (mean over seeds)\n")
    for (prob, sde) in sorted({(r["problem"], r["sde"]) for r in agg}, key=lambda k: (k[0], sde_order(k[1]))):
        rs = [r for r in agg if r["problem"] == prob and r["sde"] == sde]
        md.append(f"### {prob}, {sde}\n")
        md.append(md_table(rs, [("sampler", lambda r: r["label"]), ("budget/tol", lambda r: str(r["budget"] or r["tol"])),
                                ("NFE", lambda r: fmt(r["nfe"], ".0f")), ("s", lambda r: fmt(r["seconds"], ".2f")),
                                ("ms/NFE", lambda r: fmt(1e3 * r["sec_per_nfe"], ".2f")),
                                ("overhead", lambda r: fmt(r["overhead"], ".2f")),
                                ("W2", lambda r: fmt(r["w2"], ".4f")), ("W2/floor", lambda r: fmt(r["w2_ratio"], ".2f")),
                                ("sd", lambda r: fmt(r["w2_ratio_sd"], ".2f")),
                                ("weight err", lambda r: fmt(r["weight_error"], ".4f")),
                                ("SW2", lambda r: fmt(r["sw2"], ".4f")), ("SW2 floor", lambda r: fmt(r["sw2_floor"], ".4f")),
                                ("ODE err", lambda r: fmt(r["ode_err"], ".1e"))]))
    floors = {r["problem"]: (r["w2_floor"], r["sw2_floor"]) for r in agg}
    md.append("Floors (n = %s): " % (agg[0]["n"] if agg else "") + "; ".join(
        f"{k}: W2 {fmt(a, '.4f') or '-'}, SW2 {fmt(b, '.4f')}" for k, (a, b) in floors.items()) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md))
    return path


def sde_order(s: str) -> int:
    order = ["vp", "subvp", "ve"]
    return order.index(s) if s in order else len(order)
