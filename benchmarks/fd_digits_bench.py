"""FD-digits against NFE on the digits U-Net: the ODE-vs-SDE sampler comparison at image scale.

For a trained ``experiment=digits`` run (and, with ``--cond-run``, its class-conditional twin
``experiment=digits_cond``) draws ``--n`` samples with every sampler at every NFE budget, scores
them with :func:`scoresde.metrics.digits_scores` (FD-digits, KID-digits, IS-digits,
precision/recall in the shipped digits network's feature space, against the 1,497 training digits)
and puts them beside the real-vs-real floor at the same n (n held-out digits against the same
statistics).  FD-digits is not comparable to Inception FID; compare it only at the same n.

- fixed-step samplers at ``--nfe`` (default 10 20 50 100 200): ``pc`` (reverse-diffusion
  predictor, no corrector: Song et al.'s "reverse diffusion" sampler, NFE = steps), ``sde``
  (torchsde Euler-Maruyama), ``dpm_solver`` (DPM-Solver++ multistep, its default order), ``unipc``
  and ``ipndm``, each with its defaults apart from ``steps``;
- ``pc`` with the Langevin corrector (reverse diffusion + one Langevin step, snr 0.16: 2 NFE a
  step) under both Langevin norms, ``batch`` (the default) and ``sample`` (the per-sample rule,
  the one per-item / sharded sampling accepts), at ``--langevin-nfe``;
- the probability-flow ODE (dopri5) at ``--tols`` (rtol = atol), its NFE as measured.

Every cell draws its noise from ``torch.Generator().manual_seed(--seed)`` (the same prior draw for
every sampler: common random numbers), one batch of n.  Class-conditional: labels 0..9 in turn
(n / 10 of each), classifier-free guidance at ``--scales`` (default 1 and 2; scale 1 is the
conditional model alone, one network call per NFE; scale 2 costs two).

    python benchmarks/fd_digits_bench.py --run-dir runs/digits --cond-run runs/digits_cond
    python benchmarks/fd_digits_bench.py --run-dir runs/digits --n 100 --nfe 10 50   # quicker

Writes benchmarks/results/fd_digits_bench.md, .csv and .png (rows are appended to the CSV as
they finish, so an interrupted run keeps what it did; ``--resume`` skips those rows).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoresde.apps.sample import sample_checkpoint  # noqa: E402
from scoresde.checkpoints import load_score  # noqa: E402
from scoresde.metrics import digits_floor, digits_scores  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FIELDS = ["model", "scale", "sampler", "setting", "budget", "nfe", "network_calls", "fd_digits", "kid_digits",
          "is_digits", "precision", "recall", "seconds"]
FIXED = ("pc", "sde", "dpm_solver", "unipc", "ipndm")


def cells(nfes, tols, langevin_nfes, fixed=FIXED):
    """(sampler label, setting, budget, sampler options) of every cell."""
    out = []
    for name in fixed:
        for nfe in nfes:
            opts = {"name": name, "steps": nfe}
            if name == "pc":
                opts.update(predictor="reverse_diffusion", corrector="none")
            out.append((name, "defaults", nfe, opts))
    for nfe in langevin_nfes:
        for norm in ("batch", "sample"):
            out.append((f"pc+langevin ({norm})", f"snr 0.16, langevin_norm={norm}", nfe,
                        {"name": "pc", "predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16,
                         "steps": nfe // 2, "langevin_norm": norm}))
    for tol in tols:
        out.append(("ode", f"dopri5 rtol=atol={tol:g}", None, {"name": "ode", "rtol": tol, "atol": tol}))
    return out


def run(args):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "fd_digits_bench.csv"
    done = set()
    if args.resume and path.is_file():
        with path.open() as f:
            done = {(r["model"], r["scale"], r["sampler"], r["setting"], r["budget"]) for r in csv.DictReader(f)}
    else:
        with path.open("w", newline="") as f:
            csv.DictWriter(f, FIELDS).writeheader()
    models = [("digits", Path(args.run_dir), [None])]
    if args.cond_run:
        models.append(("digits_cond", Path(args.cond_run), list(args.scales)))
    t_start = time.perf_counter()
    for model, run_dir, scales in models:
        loaded = load_score(run_dir / "checkpoints" / "last.pt", "cpu", True)
        for scale in scales:
            plan = (cells(args.nfe, args.tols, args.langevin_nfe) if scale is None else
                    cells(args.cond_nfe, args.cond_tols, [], fixed=args.cond_samplers))
            if scale is None:   # the seed-to-seed spread of one cell: what a difference must beat
                plan += [("dpm_solver", f"seed {sd}", args.spread_nfe, {"name": "dpm_solver", "steps": args.spread_nfe})
                         for sd in args.spread_seeds]
            for label, setting, budget, opts in plan:
                key = (model, "" if scale is None else str(scale), label, setting,
                       "" if budget is None else str(budget))
                if key in done:
                    continue
                if time.perf_counter() - t_start > args.max_minutes * 60:
                    print(f"time cap of {args.max_minutes} min reached: skipping {key}", flush=True)
                    continue
                kw = {} if scale is None else dict(labels=[i % 10 for i in range(args.n)],
                                                   guidance={"kind": "cfg", "scale": float(scale)})
                seed = int(setting.split()[-1]) if setting.startswith("seed ") else args.seed
                x, info = sample_checkpoint(loaded, opts, args.n, None, seed, "cpu", True, False, **kw)
                s = digits_scores(x, floor=False, seed=args.seed)
                row = dict(zip(FIELDS, [*key[:4], key[4], info["nfe"], info.get("network_calls", info["nfe"]),
                                        s.fd_digits, s.kid_digits, s.is_digits, s.precision, s.recall,
                                        info["seconds"]]))
                with path.open("a", newline="") as f:
                    csv.DictWriter(f, FIELDS).writerow(row)
                print(f"{model} scale={scale} {label} {setting} budget={budget}: NFE {info['nfe']}, "
                      f"FD-digits {s.fd_digits:.2f}, {info['seconds']:.1f} s", flush=True)


def _f(v, spec=".2f"):
    return "-" if v in ("", None) else format(float(v), spec)


def write(args, load_before, minutes):
    with (RESULTS / "fd_digits_bench.csv").open() as f:
        allrows = list(csv.DictReader(f))
    rows = [r for r in allrows if not r["setting"].startswith("seed ")]
    spread = [float(r["fd_digits"]) for r in allrows if r["setting"].startswith("seed ")]
    base = next((float(r["fd_digits"]) for r in rows if r["model"] == "digits" and r["sampler"] == "dpm_solver"
                 and r["budget"] == str(args.spread_nfe)), None)
    if base is not None and spread:
        spread = [base] + spread
    fl = digits_floor(args.n, repeats=10, seed=0)
    shown = " ".join(a for a in sys.argv[1:] if a not in ("--write-only", "--resume"))
    trained = []
    for d in (args.run_dir, args.cond_run):
        ov = Path(d or "") / ".hydra" / "overrides.yaml"
        if d and ov.is_file():
            items = [ln[2:].strip() for ln in ov.read_text().splitlines() if ln.startswith("- ")]
            trained.append(f"`python -m scoresde train {' '.join(i for i in items if not i.startswith('hydra.'))}`")
    md = ["# FD-digits against NFE: the digits U-Nets under every sampler\n",
          f"Written by `python benchmarks/fd_digits_bench.py {shown}`.  Models trained by "
          f"{' and '.join(trained) or 'the presets'}.  Models: "
          f"`{args.run_dir}` (experiment=digits) and `{args.cond_run}` (experiment=digits_cond), EMA weights.  "
          f"n = {args.n} samples per cell, one batch, seed {args.seed} (the same prior draw for every sampler).  "
          "Feature space `digits-cnn-v1` (the shipped digits network; not Inception FID), samples rounded to "
          "the 17 levels, reference: the 1,497 training digits (split n_test=300, seed 0).  KID-digits, "
          "IS-digits and precision/recall (k = 3) of every cell are in fd_digits_bench.csv.",
          f"\n**Floor** (real vs real at n = {args.n}: {args.n} held-out digits against the same training "
          f"statistics, {'all of them, one draw' if fl['repeats'] == 1 else str(fl['repeats']) + ' draws'}): "
          f"FD-digits {fl['fd_digits']:.2f}, "
          f"precision {fl['precision']:.3f}, recall {fl['recall']:.3f}.",
          f"\nRun: one thread; the sampling alone took {sum(float(r['seconds']) for r in allrows) / 60:.1f} min "
          f"summed over the cells (see the CSV's seconds), on 2 cores shared with other jobs (load average "
          f"{load_before[0]:.1f} when this file was written): the seconds are indicative only.\n"]
    if len(spread) > 1:
        mu = sum(spread) / len(spread)
        sdv = math.sqrt(sum((v - mu) ** 2 for v in spread) / (len(spread) - 1))
        md.append(f"**Seed-to-seed spread** of one cell (dpm_solver, {args.spread_nfe} NFE, seeds {args.seed} and "
                  f"{', '.join(map(str, args.spread_seeds))}): FD-digits {mu:.2f} +- {sdv:.2f} (std over "
                  f"{len(spread)} seeds): differences between cells below about twice that are noise.\n")
    for model in dict.fromkeys(r["model"] for r in rows):
        for scale in dict.fromkeys(r["scale"] for r in rows if r["model"] == model):
            rs = [r for r in rows if r["model"] == model and r["scale"] == scale]
            md.append(f"\n## {model}" + (f", classifier-free guidance scale {scale}" if scale else "") + "\n")
            budgets = sorted({int(r["budget"]) for r in rs if r["budget"]})
            md.append("FD-digits (NFE in brackets where it differs from the budget; network calls = NFE x 2 "
                      "at guidance scales other than 1):\n" if scale else "FD-digits by sampler (rows) and NFE budget "
                      "(columns):\n")
            md.append("| sampler | " + " | ".join(str(b) for b in budgets) + " |")
            md.append("|---|" + "---|" * len(budgets))
            for lab in dict.fromkeys(r["sampler"] for r in rs if r["budget"]):
                cellv = []
                for b in budgets:
                    r = next((r for r in rs if r["sampler"] == lab and r["budget"] == str(b)), None)
                    cellv.append("" if r is None else
                                 _f(r["fd_digits"]) + ("" if int(r["nfe"]) == b else f" ({r['nfe']})"))
                md.append(f"| {lab} | " + " | ".join(cellv) + " |")
            odes = [r for r in rs if not r["budget"]]
            if odes:
                md.append("\n| ODE (probability flow) | NFE | FD-digits | precision | recall |\n|---|---|---|---|---|")
                for r in odes:
                    md.append(f"| {r['setting']} | {r['nfe']} | {_f(r['fd_digits'])} | {_f(r['precision'], '.3f')} | "
                              f"{_f(r['recall'], '.3f')} |")
            best = min(rs, key=lambda r: float(r["fd_digits"]))
            md.append(f"\nBest cell: {best['sampler']} ({best['setting']}) at NFE {best['nfe']}: FD-digits "
                      f"{_f(best['fd_digits'])}.")
    (RESULTS / "fd_digits_bench.md").write_text("\n".join(md) + "\n")
    plot(rows, fl, args.n, RESULTS / "fd_digits_bench.png")


def plot(rows, fl, n, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = [(m, s) for m in dict.fromkeys(r["model"] for r in rows)
              for s in dict.fromkeys(r["scale"] for r in rows if r["model"] == m)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (m, s) in zip(axes[0], groups):
        rs = [r for r in rows if r["model"] == m and r["scale"] == s]
        for lab in dict.fromkeys(r["sampler"] for r in rs):
            pts = sorted((int(r["nfe"]), float(r["fd_digits"])) for r in rs if r["sampler"] == lab)
            ax.plot(*zip(*pts), "o-" if lab != "ode" else "s--", label=lab, ms=4)
        ax.axhline(fl["fd_digits"], color="k", lw=1, ls=":", label=f"real-vs-real floor (n={n})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("FD-digits")
        ax.set_title(m + (f", cfg scale {s}" if s else ""))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/digits")
    ap.add_argument("--cond-run", default=None)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-3, 1e-5])
    ap.add_argument("--langevin-nfe", type=int, nargs="*", default=[100])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--cond-nfe", type=int, nargs="+", default=[20, 50, 200])
    ap.add_argument("--cond-tols", type=float, nargs="*", default=[1e-3])
    ap.add_argument("--cond-samplers", nargs="+", default=["pc", "sde", "dpm_solver"])
    ap.add_argument("--spread-seeds", type=int, nargs="*", default=[1, 2, 3, 4])
    ap.add_argument("--spread-nfe", type=int, default=20)
    ap.add_argument("--max-minutes", type=float, default=40.0, help="skip the cells left after this much time")
    ap.add_argument("--resume", action="store_true", help="keep the rows of the CSV and run only the others")
    ap.add_argument("--write-only", action="store_true", help="write the table and plot from the CSV")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    if not args.write_only:
        run(args)
    write(args, load_before, (time.perf_counter() - t0) / 60)


if __name__ == "__main__":
    main()
