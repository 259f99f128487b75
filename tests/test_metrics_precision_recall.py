"""Improved precision / recall: identical sets 1 and 1, far sets 0 and 0, dropped modes halve recall."""
import pytest
import torch

from scoresde.metrics import precision_recall, knn_radii


def _modes(n_per, centers, g):
    return torch.cat([c + 0.1 * torch.randn(n_per, centers.shape[1], generator=g) for c in centers])


def test_identical_sets_have_full_precision_and_recall():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    r = precision_recall(x, x.clone())
    assert r.precision == 1.0 and r.recall == 1.0 and r.k == 3


def test_far_apart_sets_have_zero_precision_and_recall():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5, generator=g)
    r = precision_recall(x, x + 100.0)
    assert r.precision == 0.0 and r.recall == 0.0


def test_dropping_half_the_modes_keeps_precision_and_halves_recall():
    # judged against a fresh sample of the full distribution (the k-NN balls miss some of the
    # tails, so even a perfect model scores a little below 1): same precision, half the recall
    g = torch.Generator().manual_seed(2)
    angle = torch.arange(8) * (2 * torch.pi / 8)
    centers = 10 * torch.stack([angle.cos(), angle.sin()], 1)
    real = _modes(250, centers, g)
    perfect = precision_recall(real, _modes(250, centers, g))
    half = precision_recall(real, _modes(500, centers[:4], g))        # same n, half the modes
    assert perfect.precision > 0.9 and perfect.recall > 0.9
    assert half.precision == pytest.approx(perfect.precision, abs=0.03)
    assert half.recall == pytest.approx(0.5 * perfect.recall, abs=0.03)


def test_knn_radius_is_the_kth_neighbour_distance():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="more than k"):
        knn_radii(x, 4)
