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

__all__ = ["save_samples_png"]


def save_samples_png(x: Tensor, path: PathLike, reference: Optional[Tensor] = None, title: str = "") -> Path:
    """Samples as a PNG: a scatter plot for vectors (first two coordinates, over ``reference``
    in grey), an image grid for ``[N, C, H, W]`` with values in [0, 1]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().float().cpu()
    if x.dim() == 4:
        n = min(x.shape[0], 64)
        cols = int(math.ceil(math.sqrt(n)))
        rows = int(math.ceil(n / cols))
        C, H, W = x.shape[1:]
        grid = torch.ones(C, rows * (H + 1) + 1, cols * (W + 1) + 1)
        for i in range(n):
            r, c = divmod(i, cols)
            grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = x[i]
        img = grid.clamp(0, 1).permute(1, 2, 0).numpy()
        fig, ax = plt.subplots(figsize=(6, 6 * rows / cols))
        ax.imshow(img[..., 0] if C == 1 else img, cmap="gray" if C == 1 else None, interpolation="nearest")
    else:
        xf = x.reshape(x.shape[0], -1)
        if xf.shape[1] == 1:
            xf = torch.cat([xf, torch.zeros_like(xf)], 1)
        fig, ax = plt.subplots(figsize=(6, 6))
        if reference is not None:
            rf = reference.detach().float().cpu().reshape(reference.shape[0], -1)
            if rf.shape[1] >= 2:
                ax.scatter(rf[:, 0], rf[:, 1], s=2, c="0.75", label="data")
        ax.scatter(xf[:, 0], xf[:, 1], s=2, c="C0", label="samples")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    ax.axis("off" if x.dim() == 4 else "on")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
