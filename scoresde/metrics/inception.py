"""The FID Inception: InceptionV3 as TensorFlow's 2015-12-05 graph, in pure torch, with TF1's resize.

FID in papers (Heusel et al. 2017; score_sde through TF-GAN) is computed on the 2048-d pool_3
features of the TF Inception graph of 2015-12-05, after resizing images to 299x299 with TF1's
bilinear resize.  torchvision's ImageNet InceptionV3 is a different network, and other resizes
change the score, so neither may stand in.

Why a network here and not a library.  torch-fidelity (and torchmetrics' FID, which runs
torch-fidelity's extractor) is the well-kept implementation; but ``import torch_fidelity`` imports
torchvision, and PyPI's torchvision does not import beside the CPU torch build this project pins,
so neither library runs here.  This module is a pure-torch network with torch-fidelity's module
names, so it loads the same weights file with a strict key check:

* torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (the default, looked for first),
  converted from the TF graph and used by torch-fidelity and torchmetrics.  We follow its forward
  pass exactly: uint8 in, TF1 bilinear resize (src = dst * in / out, no half-pixel shift; not
  ``F.interpolate``, which shifts by half a pixel), then (x - 128) / 128 as the TF graph does.
  Our features should therefore equal torch-fidelity's, and torchmetrics' FID with
  ``antialias=False`` (its default ``antialias=True`` is not TF-compatible).
* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` holds the same network under the same
  key names (torch-fidelity's extractor loads it too, strictly).  Note that pytorch-fid itself
  resizes with ``F.interpolate`` and scales by 2x - 1, so its own FIDs differ slightly from ours.

Blocks follow the TF graph where it differs from torchvision's: average pools in the Mixed
blocks exclude padding (``count_include_pad=False``); the last block (Mixed_7c) max-pools in
its pool branch; batch norms use eps = 1e-3; the classifier has 1008 outputs.  The Inception
Score uses the logits without the bias (``logits``, torch-fidelity's ``logits_unbiased``).

Weights come from ``path`` or the torch hub cache (``$TORCH_HOME/hub/checkpoints``, usually
``~/.cache/torch/hub/checkpoints``), never downloaded here; their SHA-256 must start with
6726825d (the prefix in the file name, which neither library checks by default).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
import torch.nn.functional as F

from .features import FeatureExtractor, sha256_file

Tensor = torch.Tensor

__all__ = ["InceptionV3", "FIDInceptionNet", "tf1_resize_bilinear", "inception_weights_path",
           "INCEPTION_FILES", "INCEPTION_SHA256_PREFIX", "INCEPTION_URLS"]

INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_URLS = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
)


def tf1_resize_bilinear(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear resize of ``x [N, C, H, W]`` as TF1's ``tf.image.resize_bilinear`` (align_corners
    False, no half-pixel centres): output pixel j samples the input at s = j * in / out, between
    floor(s) and min(floor(s) + 1, in - 1).  The positions are computed in float32 as TF1 does."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor [N, C, H, W], got {x.dtype} {list(x.shape)}")

    def axis(n_in: int, n_out: int):
        s = torch.arange(n_out, dtype=torch.float32, device=x.device) * torch.tensor(n_in / n_out, dtype=torch.float32)
        lo = s.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (s - lo.float()).to(x.dtype)

    ylo, yhi, dy = axis(x.shape[2], size[0])
    xlo, xhi, dx = axis(x.shape[3], size[1])
    top, bot = x[:, :, ylo], x[:, :, yhi]
    top = top[..., xlo] + (top[..., xhi] - top[..., xlo]) * dx
    bot = bot[..., xlo] + (bot[..., xhi] - bot[..., xlo]) * dx
    return top + (bot - top) * dy[:, None]


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU; keys ``conv.*``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    # TF's average pool divides by the number of real (unpadded) inputs
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b (``max_pool=False``: average pool without padding) and Mixed_7c (``max_pool=True``:
    the TF graph max-pools here, unlike the paper and torchvision)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInceptionNet(nn.Module):
    """The bare network (module names = the weights files' keys).  ``forward`` takes the
    normalized 299x299 input and returns the 2048-d pool features."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def inception_weights_path(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The weights file: ``path`` if given, else the first of :data:`INCEPTION_FILES` in the torch
    hub cache.  FileNotFoundError saying where to put the file when there is none."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"no Inception weights at {p}: pass the path of "
                                    f"{INCEPTION_FILES[0]} (or {INCEPTION_FILES[1]}), downloaded from "
                                    f"{INCEPTION_URLS[0]}")
        return p
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in INCEPTION_FILES:
        if (cache / name).is_file():
            return cache / name
    raise FileNotFoundError(
        f"the FID Inception weights are not in the torch hub cache {cache}; nothing is downloaded by "
        f"scoresde. Put {INCEPTION_FILES[0]} (from {INCEPTION_URLS[0]}) or {INCEPTION_FILES[1]} "
        f"(from {INCEPTION_URLS[1]}) there, or pass its path (inception_weights=...)")


def _load_strict(net: nn.Module, state: dict, path: Path) -> None:
    """Every key of the network present with its shape and no other key; ``num_batches_tracked``
    (a training counter, absent from some conversions) may be missing."""
    want = net.state_dict()
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in want]
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(want[k].shape)}" for k in want
             if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(f"{path} is not the FID Inception's state dict: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    net.load_state_dict({k: v for k, v in state.items()}, strict=False)


class InceptionV3(FeatureExtractor):
    """The FID feature extractor (see the module docstring).

    Args:
        path: the weights file; None looks in the torch hub cache.
        sha256_prefix: the file's SHA-256 must start with this (the FID file's 6726825d).  Only
            tests set another (random weights written to a temporary file); None skips the check.
        device: where the network runs (its inputs are moved there by :func:`extract`).
        dtype: the network's float type (float32 as torch-fidelity; float64 for checks).

    ``features(images)`` -> ``[N, 2048]`` pool_3 features; ``logits(images)`` -> ``[N, 1008]``
    without the bias (for the Inception Score).  Images are ``[N, 3, H, W]`` (1 channel is
    repeated to 3) as uint8 in {0..255}, or floats in [0, 1], which are first rounded to 8 bits
    (x -> round(255 x)) as when samples are saved as images; then TF1-resized to 299x299.
    """

    name = "inception-v3-tf-2015-12-05"
    resize = "tf1-bilinear-299"
    dim = 2048
    fd_name, kid_name, is_name = "fid", "kid", "inception_score"
    preprocess = "floats in [0, 1] rounded to 8 bits; 1 channel repeated to 3"
    size = 299

    def __init__(self, path: Optional[Union[str, os.PathLike]] = None,
                 sha256_prefix: Optional[str] = INCEPTION_SHA256_PREFIX, device: Union[str, torch.device] = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        p = inception_weights_path(path)
        digest = sha256_file(p)
        if sha256_prefix is not None and not digest.startswith(sha256_prefix):
            raise ValueError(f"{p} has SHA-256 {digest[:16]}..., not the FID Inception weights (SHA-256 "
                             f"{sha256_prefix}...); download {INCEPTION_FILES[0]} from {INCEPTION_URLS[0]}")
        self.weights_sha256 = digest
        self.weights_path = str(p)
        self.net = FIDInceptionNet()
        _load_strict(self.net, torch.load(p, map_location="cpu", weights_only=True), p)
        self.net.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.dtype = dtype

    def _prep(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [N, 3, H, W] (or [N, 1, H, W]), got {list(images.shape)}")
        if images.dtype == torch.uint8:
            x = images.to(self.dtype)
        else:
            if not torch.isfinite(images).all():
                raise ValueError("images must be finite")
            x = torch.round(images.to(self.dtype).clamp(0, 1) * 255)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = tf1_resize_bilinear(x, (self.size, self.size))
        return (x - 128) / 128

    def features(self, images: Tensor) -> Tensor:
        return self.net(self._prep(images))

    def logits(self, images: Tensor) -> Tensor:
        # without the bias, as the TF Inception Score code (torch-fidelity's logits_unbiased)
        return self.features(images) @ self.net.fc.weight.T

    def features_and_logits(self, images: Tensor):
        f = self.features(images)
        return f, f @ self.net.fc.weight.T
