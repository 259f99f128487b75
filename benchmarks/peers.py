"""Ours against diffusers' schedulers on the same exact scores, side by side in one run.

    python benchmarks/peers.py             # ring8 + aniso16, VP, 10,000 samples, 3 seeds, NFE 5/10/20/50
    python benchmarks/peers.py --quick     # a smoke run: ring8 only, 2,000 samples, one seed

Our few-step solvers (unipc, dpm_solver, heun at their defaults) run through the benchmark
engine (scoresde.bench.Bench.run_cell); the peers (DPM-Solver++ 2M / 3M, UniPC, DEIS, LMS, Euler,
DDIM, Heun) through scoresde.bench.peers, i.e. diffusers' own schedulers on the exact score
exported by scoresde.interop.to_diffusers.  Both share the prior draw z per problem and seed, the
floors, the reference solve and the thread count (torch 1 thread; OMP / OpenBLAS / MKL pinned to 1
before numpy loads).  Without diffusers the peers are skipped and the table says so.

Writes benchmarks/results/peers.md, peers.csv and peers_<problem>.png (W2/floor against NFE, top,
and against seconds, bottom; ours and the peers in one plot).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"   # before numpy / torch load their BLAS

import argparse  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoresde import bench  # noqa: E402
from scoresde.bench import aggregate, fmt, md_table, peers  # noqa: E402

EPS = 1e-3
OURS = [bench.SamplerSpec("unipc", "unipc"), bench.SamplerSpec("dpm_solver", "dpm_solver"),
        bench.SamplerSpec("heun", "heun", nfe_per_step=2.0)]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(uptime unavailable)"


def summary(agg, budgets) -> str:
    """Per problem and budget: our best and the peers' best (W2/floor, mean over seeds)."""
    out = []
    for prob in dict.fromkeys(r["problem"] for r in agg):
        for b in budgets:
            rs = [r for r in agg if r["problem"] == prob and r["budget"] == b]
            ours = min((r for r in rs if not r["label"].startswith("diffusers")), key=lambda r: r["w2_ratio"],
                       default=None)
            theirs = min((r for r in rs if r["label"].startswith("diffusers")), key=lambda r: r["w2_ratio"],
                         default=None)
            if ours is None:
                continue
            out.append(dict(problem=prob, budget=b, ours=ours, theirs=theirs))

    def cell(r):
        return "" if r is None else f"{r['label']}: {fmt(r['w2_ratio'], '.2f')}x (NFE {fmt(r['nfe'], '.0f')})"

    return md_table(out, [("problem", lambda s: s["problem"]), ("NFE budget", lambda s: str(s["budget"])),
                          ("best of ours", lambda s: cell(s["ours"])), ("best diffusers peer", lambda s: cell(s["theirs"])),
                          ("peer / ours", lambda s: fmt(s["theirs"]["w2_ratio"] / s["ours"]["w2_ratio"], ".2f")
                           if s["theirs"] is not None else "")])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ring8 only, 2,000 samples, one seed")
    ap.add_argument("--n", type=int, default=None, help="samples per cell (default 10,000)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds averaged (default 3)")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.n or (2000 if args.quick else 10_000)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    problems = ["ring8"] if args.quick else ["ring8", "aniso16"]
    budgets = [5, 10, 20, 50]
    load_before = uptime()
    runner = bench.Bench(n=n, eps=EPS, floor_repeats=10)
    ok, why = peers.peers_available()
    start = time.perf_counter()
    rows = []
    for prob in problems:
        for c in bench.expand_grid([prob], ["vp"], OURS, budgets, seeds):
            row = runner.run_cell(c)
            rows.append(row)
            print(f"{prob} {row['label']} {row['budget']}: NFE {row['nfe']} W2/floor {row['w2_ratio']:.3f}", flush=True)
        for row in peers.peer_rows(runner, prob, "vp", budgets, seeds):
            rows.append(row)
            print(f"{prob} {row['label']} {row['budget']}: NFE {row['nfe']} W2/floor {row['w2_ratio']:.3f}", flush=True)
    elapsed = time.perf_counter() - start
    agg = aggregate(rows)
    nfe_note = ", ".join(f"{lab}: {spec.per_step}/step" + (f" less {spec.saved_last}" if spec.saved_last else "")
                         for lab, spec in peers.PEERS.items())
    preamble = "\n".join([
        f"`python benchmarks/peers.py{' --quick' if args.quick else ''}`: VP SDE, exact mixture scores, "
        f"n = {n} samples per cell, seeds {seeds} (tables: mean over seeds), NFE budgets {budgets}, "
        f"{elapsed / 60:.1f} min in one process; torch threads = 1, OMP / OpenBLAS / MKL threads = 1.",
        f"Load (`uptime`) before: `{load_before}`; after: `{uptime()}`.  Seconds are wall time on a shared "
        "2-core machine under that load: compare NFE and W2, not seconds.",
        "",
        "Ours: `unipc`, `dpm_solver`, `heun` at their defaults (stop at t = eps = 1e-3); Heun takes 2 NFE a "
        "step (budget b: b // 2 steps).  Peers: " + (why if not ok else
        f"{why}'s schedulers on the exact score exported by `scoresde.interop.to_diffusers` (DDPM's linear "
        "table for the VP SDE, timestep_spacing trailing: from t = T down to timestep 0, then their last "
        "step to sigma = 0), run by `scoresde.interop.diffusers_sample`, NFE = model calls counted "
        f"({nfe_note}).  Peers' ODE error is against the reference flow plus the exact denoiser at eps."),
        "",
        "## Best of ours against the best diffusers scheduler (W2 / exact floor)\n",
        summary(agg, budgets) if ok else "_peers skipped: " + why + "_\n",
    ])
    files = bench.write_results(rows, args.out, prefix="peers", title="Ours against diffusers' schedulers",
                                preamble=preamble)
    print("wrote", ", ".join(str(f) for f in files))


if __name__ == "__main__":
    main()
