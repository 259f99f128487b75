import math

import numpy as np
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


# ---------------------------------------------------------------------------------------------
# labels (issue 12): labelled sets draw exactly the unlabelled stream, plus the labels
# ---------------------------------------------------------------------------------------------
def test_mixture_labels_are_the_component_classes_and_batches_match_unlabelled_draws():
    data = build_dataset("ring8", n_test=500, seed=5)
    mix = data.mixture
    assert data.num_classes == 8 and data.labelled
    # the held-out labels are the classes of the nearest mode (ring8's modes are 16 sigma apart)
    nearest = torch.cdist(data.test.double(), mix.means).argmin(1)
    assert torch.equal(data.test_labels, mix.labels[nearest])
    x_plain = data.batch(400, torch.Generator().manual_seed(2))
    x, y = data.labelled_batch(400, torch.Generator().manual_seed(2))
    assert torch.equal(x, x_plain)                      # the same random numbers as batch()
    assert torch.equal(y, mix.labels[torch.cdist(x.double(), mix.means).argmin(1)])


def test_digits_carry_sklearns_targets_split_like_digits_split():
    from scoresde.data.images import digits_split

    data = build_dataset("digits", n_test=300, seed=0)
    x_tr, y_tr, x_te, y_te = digits_split(n_test=300, seed=0)
    assert data.num_classes == 10 and data.classes == [str(i) for i in range(10)]
    assert torch.equal(data.test, x_te) and torch.equal(data.test_labels, y_te)
    assert torch.equal(data.train, x_tr) and torch.equal(data.train_labels, y_tr)
    x_plain = data.batch(64, torch.Generator().manual_seed(1))
    x, y = data.labelled_batch(64, torch.Generator().manual_seed(1))
    assert torch.equal(x, x_plain)
    # each drawn image is a training row with that row's label
    match = (x.reshape(64, 1, -1) == x_tr.reshape(1, x_tr.shape[0], -1)).all(-1)   # [64, N]
    assert match.any(1).all()
    assert all(int(y[i]) in set(y_tr[match[i]].tolist()) for i in range(64))


def test_dequantized_digits_labelled_batch_matches_batch():
    data = build_dataset("digits", n_test=300, seed=0, dequantize=True)
    x_plain = data.batch(32, torch.Generator().manual_seed(4))
    x, y = data.labelled_batch(32, torch.Generator().manual_seed(4))
    assert torch.equal(x, x_plain) and y.shape == (32,) and y.dtype == torch.int64
    # the level of each dequantized pixel is a training image of that label
    from scoresde.data.images import digits_split

    k = torch.floor((x + 1) * 17 / 2).clamp(0, 16)
    x_tr, y_tr, _, _ = digits_split(n_test=300, seed=0)
    k_tr = torch.round((x_tr + 1) * 16 / 2)
    match = (k.reshape(32, 1, -1) == k_tr.reshape(1, -1, 64)).all(-1)
    assert match.any(1).all()
    assert all(int(y[i]) in set(y_tr[match[i]].tolist()) for i in range(32))


def test_image_folder_labels_are_its_sub_directories(tmp_path):
    from PIL import Image

    for c, value in (("cat", 10), ("dog", 200)):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((4, 4, 3), value + i, np.uint8)).save(tmp_path / c / f"{i}.png")
    data = build_dataset("image_folder", root=str(tmp_path), size=4, channels=3, n_test=2, seed=0)
    assert data.num_classes == 2 and data.classes == ["cat", "dog"]
    x, y = data.labelled_batch(50, torch.Generator().manual_seed(0))
    # cat pixels are < 20/255, dog pixels > 190/255 (in [-1, 1]: below / above 0)
    assert torch.equal(y, (x.mean((1, 2, 3)) > 0).long())
    assert torch.equal(data.test_labels, (data.test.mean((1, 2, 3)) > 0).long())


def test_unlabelled_sets_say_so():
    data = build_dataset("moons", n_test=10)
    assert data.num_classes == 0 and not data.labelled
    with pytest.raises(ValueError, match="no labels"):
        data.labelled_batch(4, torch.Generator())
