"""frechet_distance against closed forms: Gaussians with known moments, scipy's sqrtm, FD(a, a) = 0."""
import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.metrics import frechet_distance, frechet_distance_gaussian, feature_stats


def _random_spd(d, g, scale=1.0):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return scale * (a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64))


def test_fd_of_a_set_with_itself_is_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 16, generator=g)
    assert sd.metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_fd_equals_the_closed_form_for_commuting_covariances():
    # N(m1, s1^2 I) vs N(m2, s2^2 I): |m1 - m2|^2 + D (s1 - s2)^2
    d = 7
    m1, m2 = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.5, dtype=torch.float64)
    i = torch.eye(d, dtype=torch.float64)
    got = frechet_distance_gaussian(m1, 4 * i, m2, 9 * i)
    assert got == pytest.approx(d * 0.25 + d * 1.0, rel=1e-12)


def test_fd_matches_scipy_sqrtm_on_general_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    d = 64
    ca, cb = _random_spd(d, g), _random_spd(d, g, 2.0)
    ma, mb = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    covmean = scipy_linalg.sqrtm(ca.numpy() @ cb.numpy()).real
    ref = float(((ma - mb) ** 2).sum()) + float(np.trace(ca.numpy()) + np.trace(cb.numpy()) - 2 * np.trace(covmean))
    assert frechet_distance_gaussian(ma, ca, mb, cb) == pytest.approx(ref, rel=1e-9)


def test_fd_of_gaussian_samples_converges_to_the_population_value():
    # features drawn from known Gaussians: the sample FD lies within its O(D / N) bias of the truth
    g = torch.Generator().manual_seed(2)
    d, n = 4, 20_000
    ca, cb = _random_spd(d, g), _random_spd(d, g)
    la, lb = torch.linalg.cholesky(ca), torch.linalg.cholesky(cb)
    mb = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) @ la.T
    b = mb + torch.randn(n, d, generator=g, dtype=torch.float64) @ lb.T
    truth = frechet_distance_gaussian(torch.zeros(d, dtype=torch.float64), ca, mb, cb)
    assert frechet_distance(a, b) == pytest.approx(truth, abs=0.05)


def test_fd_is_nonnegative_for_rank_deficient_covariances():
    # fewer samples than dimensions: singular covariances, where scipy's sqrtm of the product warns
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(10, 50, generator=g), torch.randn(10, 50, generator=g)
    d = frechet_distance(a, b)
    assert d > 0 and np.isfinite(d)
    assert frechet_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-8)


def test_fd_accepts_statistics_and_refuses_mixed_feature_spaces():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(100, 3, generator=g), torch.randn(100, 3, generator=g)
    sa = feature_stats(a, extractor="x", resize="none")
    sb = feature_stats(b, extractor="x", resize="none")
    assert frechet_distance(sa, sb) == pytest.approx(frechet_distance(a, b), rel=1e-12)
    with pytest.raises(ValueError, match="resize"):
        frechet_distance(sa, sb.with_record(resize="tf_bilinear"))
    with pytest.raises(ValueError, match="extractor"):
        frechet_distance(sa, sb.with_record(extractor="y"))


def test_fd_rejects_bad_input():
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    bad = torch.randn(10, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(bad, torch.randn(10, 3))
    with pytest.raises(TypeError, match="load_stats"):
        frechet_distance("stats.npz", torch.randn(10, 3))
