"""Host syncs per sampling run: how many device-to-host reads (``aten._local_scalar_dense``, what
``.item()``, ``float(t)``, ``bool(t)`` and ``int(t)`` trigger) each sampler makes, at two step
counts, split by who asks: scoresde's own code, torchdiffeq or torchsde.

    PYTHONPATH=. python benchmarks/syncs.py            # a few seconds on a CPU

On a GPU each such read waits for every queued kernel, so a read per step stalls the device
between steps.  The count does not depend on the device (the same code paths run), so a CPU run
measures it: the score is a torch-only function (-x), the batch 8 x 3x8x8.  Writes
benchmarks/results/syncs.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import torch

import scoresde as sd
from scoresde.bench.syncs import SyncCount

ROOT = pathlib.Path(__file__).resolve().parents[1]

RUNS = [("pc", dict()), ("pc", dict(predictor="reverse_diffusion", corrector="langevin")),
        ("pc", dict(predictor="reverse_diffusion", corrector="langevin", langevin_norm="sample")),
        ("pc", dict(predictor="none", corrector="annealed_langevin")),
        ("dpm_solver", dict()), ("unipc", dict()), ("unipc", dict(order=3, variant="bh2")),
        ("heun", dict()), ("ipndm", dict()),
        ("ode", dict(method="rk4")), ("ode", dict(method="dopri5")), ("sde", dict(method="euler")),
        ("sde", dict(method="srk"))]


def count(sampler: str, steps, opts: dict) -> dict:
    kw = dict(opts)
    if steps is not None:
        kw["steps"] = steps
    with SyncCount() as c:
        out = sd.sample(lambda x, t: -x, sd.VPSDE(), (8, 3, 8, 8), sampler=sampler,
                        generator=torch.Generator().manual_seed(0), **kw)
    return {"nfe": out.nfe, "total": sum(c.by.values()), **{k: c.by.get(k, 0) for k in ("scoresde", "torchdiffeq",
                                                                                          "torchsde", "other")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs=2, default=[20, 200], help="the two step counts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "syncs.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    lo, hi = args.steps
    lines = ["# Host syncs per sampling run", "",
             "`aten._local_scalar_dense` calls (each a device-to-host read, a sync on a GPU) per `sd.sample` run, by "
             "the innermost caller in scoresde / torchdiffeq / torchsde; score `-x` (torch only), batch 8 x 3x8x8, "
             f"VP, default options but those shown, at {lo} and {hi} steps (dopri5: adaptive, its own steps).  "
             "Written by `python benchmarks/syncs.py`; the counts do not depend on the device (the same code "
             "runs), so they were taken on a CPU.  tests/test_samplers_at_scale.py holds them.", "",
             f"| sampler | options | NFE at {lo} / {hi} | syncs at {lo} | syncs at {hi} | of which scoresde "
             f"({lo} / {hi}) | torchdiffeq | torchsde |",
             "|---|---|---|---|---|---|---|---|"]
    for sampler, opts in RUNS:
        adaptive = opts.get("method") == "dopri5"
        a = count(sampler, None if adaptive else lo, opts)
        b = a if adaptive else count(sampler, hi, opts)
        o = " ".join(f"{k}={v}" for k, v in opts.items()) or "-"
        lines.append(f"| {sampler} | {o} | {a['nfe']} / {b['nfe']} | {a['total']} | {b['total']} | "
                     f"{a['scoresde']} / {b['scoresde']} | {b['torchdiffeq']} | {b['torchsde']} |")
        print(lines[-1], flush=True)
    lines += ["", "Reading: the fixed-step samplers (pc, dpm_solver, unipc, heun, ipndm) make 2 syncs a run, both "
              "in the end-of-run NaN/Inf check (`nonfinite=`), whatever the steps.  The ODE and reverse-SDE "
              "samplers add a constant few of their own (the time map at the two ends); the rest is the "
              "libraries' step control: torchdiffeq's fixed-grid loop about one a step, its dopri5 about 20 "
              "a step (error norms, step acceptance, interpolation), torchsde's fixed-step loop two a step "
              "(time comparisons).  Before issue 29 (measured the same way at 200 steps): pc with the batch "
              "Langevin corrector 400 (`float(zn.mean())` per corrector step), ode rk4 1014 (`float(u)` per "
              "evaluation), dopri5 449, sde euler 1206 (four a step of ours: `float(tau)` in f and g, the "
              "Brownian increments' times); the others 0 (they had no NaN check).", ""]
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
