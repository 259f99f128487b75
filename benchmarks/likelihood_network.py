"""Bits/dim wall time on a trained network score: ours against the reference method, one probe,
equal threads, at the reference's accuracy.

    python benchmarks/likelihood_network.py                 # both networks, ~30 minutes on 1 thread
    python benchmarks/likelihood_network.py --quick         # 200 steps, 8 points, 1 repeat (reduced)
    python benchmarks/likelihood_network.py --models ddpmpp --steps 800 --n 32 --threads 1

Writes benchmarks/results/likelihood_network.md and .csv.

Networks, trained here briefly (``--steps`` on scikit-learn's 8x8 digits, VP SDE, the trainer's
defaults otherwise): ``unet``, the digits U-Net of ``experiment=digits`` (nf 32, two levels), and
``ddpmpp``, a small DDPM++ (``model=ddpmpp`` at nf 16, ch_mult [1, 2], one residual block,
attention at 4).  A brief training is not a good model, but the cost of a likelihood solve depends
on the score's stiffness, which a network has from its first steps on.

Points: ``--n`` held-out digits, uniformly dequantized (x = 2 (k + u) / 17 - 1): the ODE solve of
``sd.bits_per_dim``; bits/dim differ from log p by a constant.  Methods, all with the same single
Rademacher probe (seed 0) and eps = 1e-5, interleaved repeat by repeat, best wall time of
``--repeats``: the reference (``scoresde/bench/reference.py``: scipy RK45 on a flattened float64
NumPy state, two forward and one backward pass per evaluation, rtol = atol = 1e-5), ours with
dopri5 at 1e-5, and ours with ``method="adams"`` at a ladder of tolerances.  Every row's error is
mean |log p - log p_truth| / D in nats/dim, the truth our float64 dopri5 solve at 1e-8 with the same
probe.  The goal's row: the largest adams tolerance whose error is at most the reference's.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import pathlib
import sys
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scoresde as sd  # noqa: E402
from scoresde.bench.reference import reference_log_likelihood  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OUT = "likelihood_network"      # the results files' name (--out)
LADDER = [3e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7e-4, 1e-3]
NETS = {
    "unet": ["model=unet", "model.nf=32", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
             "model.attn_resolutions=[4]", "optim.lr=2e-3", "optim.warmup=100"],
    "ddpmpp": ["model=ddpmpp", "model.nf=16", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
               "model.attn_resolutions=[4]", "model.dropout=0.0", "optim.lr=2e-3", "optim.warmup=100"],
}


def rademacher(shape, seed):
    """The first Rademacher draw of ``torch.Generator().manual_seed(seed)``: what
    ``sd.log_likelihood(..., divergence="hutchinson", generator=...)`` draws as its probe."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (1,) + tuple(shape), generator=g).float()[0] * 2 - 1


def train_net(name: str, steps: int, out: pathlib.Path) -> torch.nn.Module:
    """A brief training run on the digits; the EMA model of its last checkpoint."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from scoresde.apps import train as _train_app  # noqa: F401  (stores the config schemas)
    from scoresde.training import train

    over = NETS[name] + ["data=digits", f"train.steps={steps}", "train.batch_size=64", "train.progress=false",
                         "train.device=cpu", "train.tensorboard=false", f"train.log_every={max(steps // 4, 1)}",
                         "eval.n_nll=0", "eval.n_samples=0", "eval.bound=false", "train.ckpt_every=0"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="train", overrides=over), resolve=True)
    t0 = time.perf_counter()
    train(cfg, out)
    print(f"trained {name}: {steps} steps in {time.perf_counter() - t0:.1f} s", flush=True)
    return sd.load_model(out / "checkpoints" / "last.pt")


def timed(fn):
    w = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - w


def per_dim(err: torch.Tensor, dim: int) -> float:
    return float(err.double().abs().mean()) / dim


def bench(name: str, model, n: int, repeats: int, threads: int):
    from threadpoolctl import threadpool_limits
    from scoresde.data.images import digits_split, from_model_range, to_model_range

    torch.set_num_threads(threads)
    sde = model.sde
    _, _, x_test, _ = digits_split()
    k = from_model_range(x_test[:n], 17)
    x = to_model_range(k, 17, dequantize=True, generator=torch.Generator().manual_seed(1))
    D = x[0].numel()
    probe = rademacher(x.shape, 0)
    m64 = copy.deepcopy(model).double()
    for mod in m64.modules():   # the time embedding is float32 by design (as the reference's): cast it up
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            mod.register_forward_pre_hook(lambda m, a: tuple(v.to(m.weight.dtype) for v in a))
    t0 = time.perf_counter()
    truth = sd.log_likelihood(m64, sde, x.double(), divergence="hutchinson", rtol=1e-8, atol=1e-8,
                              generator=torch.Generator().manual_seed(0))
    print(f"{name}: truth (dopri5 1e-8, float64) nfe={truth.nfe} in {time.perf_counter() - t0:.1f} s", flush=True)
    truth = truth.logp.double()
    methods = [("reference", None, 1e-5), ("ours dopri5", "dopri5", 1e-5)] + [
        (f"ours adams {t:.0e}", "adams", t) for t in LADDER]
    walls = {m[0]: [] for m in methods}
    nfe, err = {}, {}
    with threadpool_limits(limits=threads):
        for _ in range(repeats):
            for key, method, tol in methods:
                if method is None:
                    (lp, _, nf), w = timed(lambda: reference_log_likelihood(model, sde, x, probe))
                else:
                    res, w = timed(lambda: sd.log_likelihood(model, sde, x, divergence="hutchinson", method=method,
                                                             rtol=tol, atol=tol,
                                                             generator=torch.Generator().manual_seed(0)))
                    lp, nf = res.logp, res.nfe
                walls[key].append(w)
                nfe[key], err[key] = nf, per_dim(lp.double() - truth, D)
    ref_w = min(walls["reference"])
    rows = []
    for key, method, tol in methods:
        w = min(walls[key])
        rows.append(dict(network=name, method=key, rtol=tol, threads=threads, n=n, nfe=nfe[key],
                         seconds=round(w, 3), speedup=round(ref_w / w, 2), err=err[key]))
        print(f"{name:7s} {key:18s} nfe={nfe[key]:5d} wall={w:7.3f}s x{ref_w / w:5.2f} err={err[key]:.2e}", flush=True)
    mark_goal(rows)
    return rows


def mark_goal(rows):
    """The goal row per network: the largest adams tolerance that, with every smaller one of the
    ladder, is at least as accurate as the reference (one probe and few points make the error
    non-monotone in the tolerance; a lucky large tolerance is not taken)."""
    for net in {r["network"] for r in rows}:
        mine = [r for r in rows if r["network"] == net]
        ref = next(r["err"] for r in mine if r["method"] == "reference")
        goal = None
        for r in sorted((r for r in mine if r["method"].startswith("ours adams")), key=lambda r: r["rtol"]):
            if r["err"] > ref:
                break
            goal = r
        for r in mine:
            r["goal_row"] = r is goal


def uptime() -> str:
    import subprocess
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write(rows, args, elapsed, load_before, load_after):
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{OUT}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    head = ["# Bits/dim wall time on a trained network score: ours vs the reference method", "",
             f"`python benchmarks/likelihood_network.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"torch {torch.__version__}, {args.threads} torch / BLAS thread(s), CPU; {args.steps} training steps "
             f"on the digits; {args.n} dequantized held-out digits (D = 64); one Rademacher probe (seed 0); "
             f"eps = 1e-5; best of {args.repeats} interleaved repeats; {elapsed / 60:.1f} minutes in all.",
             f"Load before: `{load_before}`; after: `{load_after}`.", "",
             "Error: mean |log p - log p_truth| / D (nats/dim), truth = our float64 dopri5 at 1e-8 with the same "
             "probe.  **Goal row** (bold): the largest adams tolerance that, with every smaller one, is at least as "
             "accurate as the reference.", ""]
    render(rows, head)


def render(rows, head):
    lines = head + ["| network | method | rtol = atol | NFE | wall s | vs reference | error nats/dim |",
                    "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        b = "**" if r["goal_row"] else ""
        lines.append(f"| {r['network']} | {b}{r['method']}{b} | {r['rtol']:.0e} | {r['nfe']} | {r['seconds']:.3f} | "
                     f"{b}{r['speedup']:.2f}x{b} | {r['err']:.2e} |")
    lines.append("")
    for net in sorted({r["network"] for r in rows}):
        goal = [r for r in rows if r["network"] == net and r["goal_row"]]
        if goal:
            g = goal[0]
            lines.append(f"- {net}: at the reference's accuracy, ours (adams at {g['rtol']:.0e}) takes "
                         f"{g['speedup']:.2f}x less wall time (goal: 2.5x): "
                         f"{'reached' if g['speedup'] >= 2.5 else 'NOT reached'}.")
        else:
            lines.append(f"- {net}: no adams tolerance of the ladder reached the reference's accuracy.")
    (RESULTS / f"{OUT}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / (OUT + '.md')}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["unet", "ddpmpp"], choices=sorted(NETS))
    p.add_argument("--steps", type=int, default=600, help="training steps per network")
    p.add_argument("--n", type=int, default=32, help="held-out digits scored")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="200 steps, 8 points, 1 repeat (~12 minutes)")
    p.add_argument("--render", action="store_true", help="rewrite the .md from the .csv (same header), no run")
    p.add_argument("--out", default="likelihood_network", help="results file name (without .md / .csv)")
    args = p.parse_args()
    global OUT
    OUT = args.out
    if args.render:
        md = (RESULTS / f"{OUT}.md").read_text().splitlines()
        with open(RESULTS / f"{OUT}.csv") as f:
            rows = [{k: (float(v) if k in ("rtol", "seconds", "speedup", "err") else
                         int(v) if k in ("threads", "n", "nfe") else v) for k, v in r.items()} for r in csv.DictReader(f)]
        mark_goal(rows)
        render(rows, md[:md.index("| network | method | rtol = atol | NFE | wall s | vs reference | error nats/dim |")])
        return
    if args.quick:
        args.steps, args.n, args.repeats = 200, 8, 1
    torch.set_num_threads(args.threads)
    load_before, t0 = uptime(), time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = train_net(name, args.steps, pathlib.Path(tmp) / name)
            rows += bench(name, model, args.n, args.repeats, args.threads)
    write(rows, args, time.perf_counter() - t0, load_before, uptime())


if __name__ == "__main__":
    main()
