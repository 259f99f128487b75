import math

import pytest
import torch

import scoresde as sd
from scoresde.data import DATASETS, DataSet, Scaler, build_dataset, from_unit_range, to_unit_range


def test_registry_has_the_toy_sets_and_rejects_unknown_names():
    for name in ("ring8", "moons", "swissroll", "checkerboard"):
        assert name in DATASETS
    with pytest.raises(ValueError, match="ring8"):
        build_dataset("mnist-ish")


def test_ring8_batches_are_exact_mixture_samples():
    data = build_dataset("ring8")
    mix = data.mixture
    n = 10000
    x = data.batch(n, torch.Generator().manual_seed(0))
    assert x.shape == (n, 2) and x.dtype == torch.float32
    # mode-by-mode W2 of exact samples sits at the estimation floor (about 0.02 at this n)
    assert sd.metrics.mode_w2(x, mix).w2 < 3 * sd.metrics.exact_floor(mix, n, repeats=2)
    # the mean log-density is minus the entropy, within 4 standard errors
    lp = mix.log_prob(x.double())
    h, _ = mix.entropy(200_000, generator=torch.Generator().manual_seed(1))
    assert abs(float(-lp.mean()) - h) < 4 * float(lp.std()) / math.sqrt(n) + 1e-3


def test_held_out_set_is_fixed_by_its_seed_and_batches_by_the_generator():
    a, b = build_dataset("moons", seed=3), build_dataset("moons", seed=3)
    assert torch.equal(a.test, b.test)
    assert not torch.equal(a.test, build_dataset("moons", seed=4).test)
    x1 = a.batch(100, torch.Generator().manual_seed(7))
    x2 = b.batch(100, torch.Generator().manual_seed(7))
    assert torch.equal(x1, x2)


def test_checkerboard_points_lie_on_the_black_squares():
    x = build_dataset("checkerboard").batch(5000, torch.Generator().manual_seed(0))
    assert x.abs().max() <= 4.0
    cell = torch.floor(x / 2.0).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all() or ((cell[:, 0] + cell[:, 1]) % 2 == 1).all()
    counts = torch.bincount(((cell[:, 0] + 2) * 4 + cell[:, 1] + 2), minlength=16)
    assert (counts > 0).sum() == 8                       # 8 of the 16 squares, all used


def test_moons_without_noise_lie_on_two_unit_half_circles():
    from scoresde.data.toy import moons
    x = moons(2000, torch.Generator().manual_seed(0), noise=0.0) / 2.0 + torch.tensor([0.5, 0.25])
    d_upper = (x - torch.tensor([0.0, 0.0])).norm(dim=1)
    d_lower = (x - torch.tensor([1.0, 0.5])).norm(dim=1)
    assert torch.minimum((d_upper - 1).abs(), (d_lower - 1).abs()).max() < 1e-5


def test_swissroll_is_finite_and_spread():
    x = build_dataset("swissroll").batch(2000, torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and 0.5 < float(x.std()) < 3.0


def test_unit_range_round_trip_and_endpoints():
    x = torch.linspace(0, 255, 11)
    y = to_unit_range(x, 0.0, 255.0)
    assert y[0] == -1 and y[-1] == 1
    assert torch.allclose(from_unit_range(y, 0.0, 255.0), x)
    s = Scaler.unit(0.0, 255.0)
    assert torch.allclose(s.to_model(x), y) and torch.allclose(s.to_data(y), x, atol=1e-4)
    assert math.isclose(s.log_det((3, 2)), 6 * math.log(2 / 255.0))


def test_finite_data_set_batches_rows_of_its_train_tensor():
    train = torch.arange(20.0).reshape(10, 2)
    data = DataSet("t", (2,), test=train[:2], train=train)
    b = data.batch(50, torch.Generator().manual_seed(0))
    assert b.shape == (50, 2)
    assert all(any(torch.equal(r, t) for t in train) for r in b)
    with pytest.raises(ValueError, match="train tensor or a sampler"):
        DataSet("x", (2,), test=train)
    with pytest.raises(ValueError, match="expected"):
        DataSet("x", (3,), test=train, train=train)
