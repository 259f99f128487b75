"""Distances for low-dimensional samples: to a Gaussian mixture mode by mode, and sliced W2 between sets.

Mode-by-mode W2.  Each sample is assigned to the component with the largest posterior
probability under p_0.  For component k with the n_k assigned samples, the empirical mean m_k
and covariance S_k give the Gaussian 2-Wasserstein distance to N(mu_k, C_k),

    W2_k^2 = |m_k - mu_k|^2 + tr(S_k + C_k - 2 (C_k^1/2 S_k C_k^1/2)^1/2),

and the mixture distance is  W2 = sqrt(sum_k w_k W2_k^2)  (the true weights w_k).  The mode
weights are judged apart: ``weight_error`` = total variation between n_k / n and w_k.  Even exact
samples do not score zero: the estimation error of m_k and S_k leaves a floor that shrinks like
1/sqrt(N) (about 0.013 for ring8 at N = 10,000), so compare a sampler's W2 with ``exact_floor``
at the same N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..mixture import GaussianMixture

Tensor = torch.Tensor

__all__ = ["ModeStats", "mode_w2", "gaussian_w2", "sliced_w2", "exact_floor", "sqrtm_psd"]


def sqrtm_psd(a: Tensor) -> Tensor:
    """Symmetric square root of a (batch of) symmetric positive semi-definite matrices."""
    lam, U = torch.linalg.eigh(0.5 * (a + a.transpose(-1, -2)))
    return (U * lam.clamp_min(0).sqrt()[..., None, :]) @ U.transpose(-1, -2)


def gaussian_w2(m1: Tensor, c1: Tensor, m2: Tensor, c2: Tensor) -> Tensor:
    """2-Wasserstein distance between N(m1, c1) and N(m2, c2) (batched over leading dims)."""
    r2 = sqrtm_psd(c2)
    cross = sqrtm_psd(r2 @ c1 @ r2)
    tr = (torch.diagonal(c1, dim1=-2, dim2=-1).sum(-1) + torch.diagonal(c2, dim1=-2, dim2=-1).sum(-1)
          - 2 * torch.diagonal(cross, dim1=-2, dim2=-1).sum(-1))
    return torch.sqrt(((m1 - m2) ** 2).sum(-1) + tr.clamp_min(0))


@dataclass
class ModeStats:
    """Result of :func:`mode_w2`."""

    w2: float                      # sqrt(sum_k w_k W2_k^2)
    weight_error: float            # total variation between empirical and true mode weights
    per_mode: List[float] = field(default_factory=list)   # W2_k
    counts: List[int] = field(default_factory=list)       # n_k
    n: int = 0
    nonfinite: int = 0             # samples that were NaN or inf (counted as a failure)

    def as_dict(self) -> dict:
        return {"w2": self.w2, "weight_error": self.weight_error, "per_mode": self.per_mode,
                "counts": self.counts, "n": self.n, "nonfinite": self.nonfinite}


def mode_w2(x: Tensor, mix: GaussianMixture) -> ModeStats:
    """Mode-by-mode W2 distance of samples ``x [N, ...]`` to the mixture (see module docstring).

    A mode with fewer than D + 1 samples has no usable covariance: its W2_k is infinite.  Any
    non-finite sample makes the whole distance infinite.
    """
    xf = x.detach().reshape(x.shape[0], -1).to(torch.float64).cpu()
    if xf.shape[1] != mix.dim:
        raise ValueError(f"samples have {xf.shape[1]} values each, the mixture has D={mix.dim}")
    n = xf.shape[0]
    finite = torch.isfinite(xf).all(1)
    nonfinite = int((~finite).sum())
    K, D = mix.n_components, mix.dim
    if nonfinite:
        return ModeStats(math.inf, 1.0, [math.inf] * K, [0] * K, n, nonfinite)
    labels = mix.responsibilities(xf).argmax(1)
    per_mode, counts = [], []
    for k in range(K):
        xk = xf[labels == k]
        counts.append(int(xk.shape[0]))
        if xk.shape[0] <= D:
            per_mode.append(math.inf)
            continue
        m = xk.mean(0)
        c = torch.cov(xk.T).reshape(D, D)
        per_mode.append(float(gaussian_w2(m, c, mix.means[k], mix.covs[k])))
    w = mix.weights
    pm = torch.tensor(per_mode, dtype=torch.float64)
    w2 = float(torch.sqrt((w * pm ** 2).sum()))
    frac = torch.tensor(counts, dtype=torch.float64) / max(n, 1)
    weight_error = float(0.5 * (frac - w).abs().sum())
    return ModeStats(w2, weight_error, per_mode, counts, n, 0)


def exact_floor(mix: GaussianMixture, n: int, repeats: int = 5, seed: int = 0) -> float:
    """Mean :func:`mode_w2` of ``n`` fresh exact samples: the best any sampler can score at that n."""
    g = torch.Generator().manual_seed(seed)
    vals = [mode_w2(mix.sample(n, generator=g, dtype=torch.float64), mix).w2 for _ in range(repeats)]
    return float(sum(vals) / len(vals))


def sliced_w2(x: Tensor, y: Tensor, n_proj: int = 256, generator: Optional[torch.Generator] = None) -> float:
    """Sliced 2-Wasserstein distance between two sample sets of the same size and data shape.

    SW2^2 = E_u W2^2(u.x, u.y) over random unit directions u, each 1-D W2 from sorted projections.
    """
    xf = x.detach().reshape(x.shape[0], -1).to(torch.float64).cpu()
    yf = y.detach().reshape(y.shape[0], -1).to(torch.float64).cpu()
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"sample sets differ in dimension: {xf.shape[1]} vs {yf.shape[1]}")
    if xf.shape[0] != yf.shape[0]:
        raise ValueError(f"sample sets differ in size: {xf.shape[0]} vs {yf.shape[0]}")
    u = torch.randn(xf.shape[1], n_proj, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    px, _ = torch.sort(xf @ u, 0)
    py, _ = torch.sort(yf @ u, 0)
    return float(((px - py) ** 2).mean().sqrt())
