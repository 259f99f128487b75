"""Seed spread of the resample-move SMC against issue 13's goal: ``python benchmarks/inverse_seeds.py``.

``benchmarks/inverse.py`` measures one seed per row; this reruns the recommended SMC
(``potential=twisted moves=3 pool=True particles=100 oversample=8``, see ``sd.inverse.smc``) on
ring8 (x1 = 3.6) and aniso16 (8 of 16 observed, noise 0 and 0.1) at 101 / 201 / 401 NFE over
seeds 0-4, n = 2,000 samples each, and counts how many seeds meet the goal (mode-weight error
<= 0.05 and W2 <= 1.5x the exact-sample floor).  Writes benchmarks/results/inverse_seeds.md and
.csv.  One thread (set before torch loads).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

import scoresde as sd  # noqa: E402

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
OUT = HERE / "results"


def main() -> None:
    import sys
    sys.path.insert(0, str(HERE))
    from inverse import POOLED, problems

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    args = ap.parse_args()
    sde, n = sd.VPSDE(), args.n
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for name, mix, op, y1 in problems():
        if name.startswith("ring8") and not name.endswith("3.6"):
            continue
        post = mix.condition(op, y1, noise_std=op.noise_std).prune(1e-6)
        floor = sd.metrics.exact_floor(post, n)
        Y = y1.float().expand(n, -1).clone()
        for steps in args.steps:
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                o = sd.sample_posterior(mix.score_fn(sde), sde, op, Y, nonfinite="count", method="smc", steps=steps,
                                        generator=torch.Generator().manual_seed(seed), **POOLED)
                st = sd.metrics.mode_w2(o.x.double(), post)
                rows.append(dict(problem=name, steps=steps, nfe=o.nfe, seed=seed,
                                 weight_error=round(float(st.weight_error), 4),
                                 w2_over_floor=round(float(st.w2) / floor, 3),
                                 cloud_ess=round(o.info["cloud_ess"], 1),
                                 acceptance=round(o.info["move_acceptance"], 3),
                                 seconds=round(time.perf_counter() - t0, 2)))
                print(rows[-1], flush=True)
    OUT.mkdir(exist_ok=True)
    with open(OUT / "inverse_seeds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    opts = " ".join(f"{k}={v}" for k, v in POOLED.items())
    lines = ["# Resample-move SMC against issue 13's goal: the spread over seeds", "",
             f"`python benchmarks/inverse_seeds.py --n {n} --seeds {args.seeds}`; smc `{opts}`, "
             f"steps = {args.steps}, n = {n} samples of one posterior a seed; VP SDE, exact prior score; "
             f"1 thread; load at start: `{load}`.", "",
             "Goal: mode-weight error <= 0.05 and W2 <= 1.5x the exact-sample floor.", "",
             "| problem | NFE | seeds meeting the goal | mode-weight error (min / median / max) "
             "| W2 / floor (min / median / max) | clouds' ESS (of 160) | MALA acceptance | seconds a run |",
             "|---|---|---|---|---|---|---|---|"]
    med = lambda v: sorted(v)[len(v) // 2]
    for name in dict.fromkeys(r["problem"] for r in rows):
        for steps in args.steps:
            rs = [r for r in rows if r["problem"] == name and r["steps"] == steps]
            we = [r["weight_error"] for r in rs]
            wf = [r["w2_over_floor"] for r in rs]
            ok = sum(r["weight_error"] <= 0.05 and r["w2_over_floor"] <= 1.5 for r in rs)
            lines.append(f"| {name} | {rs[0]['nfe']} | {ok} / {len(rs)} | {min(we):.3f} / {med(we):.3f} / {max(we):.3f} "
                         f"| {min(wf):.2f} / {med(wf):.2f} / {max(wf):.2f} | {med([r['cloud_ess'] for r in rs]):.0f} "
                         f"| {med([r['acceptance'] for r in rs]):.2f} | {med([r['seconds'] for r in rs]):.1f} |")
    lines.append("")
    (OUT / "inverse_seeds.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
