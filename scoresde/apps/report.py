"""``scoresde-report SWEEP_DIR``: one table of a sweep's runs.

    scoresde-report multirun/train/2025-01-01/12-00-00
    scoresde-report multirun/... --metrics nll kl mode_w2 --sort nll --out reports/sde_sweep
    python -m scoresde.apps.report multirun/...

Every run directory below SWEEP_DIR that holds a ``metrics.json`` (written by scoresde-train)
gives one row: the run's path, the overrides that made it (``.hydra/overrides.yaml``; only the
keys that vary between runs get a column, the shared ones are listed once above the table), and
its scalar metrics.  The table is printed (Markdown) and written to ``report.csv`` and
``report.md``, with ``report.png``: one panel per metric, a point per run (labelled by its
overrides) with the standard error as an error bar where the run reports ``<metric>_se`` and its
floor where it reports ``<metric>_floor``, on an axis fitted to the values (the range is stated
in the panel's title: runs that differ by 0.009 nats around 2.12 are told apart, not flattened
against a zero baseline).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import yaml

from ._common import USER_ERRORS, report_user_error

__all__ = ["collect_runs", "report_table", "Table", "write_report", "report_figure", "main", "DEFAULT_METRICS"]

# the metrics shown (in this order) when present; --metrics chooses others
DEFAULT_METRICS = ("nll", "kl", "mode_w2", "mode_weight_error", "heldout_loss", "train_loss",
                   "sample_nfe", "nll_nfe", "train_time_s", "step")


def _overrides(run: Path) -> Dict[str, str]:
    f = run / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return {}
    items = yaml.safe_load(f.read_text()) or []
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def collect_runs(sweep_dir) -> List[Dict[str, Any]]:
    """One dict per run below ``sweep_dir``: ``run`` (its path relative to sweep_dir),
    ``overrides`` (key -> value as typed) and ``metrics`` (the scalars of metrics.json)."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    runs = []
    for f in sorted(root.rglob("metrics.json"), key=lambda p: _natural_key(p.parent.relative_to(root))):
        try:
            metrics = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            print(f"warning: skipping {f}: not valid JSON ({e})", file=sys.stderr)
            continue
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        runs.append({"run": str(f.parent.relative_to(root)) or ".", "overrides": _overrides(f.parent),
                     "metrics": scalars})
    return runs


def _natural_key(path: Path):
    # "10" after "9": sweep subdirs are job numbers
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


class Table(NamedTuple):
    header: List[str]          # "run", the varying override keys, the metrics
    rows: List[List[Any]]
    shared: Dict[str, str]     # overrides every run shares
    varying: List[str]
    metrics: List[str]


def report_table(runs: List[Dict[str, Any]], metrics: Optional[Sequence[str]] = None,
                 sort: Optional[str] = None) -> Table:
    """The table of ``runs`` (from :func:`collect_runs`): a row per run, sorted by ``sort``."""
    keys: List[str] = []
    for r in runs:
        keys += [k for k in r["overrides"] if k not in keys]
    values = {k: {r["overrides"].get(k) for r in runs} for k in keys}
    varying = [k for k in keys if len(values[k]) > 1]
    shared = {k: next(iter(values[k])) for k in keys if len(values[k]) == 1}
    present = {m for r in runs for m in r["metrics"]}
    if metrics:
        missing = [m for m in metrics if m not in present]
        if missing:
            raise ValueError(f"metric(s) {missing} appear in no run; available: {sorted(present)}")
        cols = list(metrics)
    else:
        cols = [m for m in DEFAULT_METRICS if m in present]
    if sort is not None:
        if sort not in present:
            raise ValueError(f"cannot sort by {sort!r}: no run reports it; available: {sorted(present)}")
        runs = sorted(runs, key=lambda r: (r["metrics"].get(sort) is None, r["metrics"].get(sort, 0.0)))
    header = ["run"] + varying + cols
    rows = [[r["run"]] + [r["overrides"].get(k, "") for k in varying] + [r["metrics"].get(m) for m in cols]
            for r in runs]
    return Table(header, rows, shared, varying, cols)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def markdown(table: Table) -> str:
    header, rows, shared = table.header, table.rows, table.shared
    lines = []
    if shared:
        lines.append("Shared overrides: " + ", ".join(f"`{k}={v}`" for k, v in shared.items()))
        lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fitted_range(lows: Sequence[float], highs: Sequence[float]) -> Tuple[float, float]:
    """An axis range around ``[min(lows), max(highs)]`` with 12% margins (never forced to 0: a
    0.009-nat difference between runs near 2.12 nats must fill the panel, not a hair of it)."""
    lo, hi = min(lows), max(highs)
    span = hi - lo
    if span <= 0:
        span = abs(hi) * 0.05 or 1.0
    return lo - 0.12 * span, hi + 0.12 * span


def report_figure(runs, table: Table, cols: Sequence[str]):
    """The figure of ``report.png``: one panel per metric in ``cols``, a point per run with its
    standard error (``<metric>_se``) as an error bar and its floor (``<metric>_floor``, e.g.
    ``mode_w2_floor``) as a grey bar-end, on an axis fitted to the values; the title states the
    range shown and the spread between the runs.  Points, not bars: a bar's length reads as the
    value itself, which a fitted axis would misstate.  None when there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, rows, n_varying = table.header, table.rows, len(table.varying)
    if not cols or not rows:
        return None
    labels = [", ".join(f"{header[1 + i]}={row[1 + i]}" for i in range(n_varying)) or row[0] for row in rows]
    by_run = {r["run"]: r for r in runs}
    width = max(3.5, 1.5 + 0.5 * len(rows))
    fig, axes = plt.subplots(1, len(cols), figsize=(width * len(cols), 4.2), squeeze=False)
    for ax, m in zip(axes[0], cols):
        j = header.index(m)
        xs = list(range(len(rows)))
        vals = [float(row[j]) if row[j] is not None else math.nan for row in rows]
        err = [float(by_run[row[0]]["metrics"].get(f"{m}_se", 0.0) or 0.0) for row in rows]
        err = [e if math.isfinite(e) else 0.0 for e in err]     # an undefined error bar draws as none
        floors = [by_run[row[0]]["metrics"].get(f"{m}_floor") for row in rows]
        ok = [i for i in xs if math.isfinite(vals[i])]
        ax.errorbar(xs, vals, yerr=err if any(err) else None, fmt="o", color="C0", capsize=4, markersize=6,
                    label=m)
        lows = [vals[i] - err[i] for i in ok]
        highs = [vals[i] + err[i] for i in ok]
        if any(f is not None for f in floors):
            fx = [i for i in xs if floors[i] is not None]
            ax.scatter(fx, [floors[i] for i in fx], marker="_", s=400, color="0.45", linewidths=2,
                       label="floor (exact samples)")
            finite = [float(floors[i]) for i in fx if math.isfinite(float(floors[i]))]
            lows += finite
            highs += finite
            ax.legend(fontsize=7, loc="best")
        title = m
        if lows:
            lo, hi = _fitted_range(lows, highs)
            ax.set_ylim(lo, hi)
            title += f"\naxis {_fmt(lo)} to {_fmt(hi)} (not from 0)"
            if ok:
                title += f", spread {max(vals[i] for i in ok) - min(vals[i] for i in ok):.3g}"
        ax.yaxis.get_major_formatter().set_useOffset(False)   # tick labels are the values themselves
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _plot(runs, table: Table, cols: Sequence[str], path: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    fig = report_figure(runs, table, cols)
    if fig is None:
        return None
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(sweep_dir, out_dir=None, metrics: Optional[Sequence[str]] = None, sort: Optional[str] = None,
                 plot_metrics: int = 4) -> Dict[str, Any]:
    """Collect, write report.csv / report.md / report.png into ``out_dir`` (default: sweep_dir),
    and return ``{"markdown", "header", "rows", "files"}``."""
    runs = collect_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no metrics.json below {sweep_dir}: is it a scoresde-train run or sweep directory?")
    table = report_table(runs, metrics, sort)
    header, rows = table.header, table.rows
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([["" if v is None else v for v in row] for row in rows])
    md = markdown(table)
    (out / "report.md").write_text(md)
    png = _plot(runs, table, table.metrics[:plot_metrics], out / "report.png")
    files = [out / "report.csv", out / "report.md"] + ([png] if png else [])
    return {"markdown": md, "header": header, "rows": rows, "files": files}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``scoresde-report``."""
    p = argparse.ArgumentParser(prog="scoresde-report", description=__doc__.split("\n\n")[0].strip("`: "))
    p.add_argument("sweep_dir", help="a sweep directory (multirun/...) or a single run directory")
    p.add_argument("--metrics", nargs="+", default=None, help="metric columns (default: the usual ones present)")
    p.add_argument("--sort", default=None, help="sort the rows by this metric (ascending)")
    p.add_argument("--out", default=None, help="where to write report.{csv,md,png} (default: SWEEP_DIR)")
    p.add_argument("--plot-metrics", type=int, default=4, help="how many metric columns to plot")
    args = p.parse_args(argv)
    try:
        rep = write_report(args.sweep_dir, args.out, args.metrics, args.sort, args.plot_metrics)
    except USER_ERRORS as e:
        return report_user_error(e)
    print(rep["markdown"], end="")
    print("written: " + ", ".join(str(f) for f in rep["files"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
