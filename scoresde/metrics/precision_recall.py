"""Improved precision and recall (Kynkaanniemi et al., NeurIPS 2019) over features.

Each set's manifold is estimated as the union of balls around its points, the ball of a point
reaching its k-th nearest neighbour within the same set (k = 3 in the paper).  Then

    precision = fraction of generated points inside the real manifold  (are the samples realistic?)
    recall    = fraction of real points inside the generated manifold  (is the data covered?)

A point is inside a manifold when its distance to some point of the set is at most that point's
radius.  Both lie in [0, 1]; identical sets score 1 and 1; a model that drops half of the data's
modes keeps precision near 1 and halves its recall.  Distances are Euclidean in float64, in
blocks of rows so memory stays O(block * N).  The paper uses 50k points of VGG-16 features;
the figures depend on k and n, so report them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from .stats import FeatureStats
from .kid import _features

Tensor = torch.Tensor

__all__ = ["PRResult", "precision_recall", "knn_radii"]


@dataclass
class PRResult:
    precision: float
    recall: float
    k: int
    n_real: int
    n_fake: int

    def as_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "k": self.k, "n_real": self.n_real,
                "n_fake": self.n_fake}


def knn_radii(x: Tensor, k: int, block: int = 1024) -> Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    if x.shape[0] <= k:
        raise ValueError(f"need more than k = {k} points for k-NN radii, got {x.shape[0]}")
    out = []
    for s in range(0, x.shape[0], block):
        d = torch.cdist(x[s:s + block], x)
        # the k+1 smallest include the point itself (distance 0)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _coverage(query: Tensor, ref: Tensor, radii: Tensor, block: int) -> float:
    inside = []
    for s in range(0, query.shape[0], block):
        d = torch.cdist(query[s:s + block], ref)
        inside.append((d <= radii[None, :]).any(1))
    return float(torch.cat(inside).to(torch.float64).mean())


def precision_recall(real: Union[Tensor, FeatureStats], fake: Union[Tensor, FeatureStats], k: int = 3,
                     block: int = 1024) -> PRResult:
    """Improved precision and recall of ``fake`` features against ``real`` ones (see module)."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if isinstance(real, FeatureStats) and isinstance(fake, FeatureStats):
        real.check_compatible(fake)
    r, f = _features(real, "real"), _features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} vs {f.shape[1]}")
    rr, rf = knn_radii(r, k, block), knn_radii(f, k, block)
    return PRResult(_coverage(f, r, rr, block), _coverage(r, f, rf, block), int(k), r.shape[0], f.shape[0])
