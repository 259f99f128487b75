"""Peak memory of likelihoods on a CIFAR-10-sized DDPM++ (issue 29's goal): bounded by the rows a
score call sees (``max_rows``), not by the number of points.

    OMP_NUM_THREADS=1 python benchmarks/likelihood_memory.py [--rows 2 4 16] [--points 64] [--seconds 45]

Each cell is a fresh process: the full-size ``vp/cifar10_ddpmpp_continuous`` network (61.8 M
parameters, random weights, eval mode) scores ``--points`` random 8-bit 3x32x32 images with
``sd.bits_per_dim`` (the probability-flow ODE, the default divergence: Hutchinson at D = 3072) or
``sd.elbo`` (n_t = 1000, the default ``dsm`` estimator) at ``max_rows`` rows a call.  A CPU does
one such evaluation in seconds, so each process is stopped after ``--seconds`` and its peak
resident memory (``ru_maxrss``) over those first calls is reported: what the defaults need per
row, whatever the number of points.  Before the bound, ``elbo`` sent calls of
points x n_t x 2 rows (2,000,000 rows at the app's old defaults).  Writes
``benchmarks/results/likelihood_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, signal, sys, time
import torch
import scoresde as sd
method, rows, points, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.manual_seed(0)
net = sd.interop.score_sde_network("vp/cifar10_ddpmpp_continuous")
model = sd.interop.score_sde.ScoreSdeModel(net, "vp/cifar10_ddpmpp_continuous").eval().requires_grad_(False)
k = torch.randint(0, 256, (points, 3, 32, 32), generator=torch.Generator().manual_seed(0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
calls = [0]
def counted(x, t):
    calls[0] += 1
    assert x.shape[0] <= rows, x.shape
    return model(x, t)
def stop(*_):
    print(json.dumps({"method": method, "rows": rows, "points": points, "calls": calls[0],
                      "base_mib": base / 1024, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    sys.stdout.flush()
    raise SystemExit(0)
signal.signal(signal.SIGALRM, stop)
signal.setitimer(signal.ITIMER_REAL, seconds)
g = torch.Generator().manual_seed(1)
if method == "ode":
    sd.bits_per_dim(counted, model.sde, k, generator=g, max_rows=rows, data_range=model.data_range)
else:
    x = (k.float() + 0.5) / 256 * 2 - 1
    sd.elbo(counted, model.sde, x, n_t=1000, generator=g, max_rows=rows)
stop()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[2, 4, 16])
    ap.add_argument("--points", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "likelihood_memory.md")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows_out = []
    for method in ("ode", "elbo"):
        for rows in args.rows:
            out = subprocess.run([sys.executable, "-c", CHILD, method, str(rows), str(args.points), str(args.seconds)],
                                 capture_output=True, text=True, env=env, cwd=ROOT)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(r, flush=True)
            rows_out.append(r)
    load = os.getloadavg()[0]
    lines = ["# Peak memory of likelihoods on a CIFAR-10-sized DDPM++: bounded by max_rows", "",
             f"Written by `python benchmarks/likelihood_memory.py --rows {' '.join(map(str, args.rows))} "
             f"--points {args.points} --seconds {args.seconds:g}`: `vp/cifar10_ddpmpp_continuous` (61.8 M "
             f"parameters, random weights, eval mode), {args.points} random 8-bit 3x32x32 images, CPU, "
             f"{env['OMP_NUM_THREADS']} thread(s), load {load:.1f}; each cell a fresh process stopped after "
             f"{args.seconds:g} s (the first score calls; a call's memory does not grow along a solve). "
             "`ode`: `sd.bits_per_dim` (probability-flow ODE, Hutchinson at D = 3072, one backward pass a "
             "call); `elbo`: `sd.elbo`, n_t = 1000, dsm (forward passes only).  base: the process after "
             "building the network, before any call.", "",
             "| method | max_rows | score calls | base MiB | peak MiB | peak - base MiB | per row MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows_out:
        extra = r["peak_mib"] - r["base_mib"]
        lines.append(f"| {r['method']} | {r['rows']} | {r['calls']} | {r['base_mib']:.0f} | {r['peak_mib']:.0f} | "
                     f"{extra:.0f} | {extra / r['rows']:.0f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
