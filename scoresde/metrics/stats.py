"""Feature statistics: the mean and covariance of a feature set, with the record of how they were made.

A :class:`FeatureStats` holds mu ``[D]`` and Sigma ``[D, D]`` (float64) of n feature vectors and,
beside them, the protocol every reported figure needs: the extractor's name, the SHA-256 of its
weights, the resize mode, the data set and split, n.  Optionally it keeps the features themselves
(KID and precision/recall need them; the Frechet distance needs the moments only).

Files are NumPy ``.npz`` archives readable by pytorch-fid and torch-fidelity, which read the keys
``mu`` and ``sigma`` and ignore the rest; the record is a JSON string under ``scoresde_meta`` and
the optional features under ``features``.  A file without a record (one written by pytorch-fid, or
score_sde's ``pool_3`` activations) loads only when the caller states its extractor and resize,
so that statistics of one feature space are never compared with features of another by accident.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..atomic import atomic_write_bytes

Tensor = torch.Tensor

__all__ = ["FeatureStats", "feature_stats", "as_stats", "save_stats", "load_stats"]

_META_KEY = "scoresde_meta"
_CHECKED = ("extractor", "weights_sha256", "resize")     # must agree between two statistics


@dataclass
class FeatureStats:
    """Mean and covariance of ``n`` features and the record of their making (see module docstring).

    ``None`` in a record field means "not recorded" (statistics of a bare tensor); files on disk
    always carry the extractor and the resize.
    """

    mu: Tensor
    sigma: Tensor
    n: int
    extractor: Optional[str] = None
    weights_sha256: Optional[str] = None
    resize: Optional[str] = None
    dataset: Optional[str] = None
    split: Optional[str] = None
    features: Optional[Tensor] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def record(self) -> Dict[str, Any]:
        """The protocol fields (everything but the arrays), JSON-ready."""
        return {"n": self.n, "dim": self.dim, "extractor": self.extractor, "weights_sha256": self.weights_sha256,
                "resize": self.resize, "dataset": self.dataset, "split": self.split,
                "has_features": self.features is not None, **({"extra": self.extra} if self.extra else {})}

    def check_compatible(self, other: "FeatureStats") -> None:
        """ValueError unless both come from the same feature space: extractor, weights hash and
        resize equal wherever both record them, and the same dimension."""
        if self.dim != other.dim:
            raise ValueError(f"feature dimensions differ: {self.dim} vs {other.dim}")
        for k in _CHECKED:
            a, b = getattr(self, k), getattr(other, k)
            if a is not None and b is not None and a != b:
                raise ValueError(f"the statistics come from different feature spaces: {k} {a!r} vs {b!r}; "
                                 f"recompute one of them with the other's extractor and resize")

    def with_record(self, **fields: Any) -> "FeatureStats":
        """A copy with record fields replaced (``extractor=``, ``resize=``, ...)."""
        return dataclasses.replace(self, **fields)


def feature_stats(features: Tensor, keep_features: bool = False, **record: Any) -> FeatureStats:
    """:class:`FeatureStats` of features ``[N, D]`` (N >= 2): mean and unbiased covariance in
    float64; ``record`` fills the protocol fields (extractor, weights_sha256, resize, dataset,
    split, extra)."""
    f = torch.as_tensor(features).detach()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape [N, D] with N >= 2, got {list(f.shape)}")
    if not torch.isfinite(f).all():
        raise ValueError("features must be finite (a non-finite sample? check the images first)")
    x = f.to(torch.float64).cpu()
    mu = x.mean(0)
    xc = x - mu
    sigma = xc.T @ xc / (x.shape[0] - 1)
    return FeatureStats(mu, sigma, int(x.shape[0]), features=f.to(torch.float32).cpu() if keep_features else None,
                        **record)


def as_stats(x: Union[Tensor, FeatureStats], name: str = "features") -> FeatureStats:
    """``x`` itself if it is a :class:`FeatureStats`, else the statistics of the tensor ``[N, D]``
    (keeping the features)."""
    if isinstance(x, FeatureStats):
        return x
    if isinstance(x, (str, os.PathLike)):
        raise TypeError(f"{name}: got a path; load it with load_stats(path) first")
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a tensor [N, D] or FeatureStats, got {type(x).__name__}")
    try:
        return feature_stats(torch.as_tensor(x), keep_features=True)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def save_stats(stats: FeatureStats, path: Union[str, os.PathLike], features: bool = True) -> Path:
    """Write ``stats`` as an ``.npz`` (mu, sigma as pytorch-fid, the record under
    ``scoresde_meta``, and the features when kept and ``features``), atomically.  The extractor
    and resize must be recorded (a file is read later by someone who cannot ask)."""
    for k in ("extractor", "resize"):
        if getattr(stats, k) is None:
            raise ValueError(f"stats.{k} is not recorded; set it (stats.with_record({k}=...)) before saving")
    arrays: Dict[str, np.ndarray] = {"mu": stats.mu.to(torch.float64).numpy(),
                                     "sigma": stats.sigma.to(torch.float64).numpy(),
                                     _META_KEY: np.array(json.dumps(stats.record(), sort_keys=True))}
    if features and stats.features is not None:
        arrays["features"] = stats.features.to(torch.float32).numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_stats(path: Union[str, os.PathLike], extractor: Optional[str] = None, resize: Optional[str] = None,
               weights_sha256: Optional[str] = None, dataset: Optional[str] = None,
               split: Optional[str] = None) -> FeatureStats:
    """Read statistics from an ``.npz``: ours, pytorch-fid's / torch-fidelity's (``mu``, ``sigma``)
    or raw activations (``pool_3`` as score_sde's ``cifar10_stats.npz``, or ``features``).

    For a file that records its protocol, any argument given must agree with the record
    (ValueError otherwise: statistics of another extractor or resize are refused).  A file
    without a record needs ``extractor`` and ``resize`` stated by the caller; the other
    arguments fill the rest of the record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no statistics file at {path}")
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        meta = json.loads(str(f[_META_KEY])) if _META_KEY in keys else None
        feats = None
        for k in ("features", "pool_3"):
            if k in keys:
                feats = torch.from_numpy(np.asarray(f[k], dtype=np.float32).reshape(f[k].shape[0], -1))
                break
        if "mu" in keys and "sigma" in keys:
            mu = torch.from_numpy(np.asarray(f["mu"], dtype=np.float64)).reshape(-1)
            sigma = torch.from_numpy(np.asarray(f["sigma"], dtype=np.float64))
            stats = FeatureStats(mu, sigma, int(meta["n"]) if meta else 0, features=feats)
        elif feats is not None:
            stats = feature_stats(feats, keep_features=True)
        else:
            raise ValueError(f"{path} holds neither mu and sigma nor features (keys: {sorted(keys)})")
    given = {"extractor": extractor, "resize": resize, "weights_sha256": weights_sha256,
             "dataset": dataset, "split": split}
    if meta is None:
        missing = [k for k in ("extractor", "resize") if given[k] is None]
        if missing:
            raise ValueError(f"{path} does not record its {' and '.join(missing)} (a pytorch-fid or score_sde "
                             f"file?); state them: load_stats(path, extractor=..., resize=...)")
        return stats.with_record(**given, n=stats.n if stats.n else (feats.shape[0] if feats is not None else 0))
    for k, v in given.items():
        if v is not None and meta.get(k) is not None and meta[k] != v:
            raise ValueError(f"{path} was made with {k} = {meta[k]!r}, not {v!r}: statistics of another "
                             f"{k.replace('_', ' ')} are refused")
    rec = {k: meta.get(k) if meta.get(k) is not None else given[k] for k in given}
    return stats.with_record(**rec, extra=meta.get("extra", {}))
