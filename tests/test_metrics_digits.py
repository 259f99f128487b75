"""FD-digits: the shipped feature weights, the real-vs-real floor, noise far above it and monotone."""
import shutil

import pytest
import torch

from scoresde.data.images import digits_split, load_digits
from scoresde.metrics import frechet_distance
from scoresde.metrics.digits import (DIGITS_WEIGHTS, DIGITS_WEIGHTS_SHA256, DigitsFeatures, digits_floor,
                                     digits_reference, digits_scores)


@pytest.fixture(scope="module")
def heldout():
    return (digits_split(n_test=300, seed=0)[2] + 1) / 2          # the 300 held-out digits in [0, 1]


def test_shipped_weights_give_the_pinned_features():
    # the same numbers on every machine (float32 round-off only): pinned from the shipped file
    x = (load_digits()[0][:4] + 1) / 2
    f = DigitsFeatures().features(x)
    assert f.shape == (4, 64)
    assert f.sum(1).tolist() == pytest.approx([136.22900, 197.48793, 185.33253, 115.53692], rel=1e-4)
    assert f[0, :3].tolist() == pytest.approx([2.2847843, 3.8227763, 2.4727573], rel=1e-4)


def test_the_classifier_labels_held_out_digits():
    x_te, y_te = digits_split(n_test=300, seed=0)[2:]
    acc = float((DigitsFeatures().logits((x_te + 1) / 2).argmax(1) == y_te).float().mean())
    assert acc > 0.95


def test_weights_of_another_hash_are_refused(tmp_path):
    bad = tmp_path / "digits_features.pt"
    shutil.copy(DIGITS_WEIGHTS, bad)
    with open(bad, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        DigitsFeatures(bad)
    with pytest.raises(FileNotFoundError, match="train_digits_features"):
        DigitsFeatures(tmp_path / "missing.pt")
    assert DigitsFeatures().weights_sha256 == DIGITS_WEIGHTS_SHA256


def test_held_out_digits_score_the_floor_and_uniform_noise_far_above(heldout):
    s = digits_scores(heldout)
    assert s.n == 300 and s.floor is not None
    # the held-out set is the floor's own draw at n = 300
    assert s.fd_digits == pytest.approx(s.floor["fd_digits"], rel=1e-6)
    assert s.fd_digits < 3.0 and s.precision > 0.9 and s.recall > 0.85 and s.is_digits > 8
    noise = digits_scores(torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)), floor=False)
    assert noise.fd_digits > 50 * s.fd_digits
    assert noise.kid_digits > 100 * s.kid_digits_stderr


def test_fd_digits_grows_monotonically_with_added_gaussian_noise(heldout):
    g = torch.Generator().manual_seed(1)
    ext, ref = DigitsFeatures(quantize=True), digits_reference("train")
    fds = [frechet_distance(ext.features((heldout + s * torch.randn(heldout.shape, generator=g)).clamp(0, 1)), ref)
           for s in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(fds, fds[1:])), fds


def test_floor_at_smaller_n_is_higher_and_n_beyond_the_held_out_set_is_refused():
    small = digits_floor(50, repeats=5)
    full = digits_floor(300)
    assert small["fd_digits"] > full["fd_digits"]           # FD's small-sample bias
    with pytest.raises(ValueError, match="n <= 300"):
        digits_floor(301)


def test_digits_extractor_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        DigitsFeatures().features(torch.rand(2, 3, 32, 32))
