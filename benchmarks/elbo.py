"""ELBO benchmark: the reverse-SDE variational bound (sd.elbo) against the probability-flow ODE
likelihood (sd.log_likelihood) on exact-score mixtures, and the per-draw variance of each ELBO
estimator with and without importance sampling of t.

    python benchmarks/elbo.py            # about 4 minutes on one core (mixtures 1, digits 3, under load)
    python benchmarks/elbo.py --quick    # small sizes, well under a minute

Writes benchmarks/results/elbo.md and elbo.csv.

* Table 1 (ring8, aniso16; VP, the mixtures' exact scores, the SDE's standard N(0, I) prior,
  eps = 1e-5): ODE NLL (exact trace, rtol = atol = 1e-5) and ELBO (dsm estimator, antithetic
  Stein pairs, no importance sampling) per point, in nats and bits/dim (nats / (D ln 2), no
  quantization offset: these are continuous data), their mean difference ELBO - ODE log-lik
  (paired per point), standard errors over points (the ELBO's also carries its own Monte Carlo
  error), NFE and seconds per point.  With the exact score and the standard prior both are
  estimates of log p_eps(x) up to the prior mismatch at T; the ELBO is below log p_eps by
  E[log p_T - log pi] under the transition (tiny for VP at T = 1) plus Monte Carlo noise.
* Table 2: per-draw variance of the ELBO integrand (``ELBOResult.draws``, mean over points of the
  variance over the n_t draws; one draw = one t, one noise) for dsm/stein, ism/exact,
  ism/hutchinson, ism/stein, with and without importance sampling.  The standard error of an
  n_t-draw ELBO is sqrt(variance / n_t).
* Table 3 (if /work/runs/digits/checkpoints/last.pt exists; --no-digits skips it, --digits-only
  reruns only it and keeps the mixture rows of elbo.csv): the trained digits model, bits/dim by the
  ODE (one Hutchinson probe) and by the ELBO on 20 test digits (dequantized cells of the plain grid,
  as the likelihood app), and the trainer's held-out training bound (Trainer.heldout_bound).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scoresde as sd  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ESTIMATORS = [("dsm", "stein"), ("ism", "exact"), ("ism", "hutchinson"), ("ism", "stein")]


def se(v: torch.Tensor) -> float:
    return float(v.std() / math.sqrt(v.numel()))


def compare(mname: str, n: int, n_t: int, rows: list) -> None:
    mix = sd.build_mixture(mname)
    sde = sd.VPSDE()
    x = mix.sample(n, generator=torch.Generator().manual_seed(1)).double()
    score = mix.score_fn(sde)
    D = x[0].numel()
    t0 = time.perf_counter()
    ode = sd.log_likelihood(score, sde, x, divergence="exact", rtol=1e-5, atol=1e-5, eps=1e-5)
    t_ode = time.perf_counter() - t0
    t0 = time.perf_counter()
    el = sd.elbo(score, sde, x, n_t=n_t, estimator="dsm", eps=1e-5, generator=torch.Generator().manual_seed(2))
    t_el = time.perf_counter() - t0
    lp, eb = ode.logp.double(), el.elbo.double()
    diff = eb - lp
    bpd = D * math.log(2)
    rows.append({
        "table": "compare", "problem": mname, "dim": D, "n": n, "n_t": n_t,
        "ode_nll": float(-lp.mean()), "ode_nll_se": se(lp), "ode_bpd": float(-lp.mean()) / bpd,
        "elbo": float(eb.mean()), "elbo_se": se(eb), "elbo_mc_se": float(el.stderr.double().pow(2).mean().sqrt()),
        "elbo_bpd": float(-eb.mean()) / bpd,
        "diff": float(diff.mean()), "diff_se": se(diff),
        "ode_nfe": ode.nfe, "elbo_nfe": el.nfe,
        "ode_s_per_point": t_ode / n, "elbo_s_per_point": t_el / n,
        "elbo_evals_per_point": el.evaluations,
    })


def variance(mname: str, n: int, n_t: int, rows: list) -> None:
    mix = sd.build_mixture(mname)
    sde = sd.VPSDE()
    x = mix.sample(n, generator=torch.Generator().manual_seed(3)).double()
    score = mix.score_fn(sde)
    for est, div in ESTIMATORS:
        for imp in (False, True):
            t0 = time.perf_counter()
            r = sd.elbo(score, sde, x, n_t=n_t, estimator=est, divergence=div, importance_sampling=imp,
                        eps=1e-5, generator=torch.Generator().manual_seed(4))
            var = r.draws.double().var(0)                      # [B]: over the n_t draws
            rows.append({"table": "variance", "problem": mname, "n": n, "n_t": n_t, "estimator": est,
                         "divergence": div, "importance_sampling": imp,
                         "draw_var": float(var.mean()), "draw_var_median": float(var.median()),
                         "elbo_mean": float(r.elbo.mean()), "mc_se_mean": float(r.stderr.mean()),
                         "s_per_point": (time.perf_counter() - t0) / n})


DIGITS = ROOT.parent.parent / "runs" / "digits" / "checkpoints" / "last.pt"   # /work/runs/digits/...


def digits(path: pathlib.Path, n: int, n_t: int, rows: list) -> None:
    """The trained digits model (plain 17-level grid): bits/dim by ODE (Hutchinson, one probe) and by
    ELBO (dsm), both with uniform dequantization in cells of width 2 / (L - 1) centred on the grid (as
    the likelihood app), one draw per point; and the training bound -mean dsm_bound (importance-sampled
    t) on all held-out points, in nats of the blurred grid points and in bits/dim with the same cell."""
    from scoresde.data import build_dataset
    from scoresde.data.images import DIGITS_LEVELS, from_model_range

    model = sd.load_model(path)
    model.eval()
    sde, L = model.sde, DIGITS_LEVELS
    cfg = dict(model.checkpoint["config"]["data"])
    data = build_dataset(cfg.pop("name"), **cfg)
    x = data.test
    D = x[0].numel()
    k = from_model_range(x[:n], L).to(torch.int64)
    half = L / (L - 1)
    for method, kw in (("ode", {"divergence": "hutchinson", "rtol": 1e-5, "atol": 1e-5}),
                       ("elbo", {"n_t": n_t, "estimator": "dsm", "batch_size": 4})):
        t0 = time.perf_counter()
        with torch.no_grad() if method == "elbo" else torch.enable_grad():
            r = sd.bits_per_dim(model, sde, k, levels=L, data_range=(-half, half), method=method, eps=1e-5,
                                generator=torch.Generator().manual_seed(5), **kw)
        bpd = r.bpd.double() if hasattr(r, "bpd") else r.bits_per_dim.double()
        rows.append({"table": "digits", "method": method, "n": n, "n_t": n_t if method == "elbo" else "",
                     "bpd": float(bpd.mean()), "bpd_se": se(bpd), "nfe": r.nfe,
                     "s_per_point": (time.perf_counter() - t0) / n})
        print(rows[-1], flush=True)
    # the trainer's own evaluation (Trainer.heldout_bound): on the plain grid, the Gaussian-decoder bound
    from scoresde.training import Trainer
    t0 = time.perf_counter()
    tr = Trainer(model, data, eval={"n_nll": 0, "n_samples": 0, "bound_repeats": 4, "seed": 6},
                 train={"device": "cpu", "progress": False, "tensorboard": False})
    hb = tr.heldout_bound()
    rows.append({"table": "digits", "method": "training bound (Trainer.heldout_bound, 4 draws/pt)",
                 "n": x.shape[0], "n_t": 4, "nats": hb["heldout_nll_bound"], "nats_se": hb["heldout_nll_bound_se"],
                 "bpd": hb["heldout_bpd_bound"], "bpd_se": hb["heldout_bpd_bound_se"], "nfe": 4,
                 "s_per_point": (time.perf_counter() - t0) / x.shape[0]})
    print(rows[-1], flush=True)


def write(rows, args, wall):
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(RESULTS / "elbo.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    load = os.getloadavg()
    lines = [
        "# ELBO vs probability-flow ODE (benchmarks/elbo.py)", "",
        f"`python benchmarks/elbo.py{' --quick' if args.quick else ''}`; torch threads: {torch.get_num_threads()}; "
        f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine: wall times are "
        f"under that load); total {wall:.0f} s.  VP SDE, exact mixture scores, standard N(0, I) prior, eps = 1e-5, "
        "float64.", "",
        "## ODE NLL and ELBO per point", "",
        "ELBO by the dsm estimator (antithetic Stein pairs, uniform t). bits/dim = nats / (D ln 2) (continuous "
        "data, no quantization offset). diff = mean over points of ELBO(x) - log p_ODE(x) (paired). "
        "se: over points; ELBO MC se: the root-mean-square of the per-point Monte Carlo errors.", "",
        "| problem | D | n | n_t | ODE NLL (se) | ELBO (se) | ELBO MC se | ODE bpd | -ELBO bpd | diff (se) "
        "| NFE ODE | NFE ELBO | score rows/pt ELBO | s/pt ODE | s/pt ELBO |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["table"] == "compare":
            lines.append(
                f"| {r['problem']} | {r['dim']} | {r['n']} | {r['n_t']} | {r['ode_nll']:.4f} ({r['ode_nll_se']:.4f}) "
                f"| {r['elbo']:.4f} ({r['elbo_se']:.4f}) | {r['elbo_mc_se']:.4f} | {r['ode_bpd']:.4f} "
                f"| {r['elbo_bpd']:.4f} | {r['diff']:+.4f} ({r['diff_se']:.4f}) | {r['ode_nfe']} "
                f"| {r['elbo_nfe']} | {r['elbo_evals_per_point']} | {r['ode_s_per_point']:.2e} "
                f"| {r['elbo_s_per_point']:.2e} |")
    lines += ["", "NFE: batched score_fn calls for all n points (the ODE's adaptive solve evaluates every point "
              "once per call, and the exact trace adds D vector-Jacobian products per call; the ELBO evaluates "
              "its draws in large batches, so its per-point work is the score rows column, 2 n_t with Stein "
              "pairs).  s/pt: wall seconds / n.", "",
              "## Per-draw variance of the ELBO estimators", "",
              "Mean over points of the variance over draws of one draw's estimate (nats^2); an n_t-draw ELBO has "
              "standard error sqrt(var / n_t).", "",
              "| problem | estimator | divergence | IS | draw var (mean) | draw var (median) | mean ELBO | mean MC se "
              "| s/pt |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["table"] == "variance":
            lines.append(f"| {r['problem']} | {r['estimator']} | {r['divergence']} | {r['importance_sampling']} "
                         f"| {r['draw_var']:.4g} | {r['draw_var_median']:.4g} | {r['elbo_mean']:.4f} "
                         f"| {r['mc_se_mean']:.4f} | {r['s_per_point']:.2e} |")
    dig = [r for r in rows if r["table"] == "digits"]
    if dig:
        lines += ["", "## Trained digits model (/work/runs/digits, VP, sigma^2 weighting, 3000 steps)", "",
                  "Plain 17-level grid; ODE and ELBO: uniform dequantization in cells of width 2/(L-1) centred on "
                  "the grid (the likelihood app's convention), one dequantization draw per point, ODE with one "
                  "Hutchinson probe, ELBO by dsm with n_t draws (se over points, includes the Monte Carlo "
                  "error).  Training bound: the trainer's held-out evaluation (Trainer.heldout_bound: "
                  "likelihood-weighted DSM with importance-sampled t plus the closed-form constant, 4 draws per "
                  "point, all held-out digits); on this plain grid it adds the Gaussian decoder at eps, a bound "
                  "on the discrete -log2 P(k) / D, a different quantity from the dequantized rows above.", "",
                  "| method | n | n_t | bits/dim (se) | NFE | s/pt |", "|---|---|---|---|---|---|"]
        for r in dig:
            lines.append(f"| {r['method']} | {r['n']} | {r['n_t']} | {r['bpd']:.4f} ({r['bpd_se']:.4f}) "
                         f"| {r['nfe']} | {r['s_per_point']:.2e} |")
    else:
        lines += ["", "Digits model: not run (--no-digits or no checkpoint)."]
    lines += ["", "Not part of this script: the weighting experiment of issue 14.", ""]
    (RESULTS / "elbo.md").write_text("\n".join(lines))


def _num(v: str):
    if v in ("True", "False"):
        return v == "True"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-digits", action="store_true", help="skip the trained digits model")
    p.add_argument("--digits-only", action="store_true", help="only the digits model (appends to elbo.csv)")
    args = p.parse_args()
    torch.set_num_threads(1)
    n, n_t, nv, ntv = (20, 200, 10, 200) if args.quick else (200, 1000, 50, 1000)
    start = time.perf_counter()
    rows = []
    if args.digits_only:   # keep the mixture rows of an earlier run
        with open(RESULTS / "elbo.csv") as f:
            rows = [{k: _num(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)
                    if r["table"] != "digits"]
    else:
        for m in ("ring8", "aniso16"):
            compare(m, n, n_t, rows)
            print(rows[-1], flush=True)
        for m in ("ring8", "aniso16"):
            variance(m, nv, ntv, rows)
            print(rows[-1], flush=True)
    if not args.no_digits and DIGITS.is_file():
        digits(DIGITS, *((4, 20) if args.quick else (20, 1000)), rows)
    write(rows, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
