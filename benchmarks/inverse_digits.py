"""Digits inverse problems: inpainting and super-resolution with the trained unconditional digits model.

With the U-Net of ``experiment=digits`` (``--run``, its ``checkpoints/last.pt``) and only its
unconditional score, each of ``--n`` held-out digits x0 is observed noiselessly as y = A x0 and
completed by :func:`scoresde.sample_posterior`, for

* inpainting: :class:`scoresde.inverse.operators.Mask` keeping the top 2, 4 or 6 of the 8 rows (25 / 50 / 75 %
  observed; the 50 % case is "inpaint the lower half");
* super-resolution: :class:`scoresde.inverse.operators.Downsample` by 2 (4 x 4 observed, 25 % of the
  dimensions) and by 4 (2 x 2, 6.25 %);

and the methods ``smc`` (FPS-SMC, exact as particles and steps grow; each completion is one
particle of its own cloud of ``--particles``), ``replacement`` (Song et al.'s PC inpainter:
reverse-diffusion predictor + one Langevin corrector step, snr 0.16), ``projection`` (the
replacement as a score wrapper, PC with the reverse-diffusion predictor), ``dps`` (Chung et
al. 2023, scale 1, same PC sampler) and ``pigdm`` (Song et al. 2023, scale 1, same sampler);
``--steps`` steps each (a non-finite completion is counted in the table and judged as zeros).  Beside them: ``A^+ y`` (the
observation itself: missing pixels at mid-gray 0 for a mask, nearest-neighbour upsampling for
super-resolution) and the originals (the judge's ceiling).

The judge is the digits classifier of ``benchmarks/digits.py`` (kernel logistic regression on
the real training digits, imported): label accuracy of the completion against the original's
label, and the completion's MSE to the original on the unobserved pixels (pixels in [0, 1]; for
super-resolution every pixel is unobserved).  Writes benchmarks/results/inverse_digits.md, .csv
and .png (a few digits a problem: observation | completions | original).

    PYTHONPATH=$PWD python benchmarks/inverse_digits.py --run /work/runs/digits --threads 1
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import scoresde as sd  # noqa: E402
from scoresde.apps._inverse import save_inverse_png  # noqa: E402
from scoresde.data.images import digits_split  # noqa: E402

from digits import probs, train_classifier  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("smc", "replacement", "projection", "dps", "pigdm")


def problems():
    """(name, operator on [B, 1, 8, 8] model-space digits, observed fraction of the 64 values)."""
    out = []
    for rows in (2, 4, 6):
        keep = torch.zeros(1, 8, 8, dtype=torch.bool)
        keep[:, :rows] = True
        out.append((f"inpaint: top {rows}/8 rows", sd.ops.Mask(keep), rows / 8))
    for f in (2, 4):
        out.append((f"super-resolution {f}x", sd.ops.Downsample(f), 1 / f ** 2))
    return out


def complete(model, op, y: torch.Tensor, method: str, steps: int, particles: int, seed: int):
    """One completion an observation (model space) and the PosteriorResult."""
    g = torch.Generator().manual_seed(seed)
    if method == "smc":
        res = sd.sample_posterior(model, model.sde, op, y.repeat_interleave(particles, 0), method="smc",
                                  nonfinite="count",
                                  generator=g, steps=steps, particles=particles)
        return res.x.reshape(len(y), particles, *res.x.shape[1:])[:, 0], res
    if method == "replacement":
        res = sd.sample_posterior(model, model.sde, op, y, method="replacement", generator=g, steps=steps,
                                  nonfinite="count")
    else:
        res = sd.sample_posterior(model, model.sde, op, y, method=method, sampler="pc", generator=g, steps=steps,
                                  nonfinite="count",
                                  predictor="reverse_diffusion")
    return res.x, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("/work/runs/digits"), help="a finished experiment=digits run")
    ap.add_argument("--n", type=int, default=100, help="held-out digits")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--particles", type=int, default=8, help="smc: particles a cloud (one cloud a digit)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=3, help="digits a problem in the PNG")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()

    ckpt = args.run / "checkpoints" / "last.pt"
    model = sd.load_model(ckpt)
    model.eval().requires_grad_(False)
    data_cfg = sd.checkpoints.load_checkpoint(ckpt).get("config", {}).get("data", {})
    xtr, ytr, xte, yte = digits_split(n_test=int(data_cfg.get("n_test", 300)), seed=int(data_cfg.get("seed", 0)))
    x0, labels = xte[:args.n].float(), yte[:args.n]
    t0 = time.perf_counter()
    clf = train_classifier(xtr, ytr)
    print(f"classifier trained in {time.perf_counter() - t0:.1f} s", flush=True)

    def judge(x: torch.Tensor, unobserved: torch.Tensor):
        x = torch.nan_to_num(x.float()).clamp(-1, 1)
        acc = float((probs(clf, x).argmax(1) == labels).double().mean())
        err = ((x - x0) / 2) ** 2                       # [0, 1] pixel units
        mse = float((err * unobserved).sum() / (unobserved.sum() * len(x)))
        return acc, mse

    rows, shown_rows, sample_rows, orig_rows = [], [], [], []
    t_all = time.perf_counter()
    for name, op, frac in problems():
        y = op.forward(x0)
        unobs = (~op.mask).float() if isinstance(op, sd.ops.Mask) else torch.ones(1, 8, 8)
        base = op.pinv(y)
        acc, mse = judge(base, unobs)
        rows.append({"problem": name, "observed": frac, "method": "A^+ y (observation)", "accuracy": acc,
                     "mse_unobserved": mse, "nfe": 0, "backward_passes": 0, "seconds": 0.0, "nonfinite": 0})
        acc, mse = judge(x0, unobs)
        rows.append({"problem": name, "observed": frac, "method": "original", "accuracy": acc,
                     "mse_unobserved": mse, "nfe": 0, "backward_passes": 0, "seconds": 0.0, "nonfinite": 0})
        comps = []
        for method in args.methods:
            x, res = complete(model, op, y, method, args.steps, args.particles, args.seed)
            nonfinite = int((~torch.isfinite(x.reshape(len(x), -1)).all(1)).sum())
            acc, mse = judge(x, unobs)
            rows.append({"problem": name, "observed": frac, "method": method, "accuracy": acc, "mse_unobserved": mse,
                         "nfe": int(res.nfe), "backward_passes": int(res.backward_passes),
                         "seconds": round(res.seconds, 2), "nonfinite": nonfinite})
            print(f"{name:24s} {method:12s} acc {acc:.3f} mse {mse:.4f} nfe {res.nfe} {res.seconds:.1f} s", flush=True)
            comps.append(torch.nan_to_num(x.float()).clamp(-1, 1)[:args.show])
        shown = (base[:args.show].clamp(-1, 1) + 1) / 2
        rgb = shown.expand(-1, 3, -1, -1).clone()
        if isinstance(op, sd.ops.Mask):   # missing pixels in red
            miss = ~op.mask[0]
            rgb[:, 0][:, miss], rgb[:, 1][:, miss], rgb[:, 2][:, miss] = 0.55, 0.15, 0.15
        shown_rows.append(rgb)
        sample_rows.append((torch.stack(comps, 1) + 1) / 2)
        orig_rows.append((x0[:args.show] + 1) / 2)
    total = time.perf_counter() - t_all
    load1 = os.getloadavg()

    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "inverse_digits.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    save_inverse_png(torch.cat(shown_rows), torch.cat(sample_rows), torch.cat(orig_rows),
                     args.results / "inverse_digits.png",
                     title=f"{args.show} rows each: inpaint top 2, 4, 6 of 8 rows; super-resolution 2x, 4x",
                     column_titles=["observed"] + list(args.methods) + ["original"])
    lines = [
        "# Digits inverse problems: inpainting and super-resolution with the unconditional digits model",
        "",
        f"Generated by `python benchmarks/inverse_digits.py {' '.join(sys.argv[1:])}` "
        f"(checkpoint `{ckpt}`, step {model.checkpoint.get('step')}). {args.n} held-out digits, noiseless "
        f"observations, one completion a digit, {args.steps} steps a method (replacement: + one Langevin "
        f"corrector a step, so twice the NFE; smc: {args.particles} particles a cloud, one cloud a digit, "
        f"NFE counted per batch of all clouds). Judge: the kernel-logistic digits classifier of "
        f"benchmarks/digits.py (label accuracy vs the original's label); MSE on the unobserved pixels in "
        f"[0, 1] units (super-resolution: all pixels). Total {total:.0f} s on {args.threads} thread(s), "
        f"load average {load0[0]:.2f} before / {load1[0]:.2f} after.",
        "",
        "| problem | observed | method | accuracy | MSE unobserved | NFE | backward passes | seconds | non-finite |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['observed']:.3g} | {r['method']} | {r['accuracy']:.2f} | "
                     f"{r['mse_unobserved']:.4f} | {r['nfe']} | {r['backward_passes']} | {r['seconds']:.1f} | "
                     f"{r['nonfinite']} |")
    lines += ["", "Rows of the grid: the first digits of each problem, in the table's order; "
              "columns: observation (A^+ y; missing pixels red) | " + " | ".join(args.methods) + " | original.",
              "", "![grid](inverse_digits.png)", ""]
    (args.results / "inverse_digits.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
