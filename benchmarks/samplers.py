"""Sampler quality against NFE on exact Gaussian-mixture scores.

    python benchmarks/samplers.py            # full run (about 20-30 minutes on 2 CPU cores)
    python benchmarks/samplers.py --quick    # a smoke run: 2,000 samples, one seed, VP on ring8

Quality is the mode-by-mode W2 of the samples to the mixture (scoresde.metrics.mode_w2), reported
as a ratio to the same distance for as many fresh exact samples (metrics.exact_floor, the best any
sampler can score at that n: about 0.013 for ring8 at n = 10,000).  The score is the mixture's
exact score, so every error is the sampler's.  NFE is counted by the samplers' wrapper.

Writes benchmarks/results/samplers.md, samplers.csv and samplers.png (W2/floor against NFE).
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scoresde as sd  # noqa: E402
from scoresde import metrics  # noqa: E402
from scoresde.samplers import integrate_probability_flow  # noqa: E402
from scoresde.samplers.fast import GRIDS  # noqa: E402

EPS = 1e-3
MAIN = [  # (label, sampler, options)
    ("ode (dopri5, 1e-5)", "ode", {}),
    ("pc EM, 500 steps", "pc", dict(steps=500)),
    ("sde euler, 500 steps", "sde", dict(steps=500)),
    ("dpm_solver, 10", "dpm_solver", dict(steps=10)),
    ("dpm_solver, 20", "dpm_solver", dict(steps=20)),
    ("unipc, 10", "unipc", dict(steps=10)),
    ("unipc, 20", "unipc", dict(steps=20)),
    ("heun, 10 NFE", "heun", dict(steps=5)),
    ("heun, 20 NFE", "heun", dict(steps=10)),
]


def fmt_opts(o: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in o.items())


class Bench:
    def __init__(self, n: int, seeds: int):
        self.n, self.seeds = n, seeds
        self.floors = {}
        self.rows = []

    def floor(self, mix_name: str) -> float:
        if mix_name not in self.floors:
            self.floors[mix_name] = metrics.exact_floor(sd.get_mixture(mix_name), self.n, repeats=10)
        return self.floors[mix_name]

    def run(self, section, mix_name, sde_name, label, sampler, opts, seeds=None):
        mix, sde = sd.get_mixture(mix_name), sd.get_sde(sde_name)
        score = mix.score_fn(sde)
        w2, we, nfe, sec = [], [], [], []
        for seed in range(seeds or self.seeds):
            out = sd.sample(score, sde, (self.n, mix.dim), sampler=sampler, eps=EPS,
                            generator=torch.Generator().manual_seed(1000 + seed), **opts)
            st = metrics.mode_w2(out.x, mix)
            w2.append(st.w2), we.append(st.weight_error), nfe.append(out.nfe), sec.append(out.seconds)
        row = dict(section=section, mixture=mix_name, sde=sde_name, label=label, sampler=sampler,
                   options=fmt_opts(opts), nfe=statistics.mean(nfe), w2=statistics.mean(w2),
                   ratio=statistics.mean(w2) / self.floor(mix_name),
                   ratio_sd=(statistics.stdev(w2) / self.floor(mix_name)) if len(w2) > 1 else float("nan"),
                   weight_error=statistics.mean(we), seconds=statistics.mean(sec), seeds=len(w2), path_err="")
        self.rows.append(row)
        print(f"[{section}] {mix_name} {sde_name} {label}: nfe {row['nfe']:.0f} "
              f"W2/floor {row['ratio']:.3f} werr {row['weight_error']:.4f} {row['seconds']:.1f}s", flush=True)
        return row


def ode_variables(b: Bench, mix_name: str, sde_names, tols):
    """NFE and pathwise error against a tight reference, for each time variable and tolerance."""
    mix = sd.get_mixture(mix_name)
    for sde_name in sde_names:
        sde = sd.get_sde(sde_name)
        score = mix.score_fn(sde)
        z = sde.prior_sample((b.n, mix.dim), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        ref, _ = integrate_probability_flow(score, sde, z, sde.T, EPS, rtol=1e-10, atol=1e-10, time_variable="t")
        for var in ("t", "sigma", "log_sigma"):
            for tol in tols:
                calls = [0]

                def counted(x, t):
                    calls[0] += 1
                    return score(x, t)

                t0 = time.perf_counter()
                x, _ = integrate_probability_flow(counted, sde, z.float(), sde.T, EPS, rtol=tol, atol=tol,
                                                  time_variable=var)
                sec = time.perf_counter() - t0
                err = (x.double() - ref).norm(dim=1)
                w2 = metrics.mode_w2(x, mix).w2
                row = dict(section="ode_time_variable", mixture=mix_name, sde=sde_name,
                           label=f"{var}, tol {tol:g}", sampler="ode",
                           options=f"time_variable={var} rtol={tol:g} atol={tol:g}", nfe=calls[0], w2=w2,
                           ratio=w2 / b.floor(mix_name), ratio_sd=float("nan"), weight_error=float("nan"),
                           seconds=sec, seeds=1,
                           path_err=f"{float(err.median()):.2e} / {float(err.mean()):.2e}")
                b.rows.append(row)
                print(f"[ode_time_variable] {sde_name} {var} {tol:g}: nfe {calls[0]} median/mean err "
                      f"{row['path_err']} W2/floor {row['ratio']:.3f}", flush=True)


def write_outputs(b: Bench, out_dir: pathlib.Path, args, elapsed: float):
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = ["section", "mixture", "sde", "label", "sampler", "options", "nfe", "w2", "ratio", "ratio_sd",
            "weight_error", "seconds", "seeds", "path_err"]
    with open(out_dir / "samplers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in b.rows:
            w.writerow({k: r[k] for k in keys})

    def table(rows, cols):
        head = "| " + " | ".join(c[0] for c in cols) + " |\n|" + "|".join("---" for _ in cols) + "|\n"
        return head + "".join("| " + " | ".join(c[1](r) for c in cols) + " |\n" for r in rows)

    f3 = lambda k: (lambda r: "" if isinstance(r[k], float) and math.isnan(r[k]) else f"{r[k]:.3f}")
    base_cols = [("sampler", lambda r: r["label"]), ("NFE", lambda r: f"{r['nfe']:.0f}"),
                 ("W2", lambda r: f"{r['w2']:.4f}"), ("W2/floor", f3("ratio")), ("sd", f3("ratio_sd")),
                 ("weight err", lambda r: f"{r['weight_error']:.4f}"), ("s", lambda r: f"{r['seconds']:.1f}")]
    md = ["# Samplers: quality against NFE on exact mixture scores\n",
          f"`python benchmarks/samplers.py{' --quick' if args.quick else ''}` "
          f"(n = {b.n} samples, {b.seeds} seed(s) averaged, eps = {EPS}, torch threads = {args.threads}, "
          f"{elapsed / 60:.1f} min).  W2 = mode-by-mode W2 to the mixture; floor = the same for n fresh "
          "exact samples (" + ", ".join(f"{k}: {v:.4f}" for k, v in b.floors.items()) + "); "
          "sd = standard deviation of W2/floor over the seeds.\n"]
    main = [r for r in b.rows if r["section"] == "main"]
    if main:
        md.append("## Goals\n")
        goal_rows = []
        for (mix_name, sde_name) in sorted({(r["mixture"], r["sde"]) for r in main}):
            rs = {r["label"]: r for r in main if r["mixture"] == mix_name and r["sde"] == sde_name}

            def g(label, ok, val):
                goal_rows.append((mix_name, sde_name, label, val, "yes" if ok else "**no**"))

            if "ode (dopri5, 1e-5)" in rs:
                r = rs["ode (dopri5, 1e-5)"]
                g("ode default <= 1.25x floor, <= 150 NFE", r["ratio"] <= 1.25 and r["nfe"] <= 150,
                  f"{r['ratio']:.3f}x, {r['nfe']:.0f} NFE")
            for lab in ("pc EM, 500 steps", "sde euler, 500 steps"):
                if lab in rs:
                    g(f"{lab} <= 1.5x", rs[lab]["ratio"] <= 1.5, f"{rs[lab]['ratio']:.3f}x")
            few = [r for r in rs.values() if r["sampler"] in ("dpm_solver", "unipc", "heun")]
            best20 = min((r for r in few if r["nfe"] <= 20), key=lambda r: r["ratio"], default=None)
            if best20:
                g("best few-step <= 20 NFE <= 1.2x", best20["ratio"] <= 1.2,
                  f"{best20['label']}: {best20['ratio']:.3f}x")
            best10 = min((r for r in few if r["nfe"] <= 10), key=lambda r: r["ratio"], default=None)
            if best10 and mix_name == "ring8":
                g("best at 10 NFE beats k-diffusion/DPM-Solver refs (W2 0.087, ~6x)", best10["w2"] < 0.087,
                  f"{best10['label']}: W2 {best10['w2']:.4f} ({best10['ratio']:.2f}x)")
        md.append("| mixture | SDE | goal | measured | met |\n|---|---|---|---|---|\n" +
                  "".join(f"| {a} | {b_} | {c} | {d} | {e} |\n" for a, b_, c, d, e in goal_rows))
        md.append("## All samplers\n")
        for (mix_name, sde_name) in sorted({(r["mixture"], r["sde"]) for r in main}):
            md.append(f"### {mix_name}, {sde_name}\n")
            md.append(table([r for r in main if r["mixture"] == mix_name and r["sde"] == sde_name], base_cols))
    sections = [
        ("curve", "## W2/floor against NFE (ring8; the plot)\n"),
        ("grid", "## Time grids for the few-step solvers (ring8)\n\nvp_quadratic = uniform in sqrt(t) of "
                 "the default VP SDE at the same sigma~ (DPM-Solver's time_quadratic carried to every SDE).\n"),
        ("end", "## End of the trajectory: stop at eps (denoise=False) or a last step to sigma = 0 "
                "(denoise=True), equal NFE\n"),
    ]
    for sec, title in sections:
        rs = [r for r in b.rows if r["section"] == sec]
        if rs:
            md.append(title)
            md.append(table(rs, [("mixture", lambda r: r["mixture"]), ("SDE", lambda r: r["sde"])] + base_cols[:5]))
    rs = [r for r in b.rows if r["section"] == "ode_time_variable"]
    if rs:
        md.append("## Probability-flow ODE: time variable (dopri5, rtol = atol = tol; path error = |x - x_ref| "
                  "against rtol = atol = 1e-10, median / mean)\n")
        md.append(table(rs, [("SDE", lambda r: r["sde"]), ("variable, tol", lambda r: r["label"]),
                             ("NFE", lambda r: f"{r['nfe']:.0f}"), ("path error", lambda r: r["path_err"]),
                             ("W2/floor", f3("ratio"))]))
    (out_dir / "samplers.md").write_text("\n".join(md))

    curve = [r for r in b.rows if r["section"] in ("curve",)]
    if curve:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        sdes = sorted({r["sde"] for r in curve}, key=["vp", "subvp", "ve"].index)
        fig, axes = plt.subplots(1, len(sdes), figsize=(5 * len(sdes), 4), squeeze=False)
        styles = {"dpm_solver": ("C0", "o-"), "unipc": ("C1", "s-"), "heun": ("C2", "^-"),
                  "ode": ("C3", "D-"), "pc": ("C4", "v-"), "sde": ("C5", "x-")}
        for ax, s in zip(axes[0], sdes):
            for fam, (color, style) in styles.items():
                pts = sorted((r["nfe"], r["ratio"]) for r in curve if r["sde"] == s and r["sampler"] == fam)
                if pts:
                    lab = {"pc": "pc (Euler-Maruyama)", "sde": "sde (torchsde euler)",
                           "ode": "ode (dopri5, tol 1e-3..1e-5)"}.get(fam, fam)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=lab)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.axhline(1.2, color="k", lw=0.8, ls="--")
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.set_xlabel("NFE"), ax.set_ylabel("W2 / exact-sample floor")
            ax.set_title(f"ring8, {s}, n = {b.n}")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "samplers.png", dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 samples, one seed, VP on ring8 only")
    ap.add_argument("--n", type=int, default=None, help="samples per run (default 10,000)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds averaged (default 3)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the mixture score is small ops, threads only contend)")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or (2000 if args.quick else 10_000)
    seeds = args.seeds or (1 if args.quick else 3)
    b = Bench(n, seeds)
    start = time.perf_counter()
    sdes = ["vp"] if args.quick else ["vp", "subvp", "ve"]
    mixes = ["ring8"] if args.quick else ["ring8", "aniso16"]
    for mix_name in mixes:
        for sde_name in sdes:
            for label, sampler, opts in MAIN:
                b.run("main", mix_name, sde_name, label, sampler, opts,
                      seeds=None if mix_name == "ring8" else max(1, seeds - 1))
    # W2/floor against NFE for the plot (one seed per point past the main table's)
    curve = [("dpm_solver", dict(steps=s)) for s in (6, 8, 10, 15, 20, 30)]
    curve += [("unipc", dict(steps=s)) for s in (6, 8, 10, 15, 20, 30)]
    curve += [("heun", dict(steps=s)) for s in (3, 5, 8, 10, 15)]
    curve += [("ode", dict(rtol=tol, atol=tol)) for tol in (1e-3, 1e-4, 1e-5)]
    if not args.quick:
        curve += [("pc", dict(steps=s)) for s in (100, 200, 500, 1000)]
        curve += [("sde", dict(steps=s)) for s in (100, 200, 500, 1000)]
    for sde_name in sdes:
        for sampler, opts in curve:
            b.run("curve", "ring8", sde_name, f"{sampler} {fmt_opts(opts)}", sampler, opts, seeds=1)
    for sde_name in sdes:
        for sampler, steps in (("dpm_solver", 10), ("dpm_solver", 20), ("unipc", 10), ("unipc", 20),
                               ("heun", 5), ("heun", 10)):
            for grid in GRIDS:
                b.run("grid", "ring8", sde_name, f"{sampler} steps={steps} grid={grid}", sampler,
                      dict(steps=steps, grid=grid), seeds=1)
        for sampler, steps in (("dpm_solver", 10), ("dpm_solver", 20), ("heun", 5), ("heun", 10)):
            for den in (False, True):
                st = steps + (1 if sampler == "heun" and den else 0)  # equal NFE: 2 steps - 1 vs 2 steps
                if sampler == "heun" and den:
                    continue_label = f"{sampler} steps={st} denoise=True (NFE {2 * st - 1})"
                else:
                    continue_label = f"{sampler} steps={st} denoise={den}"
                b.run("end", "ring8", sde_name, continue_label, sampler, dict(steps=st, denoise=den), seeds=1)
    ode_variables(b, "ring8", sdes, (1e-3, 1e-4, 1e-5))
    write_outputs(b, args.out, args, time.perf_counter() - start)
    print(f"wrote {args.out / 'samplers.md'}, samplers.csv, samplers.png")


if __name__ == "__main__":
    main()
