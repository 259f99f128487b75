"""The Frechet distance between two feature sets (FID when the features are the FID Inception's).

Each set of features ``[N, D]`` is summarised by its mean mu and covariance Sigma (unbiased, the
1/(N-1) of numpy's ``cov``, as pytorch-fid and torch-fidelity), and the distance is the squared
2-Wasserstein distance between the two Gaussians (Frechet 1957; Heusel et al. 2017):

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr( (S_a^1/2 S_b S_a^1/2)^1/2 ).

The last trace equals tr((S_a S_b)^1/2), the form pytorch-fid evaluates with scipy's ``sqrtm``
of the non-symmetric product (whose round-off gives complex parts it then discards).  Here the
product is kept symmetric: R = S_a^1/2 from an eigendecomposition of S_a (negative round-off
eigenvalues clipped to 0), then tr((R S_b R)^1/2) = sum_i sqrt(lambda_i(R S_b R)), the
eigenvalues of a symmetric positive semi-definite matrix, again clipped at 0.  Everything is in
float64 (features are cast up), so FD(a, a) = 0 to round-off and FD >= 0.

Small samples bias FD upward (roughly by tr terms of order D / N); compare figures at the same n,
beside the real-vs-real floor at that n (train against test of the same data scores about 30 on
Inception features at n = 2,000).
"""

from __future__ import annotations

from typing import Union

import torch

from .mixture import sqrtm_psd
from .stats import FeatureStats, as_stats

Tensor = torch.Tensor

__all__ = ["frechet_distance", "frechet_distance_gaussian", "trace_sqrt_product"]


def trace_sqrt_product(sa: Tensor, sb: Tensor) -> Tensor:
    """tr((S_a S_b)^1/2) = tr((S_a^1/2 S_b S_a^1/2)^1/2) for PSD S_a, S_b, through symmetric
    eigendecompositions only (see the module docstring)."""
    r = sqrtm_psd(sa)
    m = r @ sb @ r
    lam = torch.linalg.eigvalsh(0.5 * (m + m.transpose(-1, -2)))
    return lam.clamp_min(0).sqrt().sum(-1)


def _check_moments(mu: Tensor, sigma: Tensor, name: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: mu must be [D] and sigma [D, D], got {list(mu.shape)} and {list(sigma.shape)}")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise ValueError(f"{name}: the statistics are not finite (non-finite features?)")


def frechet_distance_gaussian(mu_a: Tensor, sigma_a: Tensor, mu_b: Tensor, sigma_b: Tensor) -> float:
    """FD between N(mu_a, sigma_a) and N(mu_b, sigma_b), computed in float64."""
    mu_a, sigma_a, mu_b, sigma_b = (torch.as_tensor(t).to(torch.float64).cpu() for t in (mu_a, sigma_a, mu_b, sigma_b))
    _check_moments(mu_a, sigma_a, "a")
    _check_moments(mu_b, sigma_b, "b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    d = ((mu_a - mu_b) ** 2).sum() + torch.trace(sigma_a) + torch.trace(sigma_b) \
        - 2 * trace_sqrt_product(sigma_a, sigma_b)
    return float(d.clamp_min(0))


def frechet_distance(a: Union[Tensor, FeatureStats], b: Union[Tensor, FeatureStats]) -> float:
    """Frechet distance between two feature sets, each a tensor ``[N, D]`` (N >= 2) or a
    :class:`FeatureStats` (saved statistics, e.g. :func:`load_stats` of a pytorch-fid ``.npz``).

    Two statistics must come from the same extractor, weights and resize
    (:meth:`FeatureStats.check_compatible`); a mismatch raises ValueError rather than mixing
    feature spaces silently.  A plain tensor carries no such record: that check is the caller's.
    """
    sa, sb = as_stats(a, "a"), as_stats(b, "b")
    sa.check_compatible(sb)
    return frechet_distance_gaussian(sa.mu, sa.sigma, sb.mu, sb.sigma)
