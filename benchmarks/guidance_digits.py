"""Guidance on the 8x8 digits: does the requested label come out, and what does guidance cost in diversity?

Two guided samplers, each at guidance scales 0, 1, 2, 4 (scale 0 = unconditional):

* ``cfg``: the class-conditional U-Net of ``experiment=digits_cond`` guided by itself
  (``sd.guidance.cfg_model``: conditional and null-label halves in one batched call a step);
* ``classifier``: the unconditional U-Net of ``experiment=digits`` plus the noisy classifier of
  ``experiment=digits_clf`` (``sd.guidance.classifier`` with ``classifier_log_prob_fn``).

The judge is the digits classifier of ``benchmarks/digits.py`` (kernel logistic regression on the
real training digits of the same split; its functions are reused).  For ``--n-per-class`` samples
of each class (the same noise for every scale) it reports:

* ``accuracy``: the fraction whose judged label (argmax) is the requested one; ``confidence``: the
  mean probability the judge gives the requested label;
* ``H(pred|y)``: the class-conditional entropy of the judged label given the requested one (nats;
  0 when every sample is judged the requested class, log 10 = 2.30 when the label is ignored);
* ``within-class distance``: the mean pairwise Euclidean distance between samples of one class
  (pixels in [-1, 1]; the diversity guidance trades away), against the same for real held-out
  digits of that class;
* ``NN distance``: the mean distance from a sample to its nearest training digit (memorisation
  check: far below the real held-out digits' value would mean copies).

Writes benchmarks/results/guidance_digits.md and .csv and one grid a (guide, scale),
benchmarks/results/guidance_digits_<guide>_s<scale>.png (rows = classes 0..9).

    python benchmarks/guidance_digits.py --cond-run /work/runs/digits_cond \\
        --uncond-run /work/runs/digits --clf-run /work/runs/digits_clf
"""

from __future__ import annotations

import argparse
import csv
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
from scoresde.classifier import classifier_log_prob_fn  # noqa: E402
from scoresde.data.images import digits_split  # noqa: E402

from digits import nearest_train_distance, probs, save_grid, train_classifier  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SCALES = (0.0, 1.0, 2.0, 4.0)


def within_class_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean pairwise distance between images of the same class, averaged over classes."""
    vals = []
    for c in y.unique():
        xc = x[y == c].reshape(int((y == c).sum()), -1).double()
        if xc.shape[0] < 2:
            continue
        d = torch.cdist(xc, xc)
        vals.append(float(d.sum() / (xc.shape[0] * (xc.shape[0] - 1))))
    return sum(vals) / len(vals)


def judge(judge_clf, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor) -> dict:
    p = probs(judge_clf, x)
    pred = p.argmax(1)
    # H(pred | y): entropy of the judged-label histogram of each requested class, averaged
    h = []
    for c in y.unique():
        counts = torch.bincount(pred[y == c], minlength=10).double()
        q = counts / counts.sum()
        h.append(float(-(q[q > 0] * q[q > 0].log()).sum()))
    return {"accuracy": float((pred == y).double().mean()),
            "confidence": float(p.gather(1, y[:, None]).mean()),
            "H_pred_given_y": sum(h) / len(h),
            "within_class_dist": within_class_distance(x, y),
            "nn_train_dist": nearest_train_distance(x, train)}


def draw(score_fn, sde, n: int, sampler: dict, seed: int) -> tuple:
    opts = {k: v for k, v in sampler.items() if k != "name"}
    g = torch.Generator().manual_seed(seed)   # the same noise at every scale
    t0 = time.perf_counter()
    res = sd.sample(score_fn, sde, (n, 1, 8, 8), sampler=sampler.get("name", "pc"), generator=g, **opts)
    return res.x.clamp(-1, 1), int(res.nfe), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cond-run", type=Path, default=Path("/work/runs/digits_cond"))
    ap.add_argument("--uncond-run", type=Path, default=Path("/work/runs/digits"))
    ap.add_argument("--clf-run", type=Path, default=Path("/work/runs/digits_clf"))
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's sampler config)")
    ap.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    ap.add_argument("--guides", nargs="+", default=["cfg", "classifier"], choices=["cfg", "classifier"])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="")
    ap.add_argument("--keep-other-guides", action="store_true",
                    help="keep the rows of the guides not run now from the existing CSV")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)

    x_tr, y_tr, x_te, y_te = digits_split(n_test=300, seed=0)
    t0 = time.perf_counter()
    judge_clf = train_classifier(x_tr, y_tr)
    judge_acc = float((probs(judge_clf, x_te).argmax(1) == y_te).double().mean())
    print(f"judge: held-out accuracy {judge_acc:.3f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    real = judge(judge_clf, x_te, y_te, x_tr)

    K, npc = 10, args.n_per_class
    labels = torch.arange(K).repeat_interleave(npc)
    rows, runs = [], {}
    for guide in args.guides:
        if guide == "cfg":
            ckpt = args.cond_run / "checkpoints" / "last.pt"
            model = sd.load_model(ckpt)
            runs[guide] = f"{ckpt} (step {model.checkpoint['step']})"
        else:
            ckpt = args.uncond_run / "checkpoints" / "last.pt"
            model = sd.load_model(ckpt)
            clf_ckpt = args.clf_run / "checkpoints" / "last.pt"
            clf = sd.load_classifier(clf_ckpt)
            if clf.spec["sde"] != model.checkpoint["config"]["sde"]:
                raise ValueError(f"classifier SDE {clf.spec['sde']} differs from the model's")
            runs[guide] = (f"{ckpt} (step {model.checkpoint['step']}) + {clf_ckpt} "
                           f"(step {clf.checkpoint['step']})")
            log_prob = classifier_log_prob_fn(clf, labels)
        sampler = dict(model.checkpoint["config"].get("sampler") or {"name": "pc"})
        if args.steps:
            sampler["steps"] = args.steps
        for scale in args.scales:
            if guide == "cfg":
                fn = sd.guidance.cfg_model(model, labels, scale)
            else:
                fn = sd.guidance.classifier(model, log_prob, scale)
            x, nfe, secs = draw(fn, model.sde, len(labels), sampler, args.seed)
            passes = fn.forward_passes if guide == "cfg" else None
            row = {"guide": guide, "scale": scale, "n": len(labels), "nfe": nfe, "forward_passes": passes,
                   "seconds": round(secs, 1), **judge(judge_clf, x, labels, x_tr)}
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            save_grid(x[labels < K].reshape(K, npc, 1, 8, 8)[:, :10].reshape(-1, 1, 8, 8),
                      _real_grid(x_te, y_te),
                      RESULTS / f"guidance_digits_{guide}_s{scale:g}.png")
    write(rows, real, judge_acc, runs, sampler, args)


def _real_grid(x_te: torch.Tensor, y_te: torch.Tensor) -> torch.Tensor:
    """Ten real held-out digits of each class, class-major (rows = classes, as the samples)."""
    return torch.cat([x_te[y_te == c][:10] for c in range(10)])


def _args_shown() -> str:
    """The command's arguments, with the text of ``--note`` (written below the table) left out."""
    out, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            out.append("...")
            skip = False
        elif a == "--note":
            out.append(a)
            skip = True
        else:
            out.append(a.split("=", 1)[0] + "=..." if a.startswith("--note=") else a)
    return " ".join(out)


def write(rows, real, judge_acc, runs, sampler, args) -> None:
    keys = ["guide", "scale", "n", "nfe", "forward_passes", "seconds", "accuracy", "confidence",
            "H_pred_given_y", "within_class_dist", "nn_train_dist", "run"]
    for r in rows:
        r["run"] = runs[r["guide"]]
    if args.keep_other_guides and (RESULTS / "guidance_digits.csv").is_file():
        # rows of the guides not rerun now stay (the two guides can run at different times)
        with open(RESULTS / "guidance_digits.csv", newline="") as f:
            old = [r for r in csv.DictReader(f) if r["guide"] not in args.guides and r["guide"] != "real held-out"]
        for r in old:
            for k in ("scale", "accuracy", "confidence", "H_pred_given_y", "within_class_dist", "nn_train_dist",
                      "seconds"):
                r[k] = float(r[k])
            r["forward_passes"] = int(r["forward_passes"]) if r["forward_passes"] else None
            runs.setdefault(r["guide"], r["run"])
        rows = old + rows
    with open(RESULTS / "guidance_digits.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
        w.writerow({"guide": "real held-out", "n": 300, **real})
    load = os.getloadavg()
    lines = ["# Guidance on the 8x8 digits\n",
             "Generated by `python benchmarks/guidance_digits.py` (" + _args_shown() + "). "
             f"Judge: the kernel-logistic digits classifier of benchmarks/digits.py, held-out accuracy "
             f"{judge_acc:.3f}.  {args.n_per_class} samples a class, the same noise at every scale; sampler "
             f"{sampler}.  Threads {args.threads}; load average at the end {load[0]:.1f} on 2 shared cores "
             "(seconds are under that load).\n",
             *[f"- {g}: {r}\n" for g, r in runs.items()],
             "\n| guide | scale | accuracy | confidence | H(pred\\|y) nats | within-class dist | NN dist to train | NFE | forward passes | s |\n",
             "|---|---|---|---|---|---|---|---|---|---|\n"]
    for r in rows:
        lines.append(f"| {r['guide']} | {r['scale']:g} | {r['accuracy']:.3f} | {r['confidence']:.3f} | "
                     f"{r['H_pred_given_y']:.3f} | {r['within_class_dist']:.3f} | {r['nn_train_dist']:.3f} | "
                     f"{r['nfe']} | {r['forward_passes'] if r['forward_passes'] is not None else '-'} | {r['seconds']} |\n")
    lines.append(f"| real held-out digits | - | {real['accuracy']:.3f} | {real['confidence']:.3f} | "
                 f"{real['H_pred_given_y']:.3f} | {real['within_class_dist']:.3f} | {real['nn_train_dist']:.3f} | - | - | - |\n")
    best = {}
    for r in rows:
        if r["accuracy"] >= best.get(r["guide"], {"accuracy": -1})["accuracy"]:
            best[r["guide"]] = r
    lines.append("\nGoal (issue 12): the requested label recognised in >= 95% of samples at some scale: "
                 + "; ".join(f"{g}: best {b['accuracy']:.3f} at scale {b['scale']:g} "
                             f"({'met' if b['accuracy'] >= 0.95 else 'NOT met'})" for g, b in best.items())
                 + ".\n")
    lines.append("\nGrids: `guidance_digits_<guide>_s<scale>.png` (left: samples, row = requested class 0..9; "
                 "right: real held-out digits of the same classes).\n")
    if args.note:
        lines.append("\n" + args.note + "\n")
    (RESULTS / "guidance_digits.md").write_text("".join(lines))
    print("".join(lines))


if __name__ == "__main__":
    main()
