"""Benchmark plots: quality against NFE and against wall seconds (matplotlib is imported inside
the function, so importing the engine does not load it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from .tables import aggregate, mean_or_nan, quality_key, sde_order

__all__ = ["write_plots"]


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
        qk, qname = quality_key(prs)
        sdes = sorted({r["sde"] for r in prs}, key=sde_order)
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
                floor = 1.0 if qk == "w2_ratio" else mean_or_nan([r["sw2_floor"] for r in prs])
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
