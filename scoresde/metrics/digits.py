"""FD-digits and KID-digits: distances in the feature space of a small classifier of the 8x8 digits.

The FID Inception has nothing to say about 8x8 images, so the digits get their own feature space:
a small convolutional classifier of scikit-learn's digits, trained once on the training split of
:func:`scoresde.data.digits_split` (n_test = 300, seed = 0: 1,497 training images, 300 held out) by
``benchmarks/train_digits_features.py``, its weights shipped in the package
(``weights/digits_features.pt``) and checked against their SHA-256 at load, so every machine
computes the same features.  Features: the 64 channels of the last convolution after ReLU, averaged
over the 4x4 positions; logits: a linear layer on them (held-out accuracy in the script's record).

FD-digits and KID-digits are :func:`~scoresde.metrics.frechet_distance` and
:func:`~scoresde.metrics.kernel_inception_distance` on these features against the 1,497 training
digits.  They are not comparable with Inception FID, and are reported under their own names, each
beside its real-vs-real floor at the same n: the distance of n held-out real digits (drawn
without replacement from the 300, so n <= 300) from the same training statistics, which is what a
perfect sampler would score at that n (FD is biased upward at small n).

Input: images ``[N, 1, 8, 8]`` in [0, 1] (data space: pixel k of 16 is k / 16).  With ``quantize``
(the default in :func:`digits_scores`) samples are first rounded to the 17 levels the real digits
take, as FID tools round samples to 8 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn
import torch.nn.functional as F

from .features import FeatureExtractor, compute_stats, extract, sha256_file
from .frechet import frechet_distance
from .kid import kernel_inception_distance
from .precision_recall import precision_recall
from .scores import inception_score
from .stats import FeatureStats

Tensor = torch.Tensor

__all__ = ["DigitsFeatures", "DIGITS_WEIGHTS", "DIGITS_WEIGHTS_SHA256", "DIGITS_SPLIT", "digits_reference",
           "digits_scores", "digits_floor", "DigitsScores"]

DIGITS_WEIGHTS = Path(__file__).with_name("weights") / "digits_features.pt"
DIGITS_WEIGHTS_SHA256 = "b96569bfdeb3736513ebd649ebfc56ab9ede21f2047b89d344041844f60ccdce"
DIGITS_SPLIT = {"n_test": 300, "seed": 0}       # the split the features were trained on and the floor uses
_LEVELS = 16                                   # the digits' pixels count 0..16


class DigitsNet(nn.Module):
    """conv3x3(1->32) ReLU, conv3x3(32->32) ReLU, 2x2 average pool, conv3x3(32->64) ReLU, mean over
    the 4x4 positions -> 64 features; linear -> 10 logits.  Input in [0, 1], centred as 2x - 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(2 * x - 1))
        h = F.avg_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.conv3(h)).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def _quantize(x: Tensor) -> Tensor:
    return torch.round(x.clamp(0, 1) * _LEVELS) / _LEVELS


class DigitsFeatures(FeatureExtractor):
    """The digits feature extractor (see the module docstring).  ``path`` defaults to the shipped
    weights; their SHA-256 must equal ``sha256`` (the shipped file's), else ValueError."""

    name = "digits-cnn-v1"
    resize = "none"
    dim = 64
    fd_name, kid_name, is_name = "fd_digits", "kid_digits", "is_digits"

    def __init__(self, path: Optional[Union[str, Path]] = None, sha256: Optional[str] = DIGITS_WEIGHTS_SHA256,
                 quantize: bool = False) -> None:
        super().__init__()
        path = Path(path) if path is not None else DIGITS_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"digits feature weights not found at {path} (they ship with scoresde; "
                                    f"rebuild them with benchmarks/train_digits_features.py)")
        digest = sha256_file(path)
        if sha256 is not None and digest != sha256:
            raise ValueError(f"{path} has SHA-256 {digest}, expected {sha256}: not the digits feature weights "
                             f"every figure is computed with")
        self.weights_sha256 = digest
        self.quantize = bool(quantize)
        self.preprocess = f"rounded to the {_LEVELS + 1} levels" if quantize else "clamped to [0, 1]"
        self.net = DigitsNet()
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.net.eval().requires_grad_(False)

    def _prep(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
            raise ValueError(f"images must be [N, 1, 8, 8] digits, got {list(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if not torch.isfinite(x).all():
            raise ValueError("images must be finite")
        return _quantize(x) if self.quantize else x.clamp(0, 1)

    def features(self, images: Tensor) -> Tensor:
        return self.net.features(self._prep(images))

    def logits(self, images: Tensor) -> Tensor:
        return self.net(self._prep(images))

    def features_and_logits(self, images: Tensor):
        f = self.net.features(self._prep(images))
        return f, self.net.fc(f)


_REF: Dict[str, FeatureStats] = {}


def _digits_unit(split: str) -> Tensor:
    from ..data.images import digits_split
    x_tr, _, x_te, _ = digits_split(**DIGITS_SPLIT)
    return ((x_tr if split == "train" else x_te) + 1) / 2


def digits_reference(split: str = "train", extractor: Optional[DigitsFeatures] = None) -> FeatureStats:
    """Statistics (with features) of the real digits of ``split`` ("train": 1,497, "test": 300),
    cached in memory."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if split not in _REF or extractor is not None:
        ext = extractor or DigitsFeatures()
        st = compute_stats(ext, _digits_unit(split), dataset="digits", split=f"{split} (n_test=300, seed=0)")
        if extractor is not None:
            return st
        _REF[split] = st
    return _REF[split]


@dataclass
class DigitsScores:
    """FD-digits, KID-digits (mean, stderr), IS-digits, precision/recall of n images, and the
    real-vs-real floor of each at the same n (``floor_*``; None where n > 300)."""

    n: int
    fd_digits: float
    kid_digits: float
    kid_digits_stderr: float
    is_digits: float
    precision: float
    recall: float
    floor: Optional[Dict[str, float]] = None
    protocol: Dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"n": self.n, "fd_digits": self.fd_digits, "kid_digits": self.kid_digits,
                "kid_digits_stderr": self.kid_digits_stderr, "is_digits": self.is_digits,
                "precision": self.precision, "recall": self.recall, "floor": self.floor, "protocol": self.protocol}


def _scores(ext: DigitsFeatures, images: Tensor, ref: FeatureStats, kid_subsets: int, seed: int) -> Dict[str, float]:
    f = extract(ext, images)
    g = torch.Generator().manual_seed(seed)
    kid = kernel_inception_distance(f, ref, subsets=kid_subsets, subset_size=min(1000, f.shape[0]), generator=g)
    logits = extract(ext, images, what="logits")
    pr = precision_recall(ref, f)
    return {"fd_digits": frechet_distance(f, ref), "kid_digits": kid.mean, "kid_digits_stderr": kid.stderr,
            "is_digits": inception_score(logits, splits=1).mean, "precision": pr.precision, "recall": pr.recall}


def digits_floor(n: int, repeats: int = 10, seed: int = 0, kid_subsets: int = 20) -> Dict[str, float]:
    """The real-vs-real floor at n: each score of n held-out digits (drawn without replacement
    from the 300, ``repeats`` times from ``seed``; once when n = 300) against the training
    statistics, averaged over the draws (``*_std``: their spread)."""
    if not 2 <= n <= DIGITS_SPLIT["n_test"]:
        raise ValueError(f"the floor needs 2 <= n <= {DIGITS_SPLIT['n_test']} (the held-out digits), got n = {n}")
    ext = DigitsFeatures(quantize=True)
    ref = digits_reference("train")
    test = _digits_unit("test")
    g = torch.Generator().manual_seed(seed)
    reps = 1 if n == test.shape[0] else repeats
    rows = [_scores(ext, test[torch.randperm(test.shape[0], generator=g)[:n]], ref, kid_subsets, seed + r)
            for r in range(reps)]
    out = {k: sum(r[k] for r in rows) / reps for k in rows[0]}
    for k in ("fd_digits", "kid_digits"):
        out[f"{k}_std"] = math.sqrt(sum((r[k] - out[k]) ** 2 for r in rows) / max(reps - 1, 1))
    out["repeats"] = reps
    return out


def digits_scores(images: Tensor, floor: bool = True, quantize: bool = True, kid_subsets: int = 20,
                  seed: int = 0, floor_repeats: int = 10) -> DigitsScores:
    """Score digit samples ``[n, 1, 8, 8]`` (in [0, 1]) against the 1,497 training digits:
    FD-digits, KID-digits, IS-digits (one split), precision/recall (k = 3), each with its floor at
    the same n when ``floor`` and n <= 300 (see :func:`digits_floor`)."""
    ext = DigitsFeatures(quantize=quantize)
    n = int(images.shape[0])
    s = _scores(ext, images, digits_reference("train"), kid_subsets, seed)
    fl = digits_floor(n, floor_repeats, seed, kid_subsets) if floor and n <= DIGITS_SPLIT["n_test"] else None
    protocol = {"extractor": ext.name, "weights_sha256": ext.weights_sha256, "resize": ext.resize,
                "quantize": f"{_LEVELS + 1} levels" if quantize else "none",
                "reference": "digits train split (n=1497; n_test=300, seed=0)",
                "floor": (f"{n} held-out digits vs the train statistics, mean of {fl['repeats']} draws"
                          if fl else "not computed (n > 300 held-out digits)" if floor else "not computed"),
                "kid": f"{kid_subsets} subsets of {min(1000, n)}, seed {seed}", "precision_recall_k": 3}
    return DigitsScores(n, **s, floor=fl, protocol=protocol)
