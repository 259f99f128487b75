"""KID: the unbiased polynomial MMD^2 against its closed form for Gaussian features."""
import pytest
import torch

import scoresde as sd
from scoresde.metrics import kernel_inception_distance, polynomial_mmd2


def _e_dot_powers(ma, sa, mb, sb):
    """E[(X.Y)^k], k = 1, 2, 3, for independent X ~ N(ma, sa), Y ~ N(mb, sb)."""
    a = ma @ mb
    e1 = a
    e2 = torch.trace((sa + torch.outer(ma, ma)) @ (sb + torch.outer(mb, mb)))
    # given Y, X.Y ~ N(ma.Y, Y'sa Y); E[Z^3] = m^3 + 3 m v
    s = ma @ sb @ ma
    e_ma_y_cubed = a ** 3 + 3 * a * s
    e_cross = a * (mb @ sa @ mb + torch.trace(sa @ sb)) + 2 * ma @ sb @ sa @ mb
    e3 = e_ma_y_cubed + 3 * e_cross
    return e1, e2, e3


def _e_kernel(ma, sa, mb, sb):
    d = ma.shape[0]
    e1, e2, e3 = _e_dot_powers(ma, sa, mb, sb)
    return e3 / d ** 3 + 3 * e2 / d ** 2 + 3 * e1 / d + 1


def test_kid_matches_the_closed_form_mmd_of_two_gaussians():
    d = 3
    ma = torch.zeros(d, dtype=torch.float64)
    mb = torch.tensor([0.8, -0.4, 0.3], dtype=torch.float64)
    sa = torch.eye(d, dtype=torch.float64)
    sb = torch.diag(torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64))
    truth = float(_e_kernel(ma, sa, ma, sa) + _e_kernel(mb, sb, mb, sb) - 2 * _e_kernel(ma, sa, mb, sb))
    g = torch.Generator().manual_seed(0)
    n = 40_000
    a = ma + torch.randn(n, d, generator=g, dtype=torch.float64) @ sa.sqrt()
    b = mb + torch.randn(n, d, generator=g, dtype=torch.float64) @ sb.sqrt()
    # disjoint subsets (subsets * subset_size = n): independent estimates, so stderr is honest
    r = kernel_inception_distance(a, b, subsets=40, subset_size=1000, generator=g)
    assert truth > 0.1
    assert abs(r.mean - truth) < 4 * r.stderr + 1e-3
    assert r.subsets == 40 and r.subset_size == 1000


def test_kid_of_one_distribution_is_zero_within_its_error():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g)
    r = sd.metrics.kid(a, b, subsets=50, subset_size=500, generator=g)
    assert abs(r.mean) < 4 * r.stderr
    assert r.std > 0


def test_unbiased_mmd_expectation_does_not_depend_on_m():
    # the U-statistic is unbiased: tiny subsets average to the same value as large ones
    g = torch.Generator().manual_seed(2)
    a = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    b = 0.5 + torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    small = kernel_inception_distance(a, b, subsets=400, subset_size=20, generator=g)
    large = kernel_inception_distance(a, b, subsets=20, subset_size=1000, generator=g)
    assert abs(small.mean - large.mean) < 4 * (small.stderr + large.stderr)


def test_polynomial_mmd2_is_a_hand_computation_on_two_points():
    x = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    y = torch.tensor([[2.0], [1.0]], dtype=torch.float64)
    k = lambda u, v: (u * v + 1) ** 3   # D = 1
    want = 2 * k(1, 0) / 2 + 2 * k(2, 1) / 2 - 2 * (k(1, 2) + k(1, 1) + k(0, 2) + k(0, 1)) / 4
    assert float(polynomial_mmd2(x, y)) == pytest.approx(want)


def test_kid_rejects_bad_input():
    with pytest.raises(ValueError, match="dimensions"):
        kernel_inception_distance(torch.randn(10, 3), torch.randn(10, 2))
    with pytest.raises(ValueError, match="subsets"):
        kernel_inception_distance(torch.randn(10, 3), torch.randn(10, 3), subsets=0)
    stats = sd.metrics.feature_stats(torch.randn(10, 3))
    with pytest.raises(ValueError, match="no features"):
        kernel_inception_distance(stats, torch.randn(10, 3))
