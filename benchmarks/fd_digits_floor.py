"""FD-digits / KID-digits calibration: the real-vs-real floor at several n, and held-out digits under
added Gaussian noise and uniform noise at n = 300.  Writes benchmarks/results/fd_digits_floor.md.

    OMP_NUM_THREADS=1 python benchmarks/fd_digits_floor.py        # about 15 s on one thread

Floor: n held-out digits (of the 300 of ``digits_split(n_test=300, seed=0)``, drawn without
replacement, 10 draws; all 300 once at n = 300) against the statistics of the 1,497 training
digits, in the shipped digits network's feature space (:mod:`scoresde.metrics.digits`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoresde.metrics.digits import DIGITS_WEIGHTS_SHA256, _digits_unit, digits_floor, digits_scores  # noqa: E402


def row(name: str, n: int, r: dict) -> str:
    fd = f"{r['fd_digits']:.2f}" + (f" ± {r['fd_digits_std']:.2f}" if r.get("repeats", 1) > 1 else "")
    kid = f"{r['kid_digits']:.1f}" + (f" ± {r['kid_digits_std']:.1f}" if r.get("repeats", 1) > 1 else "")
    return f"| {name} | {n} | {fd} | {kid} | {r['is_digits']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |"


def main() -> None:
    lines = ["# FD-digits: the real-vs-real floor and noise", "",
             "Written by `python benchmarks/fd_digits_floor.py`.  Feature space: `digits-cnn-v1` (weights SHA-256 "
             f"`{DIGITS_WEIGHTS_SHA256[:16]}...`), reference: the 1,497 training digits of "
             "`digits_split(n_test=300, seed=0)`; samples rounded to the 17 levels.  KID: 20 subsets, seed 0; "
             "IS-digits: one split; precision/recall: k = 3.  ± is the standard deviation over 10 draws of n "
             "held-out digits (one draw at n = 300: all of them).", "",
             "| set | n | FD-digits | KID-digits | IS-digits | precision | recall |", "|---|---|---|---|---|---|---|"]
    for n in (50, 100, 200, 300):
        lines.append(row("real held-out (the floor)", n, digits_floor(n, repeats=10, seed=0, kid_subsets=20)))
    x = _digits_unit("test")
    g = torch.Generator().manual_seed(0)
    for s in (0.05, 0.1, 0.2, 0.4):
        y = (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)
        lines.append(row(f"held-out + N(0, {s}^2) pixel noise", 300, digits_scores(y, floor=False).as_dict()))
    lines.append(row("uniform noise", 300, digits_scores(torch.rand(300, 1, 8, 8, generator=g), floor=False).as_dict()))
    out = Path(__file__).parent / "results" / "fd_digits_floor.md"
    text = "\n".join(lines) + "\n"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(text)


if __name__ == "__main__":
    main()
