"""Editing on the 8x8 digits: the probability-flow encoder's round trip, SDEdit's realism against
faithfulness as t0 grows, and interpolation between digits of two classes.

With the U-Net of ``experiment=digits`` (``--run``, its ``checkpoints/last.pt``; train it with
``python -m scoresde train experiment=digits hydra.run.dir=RUN`` or ``benchmarks/digits.py``):

1. **Reconstruction against NFE.**  ``--n-recon`` held-out digits x are encoded to z at T
   (:func:`scoresde.edit.encode`) and decoded back (:func:`scoresde.edit.decode`), by
   ``dopri5`` at several rtol = atol (log sigma~, both ways), by DDIM inversion (``"ddim"``:
   first order, the Euler step in sigma~ that diffusers users run) decoded by DDIM on the same
   grid, and by DPM-Solver++(2M) both ways, at several step counts (``vp_quadratic`` grid).  The
   table gives the relative error |x' - x| / |x| (mean and max over the digits), the RMSE in
   [0, 1] pixel units and the NFE of each direction.
2. **SDEdit's trade-off.**  From ``--n-edit`` held-out digits three kinds of coarse guide are
   made: ``blur`` (2x2 average pooling, shown at 8x8), ``down4`` (4x4 average pooling: a 2x2
   image) and ``strokes`` (the digit thresholded at mid-gray to flat ink/paper, then shifted by a
   pixel in a random direction: a hand-drawn-like stroke image that is off the data manifold).
   Each is edited at each ``--t0`` by the reverse SDE (Euler-Maruyama, ``max(20, round(--steps
   * t0))`` steps from t0 down to 1e-3; VP's alpha(t0) is 0.985, 0.95, 0.81, 0.63, 0.28, 0.007 at
   the default t0 = 0.05 ... 1), and judged by the digits classifier of ``benchmarks/digits.py``
   (kernel logistic regression on the real training digits).
   Realism: the classifier's mean confidence (max probability; it falls towards the class prior
   away from the data: real held-out digits 0.92, uniform noise 0.3).  Faithfulness: the RMSE to
   the guide in [0, 1] pixels, and whether the original's label survives (the classifier's
   accuracy against it; the RMSE to the original for reference).
3. **Interpolation.**  ``--pairs`` pairs of held-out digits of two classes, encoded, slerped
   (``--interp`` points) and decoded: the grid ``edit_interpolation.png``.

Writes benchmarks/results/edit.md, edit_recon.csv, edit_sdedit.csv, edit_recon.png (error
against NFE), edit_tradeoff.png (realism against faithfulness), edit_sdedit.png (guides and
edits) and edit_interpolation.png.

    PYTHONPATH=$PWD python benchmarks/edit.py --run /work/runs/digits --threads 1
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
from scoresde.data.images import digits_split  # noqa: E402

from digits import probs, train_classifier  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GUIDES = ("blur", "down4", "strokes")


def make_guides(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Coarse guides from digits ``[B, 1, 8, 8]`` in [-1, 1] (see the module docstring)."""
    if kind in ("blur", "down4"):
        f = 2 if kind == "blur" else 4
        return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, f), scale_factor=f, mode="nearest")
    if kind == "strokes":
        ink = torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x))
        shifts = torch.randint(-1, 2, (len(x), 2), generator=generator)
        return torch.stack([torch.roll(ink[i], tuple(shifts[i].tolist()), dims=(1, 2)) for i in range(len(x))])
    raise ValueError(f"unknown guide kind {kind!r}; valid: {GUIDES}")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).reshape(len(a), -1).norm(dim=1) / b.reshape(len(b), -1).norm(dim=1)


def rmse01(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean squared difference in [0, 1] pixel units (the images are in [-1, 1])."""
    return float((((a - b) / 2) ** 2).mean().sqrt())


def tile(rows, pad: float = -1.0) -> torch.Tensor:
    """A list of rows, each a ``[k, 1, 8, 8]`` tensor, as one image (ink dark on white)."""
    out = []
    for r in rows:
        r = torch.nn.functional.pad(r[:, 0].clamp(-1, 1), (1, 1, 1, 1), value=pad)
        out.append(torch.cat(list(r), 1))
    return torch.cat(out, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("/work/runs/digits"), help="a finished experiment=digits run")
    ap.add_argument("--n-recon", type=int, default=16, help="held-out digits for the round trip")
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5, 1e-6, 1e-7])
    ap.add_argument("--fewstep", type=int, nargs="+", default=[10, 25, 50, 100], help="ddim / dpm_solver steps")
    ap.add_argument("--n-edit", type=int, default=100, help="held-out digits a guide kind")
    ap.add_argument("--t0", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5, 1.0])
    ap.add_argument("--steps", type=int, default=200,
                    help="Euler-Maruyama steps over [0, 1] (max(20, round(steps t0)) a run)")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--interp", type=int, default=9)
    ap.add_argument("--interp-tol", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--note", default="", help="a line added to the report")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    args.results.mkdir(parents=True, exist_ok=True)

    ckpt = args.run / "checkpoints" / "last.pt"
    model = sd.load_model(ckpt)
    model.eval().requires_grad_(False)
    sde = model.sde
    data_cfg = model.checkpoint.get("config", {}).get("data", {})
    xtr, ytr, xte, yte = digits_split(n_test=int(data_cfg.get("n_test", 300)), seed=int(data_cfg.get("seed", 0)))
    xte = xte.float()
    t0c = time.perf_counter()
    clf = train_classifier(xtr, ytr)
    print(f"classifier trained in {time.perf_counter() - t0c:.1f} s", flush=True)

    # -- 1. reconstruction against NFE ---------------------------------------------------------------
    x = xte[:args.n_recon]
    recon = []

    def add(solver, setting, enc, dec):
        r = rel_err(dec.x, x)
        row = dict(solver=solver, setting=setting, nfe_encode=enc.nfe, nfe_decode=dec.nfe,
                   rel_err_mean=float(r.mean()), rel_err_max=float(r.max()), rmse01=rmse01(dec.x, x),
                   seconds=round(enc.seconds + dec.seconds, 2))
        recon.append(row)
        print(f"recon {solver:10s} {setting:12s} nfe {enc.nfe:4d}+{dec.nfe:4d} rel {row['rel_err_mean']:.2e} "
              f"(max {row['rel_err_max']:.2e}) {row['seconds']:.1f} s", flush=True)

    for tol in args.tols:
        enc = sd.edit.encode(model, sde, x, rtol=tol, atol=tol)
        dec = sd.edit.decode(model, sde, enc.z, rtol=tol, atol=tol)
        add("dopri5", f"tol {tol:g}", enc, dec)
    for method, order in (("ddim", 1), ("dpm_solver", 2)):
        for n in args.fewstep:
            enc = sd.edit.encode(model, sde, x, method=method, steps=n)
            dec = sd.edit.decode(model, sde, enc.z, sampler="dpm_solver", order=order, steps=n, grid="vp_quadratic")
            add("ddim" if method == "ddim" else "dpm_solver 2M", f"{n} steps", enc, dec)

    # -- 2. SDEdit's trade-off ---------------------------------------------------------------------
    gen = torch.Generator().manual_seed(args.seed)
    xe, ye = xte[args.n_recon:args.n_recon + args.n_edit], yte[args.n_recon:args.n_recon + args.n_edit]
    guides = {k: make_guides(xe, k, gen) for k in GUIDES}
    g_all = torch.cat([guides[k] for k in GUIDES])
    orig_all = xe.repeat(len(GUIDES), 1, 1, 1)
    y_all = ye.repeat(len(GUIDES))
    n = args.n_edit

    def judge(img: torch.Tensor, sl: slice):
        img = torch.nan_to_num(img.float()).clamp(-1, 1)
        p = probs(clf, img)
        return float((p.argmax(1) == y_all[sl]).double().mean()), float(p.max(1).values.mean())

    edit_rows, shown = [], {k: [] for k in GUIDES}
    for i, k in enumerate(GUIDES):
        sl = slice(i * n, (i + 1) * n)
        acc, conf = judge(guides[k], sl)
        edit_rows.append(dict(guide=k, t0=0.0, steps=0, nfe=0, accuracy=acc, confidence=conf,
                              rmse_guide=0.0, rmse_original=rmse01(guides[k], xe), seconds=0.0))
    acc, conf = judge(xe.repeat(len(GUIDES), 1, 1, 1)[:n], slice(0, n))
    real = dict(accuracy=acc, confidence=conf)
    for t0 in args.t0:
        steps = max(20, round(args.steps * t0))
        out = sd.edit.sdedit(model, sde, g_all, t0, sampler="sde", steps=steps,
                             generator=torch.Generator().manual_seed(args.seed + 1))
        edits = torch.nan_to_num(out.x).clamp(-1, 1)
        for i, k in enumerate(GUIDES):
            sl = slice(i * n, (i + 1) * n)
            acc, conf = judge(edits[sl], sl)
            row = dict(guide=k, t0=t0, steps=steps, nfe=out.nfe, accuracy=acc, confidence=conf,
                       rmse_guide=rmse01(edits[sl], g_all[sl]), rmse_original=rmse01(edits[sl], orig_all[sl]),
                       seconds=round(out.seconds, 2))
            edit_rows.append(row)
            shown[k].append(edits[sl][:3])
            print(f"sdedit {k:8s} t0 {t0:.2f} acc {acc:.2f} conf {conf:.2f} rmse guide {row['rmse_guide']:.3f} "
                  f"orig {row['rmse_original']:.3f} ({out.seconds:.1f} s)", flush=True)

    # -- 3. interpolation --------------------------------------------------------------------------
    class_pairs = [(0, 1), (3, 8), (4, 9), (2, 7), (5, 6), (1, 7)][:args.pairs]
    xa = torch.stack([xte[(yte == a).nonzero()[0, 0]] for a, _ in class_pairs])
    xb = torch.stack([xte[(yte == b).nonzero()[0, 0]] for _, b in class_pairs])
    opts = dict(rtol=args.interp_tol, atol=args.interp_tol)
    inter = sd.edit.interpolate(model, sde, xa, xb, args.interp, encode_options=opts, decode_options=opts)
    print(f"interpolation: {len(class_pairs)} pairs x {args.interp} points, NFE {inter.nfe}, "
          f"{inter.seconds:.1f} s", flush=True)
    ends = float(torch.maximum(rel_err(inter.x[:, 0], xa), rel_err(inter.x[:, -1], xb)).max())
    mid_p = probs(clf, inter.x[:, args.interp // 2].clamp(-1, 1))

    # -- outputs ------------------------------------------------------------------------------------
    total = time.perf_counter() - t_all
    load1 = os.getloadavg()
    with open(args.results / "edit_recon.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(recon[0]))
        w.writeheader()
        w.writerows(recon)
    with open(args.results / "edit_sdedit.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(edit_rows[0]))
        w.writeheader()
        w.writerows(edit_rows)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for solver in dict.fromkeys(r["solver"] for r in recon):
        rs = [r for r in recon if r["solver"] == solver]
        ax.loglog([r["nfe_encode"] + r["nfe_decode"] for r in rs], [r["rel_err_mean"] for r in rs], "o-", label=solver)
    ax.set_xlabel("NFE (encode + decode)")
    ax.set_ylabel("relative round-trip error |x' - x| / |x|")
    ax.set_title(f"digits: encode/decode round trip ({len(x)} held-out digits)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.results / "edit_recon.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for k in GUIDES:
        rs = [r for r in edit_rows if r["guide"] == k]
        for ax, key in zip(axes, ("confidence", "accuracy")):
            ax.plot([r["rmse_guide"] for r in rs], [r[key] for r in rs], "o-", label=k)
            for r in rs:
                ax.annotate(f"{r['t0']:g}", (r["rmse_guide"], r[key]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    for ax, key, what in zip(axes, ("confidence", "accuracy"),
                             ("realism: classifier confidence", "label kept: accuracy on the original's label")):
        ax.axhline(real[key], color="gray", ls="--", lw=1, label="real held-out digits")
        ax.set_xlabel("RMSE to the guide ([0, 1] pixels): unfaithfulness")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle("SDEdit on digits: realism against faithfulness (labels: t0)")
    fig.tight_layout()
    fig.savefig(args.results / "edit_tradeoff.png", dpi=120)
    plt.close(fig)

    # guides and edits: for each kind, 3 digits as rows: original | guide | edits at each t0
    rows = []
    for k in GUIDES:
        for j in range(3):
            rows.append(torch.cat([xe[j:j + 1], guides[k][j:j + 1]] + [e[j:j + 1] for e in shown[k]]))
    img = tile(rows)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * (2 + len(args.t0)), 0.55 * len(rows) + 0.8))
    ax.imshow(img.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([10 * c + 4.5 for c in range(2 + len(args.t0))])
    ax.set_xticklabels(["original", "guide"] + [f"t0={t:g}" for t in args.t0], fontsize=7, rotation=45)
    ax.set_yticks([10 * (3 * i + 1) + 4.5 for i in range(len(GUIDES))])
    ax.set_yticklabels(list(GUIDES), fontsize=8)
    ax.set_title("SDEdit (reverse SDE) from coarse guides", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.results / "edit_sdedit.png", dpi=130)
    plt.close(fig)

    img = tile(list(inter.x))
    fig, ax = plt.subplots(figsize=(0.55 * args.interp + 1, 0.55 * len(class_pairs) + 0.8))
    ax.imshow(img.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([10 * c + 4.5 for c in range(args.interp)])
    ax.set_xticklabels([f"{w:.2f}" for w in inter.weights.tolist()], fontsize=7)
    ax.set_yticks([10 * i + 4.5 for i in range(len(class_pairs))])
    ax.set_yticklabels([f"{a} -> {b}" for a, b in class_pairs], fontsize=8)
    ax.set_title("probability-flow latents, slerp, decoded", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.results / "edit_interpolation.png", dpi=130)
    plt.close(fig)

    step = model.checkpoint.get("step")
    lines = [
        "# Editing on digits: encoder round trip, SDEdit trade-off, interpolation",
        "",
        "Written by `python benchmarks/edit.py` (scoresde/edit.py).",
        "",
        f"- model: the `experiment=digits` U-Net, checkpoint `RUN/checkpoints/last.pt` (step {step}), SDE {sde.name}; "
        f"{args.threads} thread(s), load average {load0[0]:.1f} at the start and {load1[0]:.1f} at the end "
        f"(2 shared CPU cores); whole run {total / 60:.1f} min",
        "- judge: the kernel logistic-regression digits classifier of `benchmarks/digits.py` (real training "
        f"digits); on {n} real held-out digits: accuracy {real['accuracy']:.2f}, mean confidence {real['confidence']:.2f}",
    ]
    if args.note:
        lines.append(f"- {args.note}")
    lines += [
        "",
        f"## 1. Encode/decode round trip ({len(x)} held-out digits, eps = 1e-3)",
        "",
        "dopri5: the probability-flow ODE in log sigma~ at rtol = atol = tol both ways; ddim: DDIM inversion "
        "(first order) and DDIM decoding on the same `vp_quadratic` grid; dpm_solver 2M: DPM-Solver++(2M) both "
        "ways on that grid. Error |x' - x| / |x| per digit (images in [-1, 1]).",
        "",
        "| solver | setting | NFE encode | NFE decode | rel. error mean | rel. error max | RMSE [0,1] px | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in recon:
        lines.append(f"| {r['solver']} | {r['setting']} | {r['nfe_encode']} | {r['nfe_decode']} | "
                     f"{r['rel_err_mean']:.2e} | {r['rel_err_max']:.2e} | {r['rmse01']:.2e} | {r['seconds']} |")
    lines += [
        "",
        "![round trip](edit_recon.png)",
        "",
        f"## 2. SDEdit: realism against faithfulness ({n} held-out digits a guide kind)",
        "",
        f"Reverse SDE (Euler-Maruyama), max(20, round({args.steps} t0)) steps from t0 to 1e-3, one edit a guide (seed "
        f"{args.seed + 1}). Guides: blur = 2x2 average pooling, down4 = 4x4 average pooling, strokes = the digit "
        "thresholded to ink/paper and shifted by up to a pixel. confidence (realism): the classifier's mean "
        "max-probability; accuracy (label kept): its label equals the original digit's; RMSE in [0, 1] pixels. "
        "t0 = 0: the guide itself.",
        "",
        "| guide | t0 | steps (NFE) | accuracy | confidence | RMSE to guide | RMSE to original |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in edit_rows:
        lines.append(f"| {r['guide']} | {r['t0']:g} | {r['nfe']} | {r['accuracy']:.2f} | {r['confidence']:.2f} | "
                     f"{r['rmse_guide']:.3f} | {r['rmse_original']:.3f} |")
    lines += [
        "",
        "![trade-off](edit_tradeoff.png)",
        "",
        "![edits](edit_sdedit.png)",
        "",
        f"## 3. Interpolation ({len(class_pairs)} pairs of held-out digits, {args.interp} points)",
        "",
        f"dopri5 at rtol = atol = {args.interp_tol:g} both ways, slerp of the latents (norm interpolated "
        f"linearly); NFE {inter.nfe} in all. The end columns reproduce the inputs to {ends:.1e} relative; "
        f"the classifier's mean confidence on the midpoints: {float(mid_p.max(1).values.mean()):.2f}.",
        "",
        "![interpolation](edit_interpolation.png)",
        "",
    ]
    (args.results / "edit.md").write_text("\n".join(lines))
    print(f"wrote {args.results / 'edit.md'} in {total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
