"""Image data: [-1, 1] scaling and its inverse, sklearn digits, image folders, torchvision (guarded)."""
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.data.images import (DIGITS_LEVELS, digits_split, from_model_range, load_digits, load_image_folder,
                                  load_torchvision, to_model_range)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_scaling_round_trips_every_level_and_hits_the_endpoints(levels):
    k = torch.arange(levels)
    x = to_model_range(k, levels)
    assert x[0] == -1 and x[-1] == 1
    torch.testing.assert_close(x[1:] - x[:-1], torch.full((levels - 1,), 2 / (levels - 1)))
    assert torch.equal(from_model_range(x, levels).long(), k)
    assert from_model_range(x, levels).dtype == torch.uint8


@pytest.mark.parametrize("levels", [17, 256])
def test_dequantized_values_fall_in_their_level_bins_and_round_trip(levels, gen):
    k = torch.arange(levels).repeat(400)
    x = to_model_range(k, levels, dequantize=True, generator=gen)
    lo = 2 * k / levels - 1
    assert ((x >= lo) & (x < lo + 2 / levels)).all()
    assert torch.equal(from_model_range(x, levels, dequantized=True).long(), k)
    # u ~ U[0, 1): the mean offset inside a bin is 1/2 of its width, to 4 standard errors.
    off = (x - lo) * levels / 2
    assert abs(float(off.mean()) - 0.5) < 4 * (1 / 12) ** 0.5 / len(k) ** 0.5


def test_dequantization_is_reproducible_with_a_generator():
    k = torch.randint(0, 256, (5, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    a = to_model_range(k, dequantize=True, generator=torch.Generator().manual_seed(7))
    b = to_model_range(k, dequantize=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_from_model_range_clamps_out_of_range_samples_and_rejects_nan():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5])
    assert from_model_range(x, 256).tolist() == [0, 0, 128, 255, 255]   # 0 -> 127.5 rounds to even
    assert from_model_range(x, 17).tolist() == [0, 0, 8, 16, 16]
    with pytest.raises(ValueError, match="non-finite"):
        from_model_range(torch.tensor([0.0, float("nan")]))


def test_scaling_rejects_bad_levels_and_out_of_range_input():
    with pytest.raises(ValueError, match="levels"):
        to_model_range(torch.zeros(2), levels=1)
    with pytest.raises(ValueError, match="out of range"):
        to_model_range(torch.tensor([0, 256]), levels=256)


def test_digits_are_sklearns_images_scaled_to_minus_one_one():
    from sklearn.datasets import load_digits as sk

    ref = sk()
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.tolist() == ref.target.tolist()
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # Exactly 17 levels 0..16 -> 2 k / 16 - 1, and back.
    assert np.array_equal(from_model_range(x, DIGITS_LEVELS).numpy()[:, 0], ref.images)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(ref.images).float() / 8 - 1)


def test_digits_dequantized_stay_in_their_bins(gen):
    x, _ = load_digits(dequantize=True, generator=gen)
    k, _ = load_digits()
    kk = from_model_range(k, DIGITS_LEVELS).float()
    assert ((x + 1) * DIGITS_LEVELS / 2 - kk).min() >= 0
    assert ((x + 1) * DIGITS_LEVELS / 2 - kk).max() < 1


def test_digits_split_is_a_fixed_disjoint_partition():
    xtr, ytr, xte, yte = digits_split(n_test=300, seed=0)
    assert xtr.shape == (1497, 1, 8, 8) and xte.shape == (300, 1, 8, 8)
    again = digits_split(n_test=300, seed=0)
    assert torch.equal(again[2], xte) and torch.equal(again[3], yte)
    x, y = load_digits()
    assert sorted(torch.cat([ytr, yte]).tolist()) == sorted(y.tolist())
    # every class appears in the held-out set (about 30 each)
    assert torch.bincount(yte, minlength=10).min() > 10
    assert not torch.equal(digits_split(n_test=300, seed=1)[2], xte)
    with pytest.raises(ValueError, match="n_test"):
        digits_split(n_test=0)


def _pattern(h, w, c, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


def test_image_folder_loads_png_pixels_exactly_with_class_labels(tmp_path):
    arrays = {}
    for cls, seeds in {"cats": [0, 1], "dogs": [2]}.items():
        (tmp_path / cls).mkdir()
        for s in seeds:
            a = _pattern(8, 8, 3, s)
            Image.fromarray(a, "RGB").save(tmp_path / cls / f"im{s}.png")
            arrays[(cls, s)] = a
    (tmp_path / "notes.txt").write_text("not an image")
    x, y, classes = load_image_folder(tmp_path, size=8, channels=3)
    assert classes == ["cats", "dogs"] and y.tolist() == [0, 0, 1]
    assert x.shape == (3, 3, 8, 8)
    for i, key in enumerate([("cats", 0), ("cats", 1), ("dogs", 2)]):
        got = from_model_range(x[i], 256).permute(1, 2, 0).numpy()
        assert np.array_equal(got, arrays[key])


def test_image_folder_converts_to_grayscale_and_resizes(tmp_path):
    a = _pattern(20, 12, 3, 3)
    Image.fromarray(a, "RGB").save(tmp_path / "a.png")
    Image.fromarray(_pattern(16, 16, 1, 4)[:, :, 0], "L").save(tmp_path / "b.png")
    x, y, classes = load_image_folder(tmp_path, size=16, channels=1)
    assert x.shape == (2, 1, 16, 16) and classes == [] and y.tolist() == [0, 0]
    assert x.min() >= -1 and x.max() <= 1
    # The already-16x16 grayscale image is untouched.
    assert np.array_equal(from_model_range(x[1, 0], 256).numpy(), _pattern(16, 16, 1, 4)[:, :, 0])
    # PIL's ITU-R 601 luma of a constant RGB image is that constant: check the conversion path.
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8), "RGB").save(tmp_path / "c.png")
    x, _, _ = load_image_folder(tmp_path, size=4, channels=1)
    assert from_model_range(x[2], 256).unique().tolist() == [200]


def test_image_folder_reads_jpeg_close_to_the_written_pixels(tmp_path):
    a = np.full((16, 16, 3), 90, np.uint8)
    a[:, 8:] = 180
    Image.fromarray(a, "RGB").save(tmp_path / "a.jpg", quality=95)
    x, _, _ = load_image_folder(tmp_path, size=16, channels=3)
    got = from_model_range(x[0], 256).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(got - a).mean() < 3       # JPEG is lossy; the mean error at quality 95 is ~1 level


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing", size=8)
    with pytest.raises(FileNotFoundError, match="no images"):
        load_image_folder(tmp_path, size=8)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_image_folder(tmp_path, size=8)
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path, size=8, channels=2)


def test_torchvision_missing_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        load_torchvision("MNIST", "/nowhere")


class _FakeMNIST:
    """Stands in for a torchvision data set class: same constructor contract, PIL items."""

    calls = []

    def __init__(self, root, train=True, transform=None, download=False):
        _FakeMNIST.calls.append(dict(root=root, train=train, download=download))
        if root == "/nowhere":
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        self.imgs = [_pattern(28, 28, 1, s)[:, :, 0] for s in range(3)]

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        return Image.fromarray(self.imgs[i], "L"), torch.tensor(i)


@pytest.fixture
def fake_torchvision(monkeypatch):
    tv = types.ModuleType("torchvision")
    tvd = types.ModuleType("torchvision.datasets")
    tvd.MNIST = _FakeMNIST
    tv.datasets = tvd
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tvd)
    _FakeMNIST.calls.clear()
    return tvd


def test_torchvision_loader_never_downloads_and_converts_items(fake_torchvision, tmp_path):
    x, y = load_torchvision("MNIST", tmp_path, train=False)
    assert _FakeMNIST.calls == [dict(root=str(tmp_path), train=False, download=False)]
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 1, 2]
    assert np.array_equal(from_model_range(x[1, 0], 256).numpy(), _pattern(28, 28, 1, 1)[:, :, 0])
    x, _ = load_torchvision("MNIST", tmp_path, size=8, channels=3)
    assert x.shape == (3, 3, 8, 8)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_torchvision("MNIST", "/nowhere")
    with pytest.raises(ValueError, match="MNIST"):
        load_torchvision("MNSIT", tmp_path)


def test_real_torchvision_fakedata_loads_when_installed():
    pytest.importorskip("torchvision")
    # FakeData generates its images in memory: the real torchvision path without any files.
    x, y = load_torchvision("FakeData", "/unused", size=8, channels=3,
                            dataset_kwargs=dict(size=5, image_size=(3, 12, 12), num_classes=4))
    assert x.shape == (5, 3, 8, 8) and x.min() >= -1 and x.max() <= 1 and y.max() < 4
