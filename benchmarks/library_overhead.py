"""The ODE and SDE libraries' own cost per evaluation, with a right-hand side that costs nothing.

    python benchmarks/library_overhead.py          # about 10 seconds

The overhead benchmark (``scoresde-bench``, benchmarks/results/bench_overhead.md) divides a
sampler's wall time by the time its score evaluations take.  For the ``ode`` and ``sde`` samplers
part of the rest is torchdiffeq's or torchsde's step code, which no wrapper can remove; this
script measures it alone: ``odeint`` / ``sdeint`` on a ``[1000, 2]`` state whose drift is ``-y``,
one thread, the best of several runs, in microseconds per drift evaluation.  Writes
benchmarks/results/library_overhead.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import torch
import torchsde
from torchdiffeq import odeint

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Counted:
    def __init__(self):
        self.calls = 0


def _best(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def ode_cost(method: str, y0: torch.Tensor, repeats: int, **kw) -> float:
    c = _Counted()

    def rhs(t, y):
        c.calls += 1
        return -y

    t = torch.tensor([0.0, 1.0])
    odeint(rhs, y0, t, method=method, **kw)  # count one solve's evaluations
    c.calls = 0
    odeint(rhs, y0, t, method=method, **kw)
    nfe = c.calls
    return 1e6 * _best(lambda: odeint(rhs, y0, t, method=method, **kw), repeats) / nfe


class _SDE:
    sde_type = "ito"

    def __init__(self, noise_type: str):
        self.noise_type = noise_type
        self.calls = 0

    def f(self, t, y):
        self.calls += 1
        return -y

    def g_prod(self, t, y, v):
        return v


def sde_cost(method: str, y0: torch.Tensor, steps: int, repeats: int) -> float:
    levy = "space-time" if method == "srk" else "none"
    sde = _SDE("additive")

    def run():
        bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=tuple(y0.shape), levy_area_approximation=levy, entropy=0)
        torchsde.sdeint(sde, y0, torch.tensor([0.0, 1.0]), bm=bm, method=method, dt=1.0 / steps * (1 + 1e-9))

    def bm_only():
        bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=tuple(y0.shape), levy_area_approximation=levy, entropy=0)
        for i in range(steps):
            bm(i / steps, (i + 1) / steps, return_U=method == "srk")

    sde.calls = 0
    run()
    nfe = sde.calls - 1  # torchsde's contract check evaluates f once before the first step
    total = _best(run, repeats)
    bm = _best(bm_only, repeats)
    return 1e6 * total / nfe, 1e6 * (total - bm) / nfe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="batch size (default 1,000)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    y0 = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(0))
    rows = [
        ("torchdiffeq dopri5 (rtol = atol = 1e-5)", ode_cost("dopri5", y0, args.repeats, rtol=1e-5, atol=1e-5), ""),
        ("torchdiffeq rk4 (12 steps)", ode_cost("rk4", y0, args.repeats, options={"step_size": 1 / 12}), ""),
    ]
    for method in ("euler", "srk"):
        total, without_bm = sde_cost(method, y0, 50, max(3, args.repeats // 4))
        rows.append((f"torchsde {method}, additive noise, 50 steps", without_bm, f"{total:.0f}"))
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    md = ["# The ODE/SDE libraries' own cost per evaluation\n",
          f"`python benchmarks/library_overhead.py`: state [{args.n}, 2], drift -y (free), torch {torch.__version__}, "
          f"one thread, load average {load}; best of {args.repeats} runs.  The scoresde samplers add their own "
          "work on top (benchmarks/results/bench_overhead.md, last column).\n",
          "| library step | us per evaluation | with torchsde's BrownianInterval |", "|---|---|---|"]
    md += [f"| {name} | {us:.0f} | {bi} |" for name, us, bi in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "library_overhead.md"
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
