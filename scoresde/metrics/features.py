"""Feature extractors and the statistics computed with them.

An extractor is a module with the record a figure needs: ``name``, ``weights_sha256``, ``resize``
(how images are brought to its input size) and ``dim``; ``features(images)`` gives ``[N, dim]``
and ``logits(images)`` the class logits (for the Inception Score).  Images are ``[N, C, H, W]``,
floats in [0, 1] (the sample app's data space for images) or uint8 in {0..255}.  Two ship with
scoresde: :class:`~scoresde.metrics.digits.DigitsFeatures` (8x8 digits, weights in the package)
and :class:`~scoresde.metrics.inception.InceptionV3` (the FID network, weights supplied by the user).

:func:`compute_stats` runs an extractor over images in batches into :class:`FeatureStats` carrying
its record; :func:`reference_stats` does so once and caches the result in a file, reloading it
(and checking its record against the extractor, the data set and the split) on later calls.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import nn

from .stats import FeatureStats, feature_stats, load_stats, save_stats

Tensor = torch.Tensor

__all__ = ["FeatureExtractor", "sha256_file", "extract", "compute_stats", "reference_stats"]


def sha256_file(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class FeatureExtractor(nn.Module):
    """Base class: subclasses set ``name``, ``weights_sha256``, ``resize``, ``dim`` and implement
    ``features`` (and ``logits`` where the network classifies)."""

    name: str = "extractor"
    weights_sha256: Optional[str] = None
    resize: str = "none"
    dim: int = 0
    # the names its figures are reported under (FID only for the FID Inception)
    preprocess: str = "none"           # what is done to images before the network (recorded, not checked)
    fd_name: str = "fd"
    kid_name: str = "kid"
    is_name: str = "is"

    def features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def logits(self, images: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} gives no logits")

    def features_and_logits(self, images: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Both from one pass where the network allows it (subclasses override); logits None
        when the extractor does not classify."""
        try:
            return self.features(images), self.logits(images)
        except NotImplementedError:
            return self.features(images), None

    def record(self) -> dict:
        return {"extractor": self.name, "weights_sha256": self.weights_sha256, "resize": self.resize}


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def extract(extractor: FeatureExtractor, images: Tensor, batch_size: int = 256, what: str = "features",
            progress: bool = False):
    """Run ``extractor.features`` (or ``.logits`` with ``what="logits"``; both from one pass with
    ``what="both"``, a pair whose logits may be None) over ``images`` in batches on the
    extractor's device; returns float32 on the CPU."""
    if what not in ("features", "logits", "both"):
        raise ValueError(f"what must be 'features', 'logits' or 'both', got {what!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a tensor [N, C, H, W], got {getattr(images, 'shape', type(images))}")
    dev = _device_of(extractor)
    starts = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc=f"{extractor.name} {what}")
    if what == "both":
        pairs = [extractor.features_and_logits(images[s:s + batch_size].to(dev)) for s in starts]
        f = torch.cat([p[0].float().cpu() for p in pairs])
        has_logits = bool(pairs) and pairs[0][1] is not None
        return f, (torch.cat([p[1].float().cpu() for p in pairs]) if has_logits else None)
    fn = getattr(extractor, what)
    out = [fn(images[s:s + batch_size].to(dev)).float().cpu() for s in starts]
    return torch.cat(out) if out else torch.empty(0, extractor.dim)


def compute_stats(extractor: FeatureExtractor, images: Tensor, batch_size: int = 256,
                  dataset: Optional[str] = None, split: Optional[str] = None, keep_features: bool = True,
                  extra: Optional[dict] = None, progress: bool = False) -> FeatureStats:
    """:class:`FeatureStats` of ``extractor``'s features of ``images``, with its record."""
    f = extract(extractor, images, batch_size, progress=progress)
    return feature_stats(f, keep_features=keep_features, dataset=dataset, split=split,
                         extra=dict(extra or {}), **extractor.record())


def reference_stats(extractor: FeatureExtractor, images: Union[Tensor, Callable[[], Tensor]],
                    path: Optional[Union[str, os.PathLike]] = None, dataset: Optional[str] = None,
                    split: Optional[str] = None, batch_size: int = 256, keep_features: bool = True,
                    progress: bool = False) -> FeatureStats:
    """Statistics of a reference set, computed once and cached at ``path`` (an ``.npz``).

    ``images`` may be a callable returning them, so a cached file spares loading the data too.
    A cached file is used only if its record matches the extractor (name, weights hash, resize),
    ``dataset`` and ``split``: otherwise ValueError (delete the file or choose another path), never
    statistics of another feature space.  When ``images`` is a tensor its n must match too.
    """
    if path is not None and Path(path).is_file():
        stats = load_stats(path, dataset=dataset, split=split, **extractor.record())
        if isinstance(images, torch.Tensor) and stats.n != images.shape[0]:
            raise ValueError(f"{path} holds statistics of n = {stats.n} images, not the {images.shape[0]} given")
        return stats
    x = images() if callable(images) else images
    stats = compute_stats(extractor, x, batch_size, dataset, split, keep_features, progress=progress)
    if path is not None:
        save_stats(stats, path)
    return stats
