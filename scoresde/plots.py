"""Plots of samples.  matplotlib is imported inside the functions (Agg backend), so that
``import scoresde`` never loads it and a headless machine needs no display."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

import torch

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

__all__ = ["save_samples_png", "samples_figure", "image_grid"]


def _classes(labels: Optional[Tensor], n: int):
    """``labels`` as a CPU ``[n]`` tensor and its classes in the order they first appear."""
    if labels is None:
        return None, []
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if labels.shape[0] != n:
        raise ValueError(f"{labels.shape[0]} labels for {n} samples")
    classes: list = []
    for v in labels.tolist():
        if v not in classes:
            classes.append(v)
    return labels, classes


def image_grid(x: Tensor, labels: Optional[Tensor] = None, per_row: int = 16):
    """The ``[C, rows (H + 1) + 1, cols (W + 1) + 1]`` grid of images ``x [N, C, H, W]`` (white
    1-pixel borders), with its ``rows`` and ``cols``.

    Without ``labels``: the first 64 images in a near-square grid.  With ``labels`` (``[N]``): row r
    holds the first ``per_row`` images of the r-th class in order of first appearance.
    """
    x = x.detach().float().cpu()
    labels, classes = _classes(labels, x.shape[0])
    if classes:
        cells = [torch.nonzero(labels == c).reshape(-1).tolist()[:per_row] for c in classes]
        cols = max(len(r) for r in cells)
    else:
        n = min(x.shape[0], 64)
        cols = int(math.ceil(math.sqrt(n)))
        cells = [list(range(r * cols, min(n, (r + 1) * cols))) for r in range(int(math.ceil(n / cols)))]
    rows = len(cells)
    C, H, W = x.shape[1:]
    grid = torch.ones(C, rows * (H + 1) + 1, cols * (W + 1) + 1)
    for r, idx in enumerate(cells):
        for c, i in enumerate(idx):
            grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = x[i]
    return grid, rows, cols


def _fitted_limits(xf: Tensor, rf: Optional[Tensor], q: float = 0.01):
    """Per-axis ``(lo, hi)`` for a scatter of samples ``xf [N, 2]`` over data ``rf``: the data's
    range joined with the samples' central ``1 - 2q`` (so a shifted or spread-out bulk stays in
    view), plus 15% margins.  A few far-off samples (a diverged trajectory at 1e3) would otherwise
    set the axes and shrink the data to a dot, hiding what the plot is for."""
    finite = xf[torch.isfinite(xf).all(1)]
    out = []
    for d in range(2):
        parts = []
        if finite.shape[0]:
            col = finite[:, d].double()
            parts += [float(torch.quantile(col, q)), float(torch.quantile(col, 1 - q))]
        if rf is not None and rf.shape[0]:
            parts += [float(rf[:, d].min()), float(rf[:, d].max())]
        if not parts:
            return None
        lo, hi = min(parts), max(parts)
        pad = 0.15 * (hi - lo) if hi > lo else 1.0
        out.append((lo - pad, hi + pad))
    return out


def save_samples_png(x: Tensor, path: PathLike, reference: Optional[Tensor] = None, title: str = "",
                     labels: Optional[Tensor] = None, per_row: int = 16) -> Path:
    """Samples as a PNG (:func:`samples_figure`)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = samples_figure(x, reference, title, labels, per_row)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def samples_figure(x: Tensor, reference: Optional[Tensor] = None, title: str = "",
                   labels: Optional[Tensor] = None, per_row: int = 16):
    """The figure of :func:`save_samples_png`: a scatter plot for vectors (first two coordinates,
    over ``reference`` in grey), an image grid for ``[N, C, H, W]`` with values in [0, 1].

    A scatter's axes are fitted to the data and the bulk of the samples (:func:`_fitted_limits`);
    samples beyond them are counted in the title ("k of N samples outside the axes").
    ``labels`` (``[N]`` ints, the class each sample was drawn for): images get one row per class,
    in the order the classes first appear, with up to ``per_row`` of its samples and the class
    written on the left; vectors get one colour per class.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.detach().float().cpu()
    labels, classes = _classes(labels, x.shape[0])
    if x.dim() == 4:
        grid, rows, cols = image_grid(x, labels, per_row)
        C, H, W = x.shape[1:]
        img = grid.clamp(0, 1).permute(1, 2, 0).numpy()
        fig, ax = plt.subplots(figsize=(6, max(6 * rows / cols, 1.5)))
        ax.imshow(img[..., 0] if C == 1 else img, cmap="gray" if C == 1 else None, interpolation="nearest")
        if classes:
            ax.set_yticks([1 + r * (H + 1) + (H - 1) / 2 for r in range(rows)])
            ax.set_yticklabels([str(c) for c in classes])
            ax.set_xticks([])
            ax.tick_params(length=0)
            for s in ax.spines.values():
                s.set_visible(False)
    else:
        xf = x.reshape(x.shape[0], -1)
        if xf.shape[1] == 1:
            xf = torch.cat([xf, torch.zeros_like(xf)], 1)
        fig, ax = plt.subplots(figsize=(6, 6))
        rf = None
        if reference is not None:
            rf = reference.detach().float().cpu().reshape(reference.shape[0], -1)
            if rf.shape[1] >= 2:
                ax.scatter(rf[:, 0], rf[:, 1], s=2, c="0.75", label="data")
            else:
                rf = None
        if classes:
            for k, c in enumerate(classes):
                m = labels == c
                ax.scatter(xf[m, 0], xf[m, 1], s=2, c=f"C{k % 10}", label=f"class {c}")
        else:
            ax.scatter(xf[:, 0], xf[:, 1], s=2, c="C0", label="samples")
        limits = _fitted_limits(xf[:, :2], rf)
        if limits is not None:
            (x0, x1), (y0, y1) = limits
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            inside = (xf[:, 0] >= x0) & (xf[:, 0] <= x1) & (xf[:, 1] >= y0) & (xf[:, 1] <= y1)
            outside = int((~inside).sum())
            if outside:
                title = (title + "\n" if title else "") + f"{outside} of {xf.shape[0]} samples outside the axes"
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    if x.dim() == 4 and not classes:
        ax.axis("off")
    fig.tight_layout()
    return fig
