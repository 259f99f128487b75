"""``scoresde-report SWEEP_DIR``: one table of a sweep's runs.

    scoresde-report multirun/train/2025-01-01/12-00-00
    scoresde-report multirun/... --metrics nll kl mode_w2 --sort nll --out reports/sde_sweep
    python -m scoresde.apps.report multirun/...

Every run directory below SWEEP_DIR that holds a ``metrics.json`` (written by scoresde-train)
gives one row: the run's path, the overrides that made it (``.hydra/overrides.yaml``; only the
keys that vary between runs get a column, the shared ones are listed once above the table), and
its scalar metrics.  The table is printed (Markdown) and written to ``report.csv`` and
``report.md``, with ``report.png``: one bar chart per metric, a bar per run (labelled by its
overrides), with the standard error as an error bar where the run reports ``<metric>_se``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import yaml

from ._common import USER_ERRORS, report_user_error

__all__ = ["collect_runs", "report_table", "Table", "write_report", "main", "DEFAULT_METRICS"]

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


def _plot(runs, table: Table, cols: Sequence[str], path: Path) -> Optional[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, rows, n_varying = table.header, table.rows, len(table.varying)
    if not cols or not rows:
        return None
    labels = [", ".join(f"{header[1 + i]}={row[1 + i]}" for i in range(n_varying)) or row[0] for row in rows]
    by_run = {r["run"]: r for r in runs}
    width = max(3.5, 1.5 + 0.5 * len(rows))
    fig, axes = plt.subplots(1, len(cols), figsize=(width * len(cols), 3.8), squeeze=False)
    for ax, m in zip(axes[0], cols):
        j = header.index(m)
        vals = [row[j] if row[j] is not None else math.nan for row in rows]
        err = [by_run[row[0]]["metrics"].get(f"{m}_se", 0.0) for row in rows]
        ax.bar(range(len(rows)), vals, yerr=err if any(err) else None, color="C0", capsize=3)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(m)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
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
