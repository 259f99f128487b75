"""Reference statistics: the record saved and checked, pytorch-fid's .npz in and out, caching."""
import numpy as np
import pytest
import torch

from scoresde.metrics import FeatureStats, feature_stats, frechet_distance, load_stats, save_stats
from scoresde.metrics.features import FeatureExtractor, reference_stats


def _stats(seed=0, n=50, d=4, **record):
    g = torch.Generator().manual_seed(seed)
    rec = dict(extractor="ext", resize="none", weights_sha256="ab" * 32, dataset="toy", split="train")
    rec.update(record)
    return feature_stats(torch.randn(n, d, generator=g), keep_features=True, **rec)


def test_save_and_load_keep_moments_features_and_record(tmp_path):
    s = _stats()
    p = save_stats(s, tmp_path / "s.npz")
    t = load_stats(p)
    assert torch.equal(t.mu, s.mu) and torch.equal(t.sigma, s.sigma) and torch.equal(t.features, s.features)
    assert t.record() == s.record()
    assert t.n == 50 and t.dataset == "toy" and t.split == "train"


def test_files_are_pytorch_fid_npz(tmp_path):
    s = _stats()
    save_stats(s, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as f:              # what pytorch-fid reads
        assert f["mu"].dtype == np.float64 and f["mu"].shape == (4,) and f["sigma"].shape == (4, 4)
        np.testing.assert_array_equal(f["mu"], s.mu.numpy())
    # and a pytorch-fid file (mu, sigma only) loads once its extractor and resize are stated
    np.savez(tmp_path / "fid.npz", mu=s.mu.numpy(), sigma=s.sigma.numpy())
    with pytest.raises(ValueError, match="extractor and resize"):
        load_stats(tmp_path / "fid.npz")
    t = load_stats(tmp_path / "fid.npz", extractor="ext", resize="none")
    assert frechet_distance(t, s) == pytest.approx(0.0, abs=1e-10)


def test_raw_activations_as_score_sde_stats_load(tmp_path):
    f = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    np.savez(tmp_path / "cifar10_stats.npz", pool_3=f.numpy())
    t = load_stats(tmp_path / "cifar10_stats.npz", extractor="ext", resize="none")
    assert t.n == 30 and torch.allclose(t.mu, f.double().mean(0))


def test_a_file_of_another_extractor_or_resize_is_refused(tmp_path):
    save_stats(_stats(), tmp_path / "s.npz")
    with pytest.raises(ValueError, match="resize"):
        load_stats(tmp_path / "s.npz", resize="tf1-bilinear-299")
    with pytest.raises(ValueError, match="extractor"):
        load_stats(tmp_path / "s.npz", extractor="other")
    with pytest.raises(ValueError, match="weights"):
        load_stats(tmp_path / "s.npz", weights_sha256="cd" * 32)
    with pytest.raises(ValueError, match="different feature spaces"):
        frechet_distance(load_stats(tmp_path / "s.npz"), _stats(1, resize="tf1-bilinear-299"))


def test_saving_needs_the_record_and_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="extractor"):
        save_stats(feature_stats(torch.randn(5, 2)), tmp_path / "s.npz")
    with pytest.raises(FileNotFoundError):
        load_stats(tmp_path / "nothing.npz")
    assert not list(tmp_path.iterdir())                 # nothing half-written


class _Counting(FeatureExtractor):
    name, resize, weights_sha256, dim = "counting", "none", "00" * 32, 3

    def __init__(self):
        super().__init__()
        self.calls = 0

    def features(self, images):
        self.calls += 1
        return images.flatten(1)[:, :3]


def test_reference_stats_are_computed_once_and_cached(tmp_path):
    ext, x = _Counting(), torch.rand(20, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    a = reference_stats(ext, x, tmp_path / "ref.npz", dataset="toy", split="test", batch_size=8)
    assert ext.calls == 3
    b = reference_stats(ext, lambda: pytest.fail("the cached file must spare loading the data"),
                        tmp_path / "ref.npz", dataset="toy", split="test")
    assert ext.calls == 3 and torch.equal(a.mu, b.mu) and b.extractor == "counting"
    with pytest.raises(ValueError, match="split"):
        reference_stats(ext, x, tmp_path / "ref.npz", dataset="toy", split="train")
    with pytest.raises(ValueError, match="n = 20"):
        reference_stats(ext, x[:10], tmp_path / "ref.npz", dataset="toy", split="test")
    other = _Counting()
    other.resize = "tf1-bilinear-299"
    with pytest.raises(ValueError, match="resize"):
        reference_stats(other, x, tmp_path / "ref.npz", dataset="toy", split="test")
