"""The FID Inception's plumbing on random weights written to a temporary file (nothing downloaded):
torch-fidelity's features and TF1 resize reproduced, the hash check, the missing-file error, caching."""
from pathlib import Path

import pytest
import torch

from scoresde.metrics import frechet_distance, reference_stats
from scoresde.metrics.features import sha256_file
from scoresde.metrics.inception import (INCEPTION_FILES, InceptionV3, inception_weights_path,
                                        tf1_resize_bilinear)

from _inception import random_inception_state, reference_images

REFERENCE = Path(__file__).parent / "data" / "inception_reference.pt"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(random_inception_state(0), path)
    return path


@pytest.fixture(scope="module")
def net(weights):
    # the random file's own hash prefix stands in for 6726825d (the test-only override)
    return InceptionV3(weights, sha256_prefix=sha256_file(weights)[:8])


def test_tf1_resize_samples_at_j_times_in_over_out():
    # [a, b] -> 4: positions 0, 0.5, 1, 1.5 -> a, (a + b) / 2, b, b (the last clamps: no half-pixel shift)
    x = torch.tensor([[[[1.0, 3.0]]]])
    assert tf1_resize_bilinear(x, (1, 4)).flatten().tolist() == [1.0, 2.0, 3.0, 3.0]
    y = torch.rand(1, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tf1_resize_bilinear(y, (5, 7)), y)
    # not PyTorch's half-pixel bilinear
    assert not torch.allclose(tf1_resize_bilinear(y, (11, 13)),
                              torch.nn.functional.interpolate(y, (11, 13), mode="bilinear", align_corners=False))


def test_tf1_resize_equals_torch_fidelitys():
    ref = torch.load(REFERENCE, weights_only=True)
    torch.testing.assert_close(tf1_resize_bilinear(ref["resize_in"], (9, 5)), ref["resize_out"], rtol=0, atol=1e-6)


def test_features_have_shape_n_by_2048_and_equal_torch_fidelitys(net):
    ref = torch.load(REFERENCE, weights_only=True)
    f = net.features(reference_images())
    assert f.shape == (3, 2048) and f.dtype == torch.float32
    # same weights file, same images: torch-fidelity 0.4.0's extractor (see tests/data/make_inception_reference.py)
    torch.testing.assert_close(f, ref["features"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(net.logits(reference_images()), ref["logits_unbiased"], rtol=1e-4, atol=1e-4)
    # floats in [0, 1] are rounded to 8 bits first: the same features; one channel is repeated
    torch.testing.assert_close(net.features(reference_images()[:1].float() / 255), f[:1], rtol=0, atol=1e-6)
    assert net.features(reference_images()[:1, :1]).shape == (1, 2048)


def test_a_file_of_another_hash_is_refused(weights):
    with pytest.raises(ValueError, match="6726825d"):
        InceptionV3(weights)


def test_a_file_with_other_keys_is_refused(tmp_path):
    state = random_inception_state(0)
    state["extra.weight"] = state.pop("fc.bias")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="missing .'fc.bias'.*unexpected .'extra.weight'"):
        InceptionV3(tmp_path / "w.pth", sha256_prefix=None)


def test_a_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILES[0]):
        InceptionV3(tmp_path / "nowhere.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match=r"hub.checkpoints.*nothing is downloaded"):
        inception_weights_path()
    # and the cache is where it is looked for
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / INCEPTION_FILES[1]).write_bytes(b"")
    assert inception_weights_path() == cache / INCEPTION_FILES[1]


def test_statistics_are_cached_with_the_inception_record(net, tmp_path, monkeypatch):
    imgs = reference_images()[:2]
    a = reference_stats(net, imgs, tmp_path / "ref.npz", dataset="toy", split="train")
    assert a.extractor == "inception-v3-tf-2015-12-05" and a.resize == "tf1-bilinear-299"
    assert a.weights_sha256 == net.weights_sha256 and a.n == 2
    monkeypatch.setattr(net, "features", lambda x: pytest.fail("the cached statistics must be used"))
    b = reference_stats(net, imgs, tmp_path / "ref.npz", dataset="toy", split="train")
    assert torch.equal(a.mu, b.mu) and frechet_distance(a, b) == pytest.approx(0.0, abs=1e-6)
