"""Kernel Inception Distance (Binkowski et al. 2018): an unbiased MMD^2 with a cubic polynomial kernel.

With the kernel k(x, y) = (x . y / D + 1)^3 on D-dimensional features, the squared maximum mean
discrepancy between the feature distributions P and Q is

    MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y),   X, X' ~ P,  Y, Y' ~ Q independent,

and on m samples of each its unbiased estimate (U-statistics on the within-set terms) is

    sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2.

Unlike the Frechet distance, its expectation does not depend on m, so KID at small n is
unbiased (its spread, not its mean, grows as n shrinks).  As Binkowski et al., torch-fidelity and
torchmetrics, the estimate is averaged over ``subsets`` random subsets of ``subset_size`` from each
set (drawn without replacement within a subset, from the caller's generator).  Reported: the
mean, the standard deviation over subsets, and ``stderr`` = std / sqrt(subsets).  The subsets
overlap when subsets * subset_size exceeds n, so they are not independent and ``stderr``
understates the uncertainty then; it is exact for disjoint subsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Union

import torch

from .stats import FeatureStats

Tensor = torch.Tensor

__all__ = ["KIDResult", "kernel_inception_distance", "polynomial_mmd2", "polynomial_kernel"]


@dataclass
class KIDResult:
    """Result of :func:`kernel_inception_distance`."""

    mean: float                    # mean over subsets of the unbiased MMD^2
    std: float                     # standard deviation over subsets (n - 1 divisor)
    stderr: float                  # std / sqrt(subsets)
    subsets: int
    subset_size: int
    per_subset: List[float]

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "stderr": self.stderr, "subsets": self.subsets,
                "subset_size": self.subset_size}


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, gamma: Optional[float] = None,
                      coef0: float = 1.0) -> Tensor:
    """k(x, y) = (gamma x . y + coef0)^degree for all pairs of rows; gamma = 1 / D by default."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (g * (x @ y.T) + coef0) ** degree


def polynomial_mmd2(x: Tensor, y: Tensor, degree: int = 3, gamma: Optional[float] = None,
                    coef0: float = 1.0) -> Tensor:
    """The unbiased MMD^2 estimate between the rows of ``x [m, D]`` and ``y [m', D]``."""
    m, mp = x.shape[0], y.shape[0]
    if m < 2 or mp < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples in each set")
    kxx = polynomial_kernel(x, x, degree, gamma, coef0)
    kyy = polynomial_kernel(y, y, degree, gamma, coef0)
    kxy = polynomial_kernel(x, y, degree, gamma, coef0)
    sxx = (kxx.sum() - torch.diagonal(kxx).sum()) / (m * (m - 1))
    syy = (kyy.sum() - torch.diagonal(kyy).sum()) / (mp * (mp - 1))
    return sxx + syy - 2 * kxy.mean()


def _features(a: Union[Tensor, FeatureStats], name: str) -> Tensor:
    if isinstance(a, FeatureStats):
        if a.features is None:
            raise ValueError(f"{name}: these statistics hold no features (KID needs them; save them with "
                             f"features, or pass the feature tensor)")
        f = a.features
    else:
        f = torch.as_tensor(a)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{name} must have shape [N, D] with N >= 2, got {list(f.shape)}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name}: features must be finite")
    return f.detach().to(torch.float64).cpu()


def kernel_inception_distance(a: Union[Tensor, FeatureStats], b: Union[Tensor, FeatureStats],
                              subsets: int = 100, subset_size: int = 1000,
                              generator: Optional[torch.Generator] = None, degree: int = 3,
                              gamma: Optional[float] = None, coef0: float = 1.0) -> KIDResult:
    """KID between two feature sets ``[N, D]`` (tensors, or :class:`FeatureStats` that kept their
    features), in float64.  ``subset_size`` is capped at the smaller set's size (torch-fidelity
    refuses instead; the size used is in the result).  Subsets are drawn from ``generator``
    (a fresh ``manual_seed(0)`` generator when None, so the figure is reproducible)."""
    if isinstance(a, FeatureStats) and isinstance(b, FeatureStats):
        a.check_compatible(b)
    fa, fb = _features(a, "a"), _features(b, "b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature dimensions differ: {fa.shape[1]} vs {fb.shape[1]}")
    if int(subsets) != subsets or subsets < 1:
        raise ValueError(f"subsets must be a positive integer, got {subsets}")
    m = min(int(subset_size), fa.shape[0], fb.shape[0])
    if m < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    vals = []
    for _ in range(subsets):
        ia = torch.randperm(fa.shape[0], generator=g)[:m]
        ib = torch.randperm(fb.shape[0], generator=g)[:m]
        vals.append(float(polynomial_mmd2(fa[ia], fb[ib], degree, gamma, coef0)))
    v = torch.tensor(vals, dtype=torch.float64)
    std = float(v.std()) if subsets > 1 else 0.0
    return KIDResult(float(v.mean()), std, std / math.sqrt(subsets), int(subsets), m, vals)
