"""Weighting experiment (ScoreFlow's claim, small): does likelihood weighting + importance sampling
give better bits/dim than sigma^2 weighting, and at what cost in sample quality?

Song, Durkan, Murray & Ermon 2021 ("Maximum likelihood training of score-based diffusion models")
report lower bits/dim with likelihood weighting and importance sampling of t, and somewhat worse
samples.  Here: the digits U-Net preset (``conf/experiment/digits.yaml``) trained twice for the same
(reduced) number of steps on uniformly dequantized digits (``data.dequantize=true``), once with
the default sigma^2 weighting and once with ``loss=likelihood`` (g^2 weighting, t ~ g^2 / sigma^2).
For each run:

* bits/dim of ``--n-bpd`` held-out digits by the probability-flow ODE (``sd.bits_per_dim``, one
  Hutchinson probe, rtol = atol = 1e-5, eps = 1e-5) and by the ELBO (``method="elbo"``, dsm
  estimator, ``--n-t`` draws per point), on the same dequantization draws, with standard errors
  over the points (the ELBO's includes its Monte Carlo noise; its MC part is given too);
* the DSM training bound of ``Trainer.heldout_bound`` on all held-out digits (``--bound-repeats``
  draws per point; dequantized cell convention, see ``scoresde.training.trainer``);
* sample quality: ``--n`` samples (predictor-corrector, reverse diffusion, ``--steps`` steps), scored
  by benchmarks/digits.py's kernel logistic-regression classifier (its functions reused):
  confidence, class entropy, inception score, distance to the nearest training digit.

    python -m scoresde train experiment=digits train.steps=1000 data.dequantize=true hydra.run.dir=RUN_A
    python -m scoresde train experiment=digits train.steps=1000 data.dequantize=true loss=likelihood \
        hydra.run.dir=RUN_B
    python benchmarks/elbo_weighting.py --run sigma2=RUN_A --run likelihood=RUN_B

Writes benchmarks/results/elbo_weighting.md and .csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import scoresde as sd  # noqa: E402
from scoresde.data.images import digits_split, from_model_range  # noqa: E402
from scoresde.metrics import classifier_stats  # noqa: E402
from digits import nearest_train_distance, probs, train_classifier  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def bits_per_dim(model, k: torch.Tensor, method: str, seed: int, n_t: int, batch: int):
    """Per-point bits/dim ``[N]``, the per-point MC standard error (ELBO) and NFE, seconds."""
    g = torch.Generator().manual_seed(seed)    # the same dequantization draws for both methods
    kw = (dict(divergence="hutchinson", rtol=1e-5, atol=1e-5, eps=1e-5) if method == "ode"
          else dict(n_t=n_t, eps=1e-5, batch_size=batch))
    t0 = time.perf_counter()
    res = sd.bits_per_dim(model, model.sde, k, levels=17, data_range=(-1.0, 1.0), method=method, generator=g, **kw)
    return res.bpd.double(), (None if res.stderr is None else res.stderr.double()), res.nfe, time.perf_counter() - t0


def evaluate(name: str, run: Path, args, clf, xtr) -> dict:
    model = sd.load_model(run / "checkpoints" / "last.pt")
    cfg = sd.checkpoints.load_checkpoint(run / "checkpoints" / "last.pt")["config"]
    data = sd.data.build_dataset("digits", **{k: v for k, v in cfg["data"].items() if k != "name"})
    assert data.info["dequantize"], "the experiment uses dequantized digits"
    k = from_model_range(data.test[:args.n_bpd], 17, dequantized=True)
    row = {"run": name, "weighting": cfg["loss"].get("weighting", "sigma2"),
           "importance_sampling": cfg["loss"].get("importance_sampling", False), "steps": cfg["train"]["steps"]}
    with torch.no_grad():
        ode, _, nfe_o, s_o = bits_per_dim(model, k, "ode", args.seed, args.n_t, args.batch)
    elbo, mc, nfe_e, s_e = bits_per_dim(model, k, "elbo", args.seed, args.n_t, args.batch)
    n = ode.numel()
    row.update(ode_bpd=float(ode.mean()), ode_bpd_se=float(ode.std() / math.sqrt(n)), ode_nfe=nfe_o, ode_s=s_o,
               elbo_bpd=float(elbo.mean()), elbo_bpd_se=float(elbo.std() / math.sqrt(n)),
               elbo_bpd_mc_se=float(mc.pow(2).sum().sqrt() / n), elbo_s=s_e,
               diff=float((elbo - ode).mean()), diff_se=float((elbo - ode).std() / math.sqrt(n)))
    # the trainer's training bound on all held-out digits
    tr = sd.Trainer(model, data, eval={"bound_repeats": args.bound_repeats, "n_nll": 0, "n_samples": 0},
                          train={"device": "cpu", "progress": False, "tensorboard": False}, out_dir=run)
    tr.ema.model = model
    b = tr.heldout_bound()
    row.update(bound_bpd=b["heldout_bpd_bound"], bound_bpd_se=b["heldout_bpd_bound_se"], bound_n=data.test.shape[0])
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        xs = sd.sample(model, model.sde, (args.n, 1, 8, 8), sampler="pc", predictor="reverse_diffusion",
                       corrector="none", steps=args.steps, generator=g).x.float()
    row["sample_s"] = time.perf_counter() - t0
    xs = torch.nan_to_num(xs).clamp(-1, 1)
    st = classifier_stats(probs(clf, xs))
    row.update(confidence=st.confidence, class_entropy=st.class_entropy, inception_score=st.inception_score,
               nn_train_dist=nearest_train_distance(xs, xtr))
    m = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    row["train_time_s"] = m.get("train_time_s")
    print(name, {k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in row.items()}, flush=True)
    return row


def _command(argv) -> str:
    """The command line without the --note text (it is printed below the tables)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (a finished training run)")
    ap.add_argument("--n-bpd", type=int, default=100)
    ap.add_argument("--n-t", type=int, default=500)
    ap.add_argument("--batch", type=int, default=8, help="points per ELBO call")
    ap.add_argument("--bound-repeats", type=int, default=8)
    ap.add_argument("--n", type=int, default=500, help="samples to score")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    xtr, ytr, xte, yte = digits_split(n_test=300, seed=0)
    clf = train_classifier(xtr, ytr)
    acc = float((probs(clf, xte).argmax(1) == yte).double().mean())
    real = classifier_stats(probs(clf, xte))
    rows = [evaluate(*r.split("=", 1)[0:1], Path(r.split("=", 1)[1]), args, clf, xtr) for r in args.run]
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "elbo_weighting.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    load = os.getloadavg()
    L = [
        "# Weighting experiment: sigma^2 vs likelihood weighting + importance sampling (digits)",
        "",
        f"`python benchmarks/elbo_weighting.py {_command(sys.argv[1:])}`; torch threads {args.threads}; "
        f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared 2-core machine); "
        f"total {time.perf_counter() - t_all:.0f} s.",
        "",
        "Both runs: the digits U-Net preset (0.70 M parameters, VP, noise parameterization), "
        f"**{rows[0]['steps']} steps** (the preset has 3000; reduced to fit the time box, so both models are "
        "undertrained and the comparison is a small, early-training one), batch 96, seed 0, uniformly "
        "dequantized digits (17 levels on [-1, 1], cells 2/17), 1 thread each, trained concurrently under load.",
        "",
        f"bits/dim on {args.n_bpd} held-out digits (the same dequantization draw for both methods): ODE with one "
        f"Hutchinson probe (rtol = atol = 1e-5), ELBO with the dsm estimator and n_t = {args.n_t}; se over the "
        "points (the ELBO's includes its MC noise; MC se: that part alone). diff = ELBO - ODE bits/dim, paired. "
        f"Training bound: `Trainer.heldout_bound` on all {rows[0]['bound_n']} held-out digits, "
        f"{args.bound_repeats} draws each (the dequantized points blurred to eps; see `scoresde.training.trainer`).",
        "",
        "| run | weighting | IS | ODE bpd (se) | ELBO bpd (se) | ELBO MC se | diff (se) | training bound bpd (se) "
        "| ODE NFE | ODE s | ELBO s | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(f"| {r['run']} | {r['weighting']} | {r['importance_sampling']} | {r['ode_bpd']:.4f} ({r['ode_bpd_se']:.4f}) "
                 f"| {r['elbo_bpd']:.4f} ({r['elbo_bpd_se']:.4f}) | {r['elbo_bpd_mc_se']:.4f} | {r['diff']:+.4f} "
                 f"({r['diff_se']:.4f}) | {r['bound_bpd']:.4f} ({r['bound_bpd_se']:.4f}) | {r['ode_nfe']} | "
                 f"{r['ode_s']:.0f} | {r['elbo_s']:.0f} | {r['train_time_s'] or float('nan'):.0f} |")
    L += [
        "",
        f"Sample quality: {args.n} samples each (predictor-corrector, reverse-diffusion predictor, no corrector, "
        f"{args.steps} steps, denoised last step), scored by benchmarks/digits.py's classifier (kernel logistic "
        f"regression, held-out accuracy {acc:.4f}). Real held-out digits: confidence {real.confidence:.4f}, class "
        f"entropy {real.class_entropy:.4f} (log 10 = 2.3026), inception score {real.inception_score:.3f}.",
        "",
        "| run | confidence | class entropy | inception score | nearest-train distance | sampling s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(f"| {r['run']} | {r['confidence']:.4f} | {r['class_entropy']:.4f} | {r['inception_score']:.3f} | "
                 f"{r['nn_train_dist']:.4f} | {r['sample_s']:.0f} |")
    if args.note:
        L += ["", args.note]
    (args.results / "elbo_weighting.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
