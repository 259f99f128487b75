"""Inverse-problem methods against the exact posterior (issue 13): ``python benchmarks/inverse.py``.

Problems: ring8 with x1 observed at 0, 1.5 and 3.6; aniso16 (``sd.anisotropic(16, 4, seed=0)``,
rotated covariances) with its first 8 coordinates observed at a point between modes 1 and 3
(posterior weights about 0.31 / 0.69), noiseless and with observation noise 0.1.  Every method
gets the exact unconditional score of the prior (VP SDE).  Measured per method and NFE budget:
posterior mode-by-mode W2 over the exact-sample floor of the posterior (``sd.metrics.exact_floor``
at the same n), mode-weight error, NFE (forward passes), backward passes and seconds.

The SMC rows include the resample-move SMC with evidence-pooled clouds (``potential=twisted moves=3
pool=True particles=100 oversample=8``: MALA rejuvenation after each level, 8 particles per returned
sample; see ``sd.inverse.smc``), at steps = NFE / 4 (NFE = 1 + 4 steps).

Writes benchmarks/results/inverse.md, inverse.csv and inverse.png (W2 / floor and mode-weight error
against NFE, one panel per problem).  One thread (set before torch loads).

``python benchmarks/inverse.py --seeds 5`` measures the spread over seeds instead (one seed per row
above): the recommended resample-move SMC on ring8 (x1 = 3.6) and aniso16 (8 of 16 observed, noise
0 and 0.1) at ``--steps`` 25 / 50 / 100 (101 / 201 / 401 NFE), seeds 0 .. N-1, ``--n`` samples
each, counting the seeds that meet the goal (mode-weight error <= 0.05 and W2 <= 1.5x the floor).
Writes benchmarks/results/inverse_seeds.md and .csv.
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
from scoresde import ops  # noqa: E402

torch.set_num_threads(1)
OUT = Path(__file__).resolve().parent / "results"


def problems():
    for v in (0.0, 1.5, 3.6):
        yield f"ring8 x1={v}", sd.ring8(), ops.Mask(torch.tensor([True, False])), torch.tensor([[v]])
    mix = sd.anisotropic(16, 4, seed=0)
    m = torch.zeros(16, dtype=torch.bool)
    m[:8] = True
    y = (0.475 * mix.means[1] + 0.525 * mix.means[3])[None, :8].clone()
    for s in (0.0, 0.1):
        yield f"aniso16 8/16 observed, noise {s}", mix, ops.Mask(m, noise_std=s), y


def _repaint_steps(nfe: int, jump_length: int, jumps: int) -> int:
    """The most RePaint steps whose schedule takes at most ``nfe`` score evaluations (down moves)."""
    best = 1
    for steps in range(1, nfe + 1):
        ts = sd.inverse.repaint_schedule(steps, jump_length, jumps)
        if sum(b < a for a, b in zip(ts, ts[1:])) <= nfe:
            best = steps
    return best


POOLED = dict(potential="twisted", moves=3, pool=True, particles=100, oversample=8)


def runs(nfe: int):
    """(method, options) at about ``nfe`` forward passes (replacement: predictor + corrector per step;
    RePaint: jumps of 5 steps, each stretch traversed 5 times, steps chosen to fit the budget)."""
    return [("smc", dict(steps=nfe)), ("smc", dict(steps=nfe, potential="tweedie")),
            ("smc", dict(steps=nfe // 4, **POOLED)),
            ("smc", dict(steps=nfe, potential="tweedie", twist_cov="jacobian")),
            ("replacement", dict(steps=nfe // 2)),
            ("projection", dict(steps=nfe, predictor="reverse_diffusion")),
            ("repaint", dict(steps=_repaint_steps(nfe, 5, 5), jump_length=5, jumps=5)),
            ("dps", dict(steps=nfe, predictor="reverse_diffusion")),
            ("pigdm", dict(steps=nfe, predictor="reverse_diffusion"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfe", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--smc-only-above", type=int, default=100,
                    help="budgets above this run only the SMC (time box)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="instead of the method table: the pooled SMC over this many seeds -> inverse_seeds.md")
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100],
                    help="with --seeds: the SMC's steps (NFE = 1 + 4 steps)")
    args = ap.parse_args()
    if args.seeds is not None:
        if args.seeds < 1:
            ap.error(f"--seeds must be >= 1, got {args.seeds}")
        seed_spread(args)
        return
    sde, n = sd.VPSDE(), args.n
    rows = []
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    for name, mix, op, y1 in problems():
        post = mix.condition(op, y1, noise_std=op.noise_std).prune(1e-6)
        floor = sd.metrics.exact_floor(post, n)
        Y = y1.float().expand(n, -1).clone()
        sf = mix.score_fn(sde)
        for k in args.nfe:
            for method, kw in runs(k):
                if k > args.smc_only_above and method != "smc":
                    continue
                t0 = time.perf_counter()
                o = sd.sample_posterior(sf, sde, op, Y, nonfinite="count", method=method,
                                        generator=torch.Generator().manual_seed(0), **kw)
                sec = time.perf_counter() - t0
                st = sd.metrics.mode_w2(o.x.double(), post)
                row = dict(problem=name, method=method, options=" ".join(f"{a}={b}" for a, b in kw.items()),
                           nfe=o.nfe, backward=o.backward_passes, weight_error=round(float(st.weight_error), 4),
                           w2=round(float(st.w2), 4), floor=round(floor, 4), w2_over_floor=round(float(st.w2) / floor, 2),
                           seconds=round(sec, 2))
                rows.append(row)
                print(row, flush=True)
    OUT.mkdir(exist_ok=True)
    with open(OUT / "inverse.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["# Inverse problems against the exact posterior (issue 13)", "",
             f"`python benchmarks/inverse.py --n {n} --nfe {' '.join(map(str, args.nfe))}`; VP SDE, exact prior score, "
             f"n = {n} samples of one posterior, seed 0, float32 sampling; 1 thread; load at start: `{load}` "
             "(a shared 2-core machine: seconds are only indicative).  One seed per row; the spread over seeds "
             "of the resample-move SMC is in inverse_seeds.md (`--seeds 5`).", "",
             "Goal (issue 13): best unconditional-score method with mode-weight error <= 0.05 and W2 <= 1.5x floor.", ""]
    lines += ["## Headline: the best method per problem against the goal", "",
              "| problem | best method | options | NFE | mode-weight error | W2 / floor | goal met | fewest NFE meeting it |",
              "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["problem"] for r in rows):
        b = min((r for r in rows if r["problem"] == name),
                key=lambda r: max(r["weight_error"] / 0.05, r["w2_over_floor"] / 1.5))
        ok = b["weight_error"] <= 0.05 and b["w2_over_floor"] <= 1.5
        met = sorted((r for r in rows if r["problem"] == name and r["weight_error"] <= 0.05 and r["w2_over_floor"] <= 1.5),
                     key=lambda r: r["nfe"])
        first = f"{met[0]['nfe']} ({met[0]['method']} {met[0]['options']})" if met else "none"
        lines.append(f"| {name} | {b['method']} | {b['options']} | {b['nfe']} | {b['weight_error']:.3f} | "
                     f"{b['w2_over_floor']:.2f} | {'yes' if ok else 'no'} | {first} |")
    lines += ["", "Best = the row with the smallest max(weight error / 0.05, (W2/floor) / 1.5).  The 16-d problem was "
              "missed by every earlier variant (FPS-SMC 5-7x the floor); the resample-move SMC with evidence-pooled "
              "clouds (``potential=twisted moves=3 pool=True particles=100 oversample=8``: MALA moves after every "
              "level, the score's trapezoidal line integral as the energy difference; clouds weighted by their "
              "evidence estimates; 8 particles per returned sample, so 8x the compute of the other rows at the same "
              "NFE) is what meets it.  Diagnosis and measurements in ``sd.inverse.smc``'s docstring.", ""]
    lines += ["![W2 / floor and mode-weight error against NFE](inverse.png)", ""]
    for name in dict.fromkeys(r["problem"] for r in rows):
        lines += [f"## {name}", "", "| method | options | NFE | backward | mode-weight error | W2 / floor | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["problem"] == name:
                lines.append(f"| {r['method']} | {r['options']} | {r['nfe']} | {r['backward']} | {r['weight_error']:.3f} "
                             f"| {r['w2_over_floor']:.2f} | {r['seconds']:.1f} |")
        lines.append("")
    (OUT / "inverse.md").write_text("\n".join(lines))
    plot(rows, OUT / "inverse.png")


def seed_spread(args) -> None:
    """The pooled SMC (``POOLED``) over seeds 0 .. ``args.seeds`` - 1 on ring8 x1 = 3.6 and both aniso16
    problems: how many seeds meet the goal, with the spread of both errors (inverse_seeds.md / .csv)."""
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
             f"`python benchmarks/inverse.py --seeds {args.seeds} --n {n}`; smc `{opts}`, "
             f"steps = {args.steps}, n = {n} samples of one posterior a seed; VP SDE, exact prior score; "
             f"1 thread; load at start: `{load}`.", "",
             "Goal: mode-weight error <= 0.05 and W2 <= 1.5x the exact-sample floor.", "",
             "| problem | NFE | seeds meeting the goal | mode-weight error (min / median / max) "
             "| W2 / floor (min / median / max) | clouds' ESS (of 160) | MALA acceptance | seconds a run |",
             "|---|---|---|---|---|---|---|---|"]
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
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


def _label(r: dict) -> str:
    o = r["options"].split()
    keep = [a for a in o if not a.startswith("steps=")]
    return r["method"] + (" " + " ".join(keep) if keep else "")


def plot(rows, path: Path) -> None:
    """W2 / floor (top) and mode-weight error (bottom) against NFE, one column per problem."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r["problem"] for r in rows))
    fig, ax = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7.5), squeeze=False)
    labels = list(dict.fromkeys(_label(r) for r in rows))
    cmap = plt.get_cmap("tab10")
    for j, name in enumerate(names):
        for k, lab in enumerate(labels):
            pts = sorted((r["nfe"], r["w2_over_floor"], r["weight_error"]) for r in rows
                         if r["problem"] == name and _label(r) == lab)
            if not pts:
                continue
            nfe = [p[0] for p in pts]
            w2 = [min(p[1], 200.0) for p in pts]          # inf (a lost mode) drawn at the top
            ax[0, j].plot(nfe, w2, "o-", color=cmap(k % 10), label=lab, lw=2 if "pool" in lab else 1)
            ax[1, j].plot(nfe, [max(p[2], 1e-3) for p in pts], "o-", color=cmap(k % 10), lw=2 if "pool" in lab else 1)
        ax[0, j].axhline(1.5, color="k", ls="--", lw=0.8)
        ax[1, j].axhline(0.05, color="k", ls="--", lw=0.8)
        ax[0, j].set(xscale="log", yscale="log", title=name, ylabel="W2 / exact-sample floor")
        ax[1, j].set(xscale="log", yscale="log", xlabel="NFE", ylabel="mode-weight error")
        ax[1, j].set_ylim(1e-3, 1)
    handles, labs = ax[0, 0].get_legend_handles_labels()
    fig.legend(handles, labs, loc="lower center", ncol=3, fontsize=8)
    for a in ax.ravel():
        a.set_xticks([100, 200, 400], ["100", "200", "400"])
        a.minorticks_off()
    fig.suptitle("issue 13: inverse problems against the exact posterior (dashed: the goal; W2 = inf drawn at 200)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
