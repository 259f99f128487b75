"""``scoresde-eval``: sample quality (FID / FD-digits, KID, IS, precision/recall) with its protocol.

    scoresde-eval samples=outputs/sample/2026-12-07/10-00-00                 # a sample run (samples.pt)
    scoresde-eval samples=my_samples.npz extractor=inception reference=cifar10_train.npz
    scoresde-eval checkpoint=outputs/train/.../checkpoints/last.pt sampler=dpm_solver sampler.steps=20 n=300

Samples come from a sample run directory (``samples.pt``, or ``samples.npz``, with its
``sample.json``), a file (``.pt``: a tensor ``[n, C, H, W]`` in data space [0, 1] as
``scoresde-sample`` writes; ``.npz``: uint8 images under ``arr_0`` / ``samples`` / ``images``, NHWC
or NCHW, what FID tools read), or are drawn here from a ``checkpoint`` (``n``, ``seed``,
``batch_size`` and the ``sampler`` group as in ``scoresde-sample``; written beside the results).

The feature space (``extractor``): ``digits`` (the shipped digits network: FD-digits,
KID-digits, IS-digits), ``inception`` (the FID Inception, weights from ``inception_weights`` or
the torch hub cache: FID, KID, Inception Score) or ``auto`` (digits for 1x8x8 images, else
inception).  The reference: a statistics file (``reference=PATH.npz``: ours, or pytorch-fid's /
torch-fidelity's, whose extractor and resize you state with ``reference_extractor`` and
``reference_resize``), or the statistics of a data set's ``reference_split`` (``data=NAME``, by
default the checkpoint's data set, or the digits), cached in ``reference_cache`` when given.  With
``floor=true`` the same figures of n real images from the other split are reported beside them
(the real-vs-real floor at the same n).

Writes ``eval.json`` (metrics, floor, protocol: n, seeds, sampler and NFE, extractor, weights
hash, resize, reference statistics and their record) and ``eval.md`` (the table and the protocol).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ..data import build_dataset
from ..metrics import evaluate, load_stats, markdown, reference_stats
from ..metrics.digits import DigitsFeatures
from ..metrics.features import FeatureExtractor
from ..atomic import atomic_write_bytes
from . import schema  # noqa: F401  (registers the group schemas)
from ..checkpoints import load_score
from ._common import ScoreSdeOptions, check_overrides, config_path, exit_on_user_error, load_app_score, run_dir

log = logging.getLogger("scoresde")

__all__ = ["EvalAppSchema", "load_samples", "build_extractor", "run_eval", "main", "EXTRACTORS"]

EXTRACTORS = ("auto", "digits", "inception")
NPZ_KEYS = ("arr_0", "samples", "images")


@dataclass
class EvalAppSchema:
    samples: Optional[str] = None
    checkpoint: Optional[str] = None
    score_sde: ScoreSdeOptions = field(default_factory=ScoreSdeOptions)   # checkpoint=score_sde:PATH
    n: int = 1000
    batch_size: Optional[int] = None
    seed: int = 0
    ema: bool = True
    sampler: Dict[str, Any] = field(default_factory=dict)
    data: Optional[Dict[str, Any]] = None
    extractor: str = "auto"
    inception_weights: Optional[str] = None
    reference: Optional[str] = None
    reference_extractor: Optional[str] = None
    reference_resize: Optional[str] = None
    reference_split: str = "train"
    reference_cache: Optional[str] = None
    floor: bool = True
    floor_repeats: int = 5
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    pr_k: int = 3
    metric_seed: int = 0
    feature_batch_size: int = 256
    device: str = "auto"


ConfigStore.instance().store(name="eval_app_schema", node=EvalAppSchema)


def _npz_images(path: Path) -> torch.Tensor:
    with np.load(path, allow_pickle=False) as f:
        key = next((k for k in NPZ_KEYS if k in f.files), None)
        if key is None:
            raise ValueError(f"{path} holds none of the keys {NPZ_KEYS} (keys: {f.files})")
        a = np.asarray(f[key])
    if a.ndim != 4:
        raise ValueError(f"{path}[{key!r}] must be images [N, H, W, C] or [N, C, H, W], got shape {a.shape}")
    if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)                     # NHWC (what FID tools write) -> NCHW
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t if t.dtype == torch.uint8 else t.float()


def load_samples(path: str) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """``(images, record)`` from a sample run directory or a ``.pt`` / ``.npz`` file; the record
    is the run's ``sample.json`` when there is one beside the samples (else ``{}``)."""
    p = Path(path)
    if p.is_dir():
        for name in ("samples.pt", "samples.npz"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"{path} holds neither samples.pt nor samples.npz")
    if not p.is_file():
        raise FileNotFoundError(f"no samples at {path}")
    if p.suffix == ".npz":
        x = _npz_images(p)
    else:
        x = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{p} must hold one tensor of samples, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{p}: samples must be images [N, C, H, W], got shape {list(x.shape)}")
    meta = p.parent / "sample.json"
    record = json.loads(meta.read_text()) if meta.is_file() else {}
    return x, {"path": str(p), **record}


def _kind(kind: str, images: torch.Tensor) -> str:
    if kind not in EXTRACTORS:
        raise ValueError(f"extractor must be one of {EXTRACTORS}, got {kind!r}")
    if kind == "auto":
        return "digits" if tuple(images.shape[1:]) == (1, 8, 8) else "inception"
    return kind


def build_extractor(kind: str, images: torch.Tensor, inception_weights: Optional[str], device: str
                    ) -> FeatureExtractor:
    """The feature extractor ``kind`` (``auto``: digits for [N, 1, 8, 8] images, else inception)."""
    if _kind(kind, images) == "digits":
        return DigitsFeatures(quantize=True)
    from ..metrics import inception
    from ..device import resolve_device
    # the prefix is read at call time so that tests can stand random weights in for the real file
    return inception.InceptionV3(inception_weights, sha256_prefix=inception.INCEPTION_SHA256_PREFIX,
                                 device=resolve_device(device))


def _data_images(data_cfg: Dict[str, Any], split: str) -> torch.Tensor:
    cfg = dict(data_cfg)
    name = cfg.pop("name")
    data = build_dataset(name, **cfg)
    x = data.test if split == "test" else data.train
    if x is None:
        raise ValueError(f"data set {name!r} has no fixed {split} images (dequantize=true draws fresh noise "
                         f"each batch); use dequantize=false or a reference statistics file")
    return data.scaler.to_data(x).clamp(0, 1)


def _sample_here(cfg: DictConfig, out_dir: Path) -> Tuple[torch.Tensor, Dict[str, Any], Optional[Dict[str, Any]]]:
    from .sample import sample_checkpoint
    loaded = load_app_score(cfg)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    x, info = sample_checkpoint(loaded, sampler, cfg.n, cfg.batch_size, cfg.seed, cfg.device, cfg.ema)
    info = {"checkpoint": str(cfg.checkpoint), **info}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(x, out_dir / "samples.pt")
    atomic_write_bytes(out_dir / "sample.json", json.dumps(info, indent=2).encode())
    return x, {"path": str(out_dir / "samples.pt"), **info}, loaded.meta["data"]


def _checkpoint_data(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The data set config of the checkpoint a sample run came from, when it can be read."""
    ck = record.get("checkpoint")
    if not ck or str(ck).startswith("diffusers:") or not Path(ck).is_file():
        return None
    return load_score(ck, "cpu").meta["data"]


# the metric settings that count something: checked before any sampling or network loading
_AT_LEAST_ONE = ("floor_repeats", "kid_subsets", "kid_subset_size", "is_splits", "pr_k", "feature_batch_size")


def run_eval(cfg: DictConfig, out_dir: Path) -> Dict[str, Any]:
    """The body of the app: eval.json and eval.md in ``out_dir``."""
    for key in _AT_LEAST_ONE:
        if cfg[key] < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {cfg[key]}")
    if (cfg.samples is None) == (cfg.checkpoint is None):
        raise ValueError("give exactly one of samples=PATH (a sample run or file) and checkpoint=PATH (sample here)")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
    if cfg.checkpoint is not None:
        images, sample_record, ck_data = _sample_here(cfg, out_dir)
    else:
        images, sample_record = load_samples(cfg.samples)
        ck_data = None
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {images.shape[0]}")
    ref = None
    if cfg.reference is not None:
        ref = load_stats(cfg.reference, extractor=cfg.reference_extractor, resize=cfg.reference_resize)
        # a file of another feature space is refused before the network is even loaded
        from ..metrics.inception import InceptionV3
        cls = DigitsFeatures if _kind(cfg.extractor, images) == "digits" else InceptionV3
        ref.check_compatible(ref.with_record(extractor=cls.name, resize=cls.resize))
    ext = build_extractor(cfg.extractor, images, cfg.inception_weights, cfg.device)
    floor_images = None
    if ref is not None:
        ref.check_compatible(ref.with_record(**ext.record()))    # and of other weights
        ref_source: Dict[str, Any] = {"statistics_file": str(cfg.reference)}
        if cfg.floor:
            log.info("floor not computed: a statistics file has no held-out images beside it (floor=false to silence)")
    else:
        data_cfg = data_cfg or ck_data or (_checkpoint_data(sample_record) if cfg.samples else None)
        if data_cfg is None:
            if not isinstance(ext, DigitsFeatures):
                raise ValueError("no reference: give reference=STATS.npz or data=NAME (a data set to compute it from)")
            data_cfg = {"name": "digits", "n_test": 300, "seed": 0}
        split = cfg.reference_split
        if split not in ("train", "test"):
            raise ValueError(f"reference_split must be train or test, got {split!r}")
        ref = reference_stats(ext, lambda: _data_images(data_cfg, split), cfg.reference_cache,
                              dataset=json.dumps(data_cfg, sort_keys=True), split=split,
                              batch_size=cfg.feature_batch_size)
        ref_source = {"data": data_cfg, "split": split, "statistics_file": cfg.reference_cache}
        if cfg.floor:
            other = "test" if split == "train" else "train"
            held = _data_images(data_cfg, other)
            if held.shape[0] >= images.shape[0]:
                floor_images = held
            else:
                log.info("floor not computed: %d %s images < n = %d", held.shape[0], other, images.shape[0])
    result = evaluate(images, ext, ref, floor_images=floor_images, floor_repeats=cfg.floor_repeats,
                      kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, is_splits=cfg.is_splits,
                      pr_k=cfg.pr_k, seed=cfg.metric_seed, batch_size=cfg.feature_batch_size)
    keep = ("path", "checkpoint", "step", "data", "sampler", "options", "n", "nfe", "nfe_per_batch", "seed",
            "ema", "labels", "guidance")
    result["protocol"].update(
        samples={k: sample_record[k] for k in keep if k in sample_record and k != "labels"},
        reference_source=ref_source, metric_seed=cfg.metric_seed)
    nfe = sample_record.get("nfe_per_batch", [None])[0] if sample_record.get("nfe_per_batch") else None
    result["protocol"]["sampler"] = (f"{sample_record.get('sampler')} {sample_record.get('options', {})}, "
                                     f"NFE {nfe} per sample" if "sampler" in sample_record
                                     else "unknown (no sample.json beside the samples)")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "eval.json", json.dumps(result, indent=2, default=str).encode())
    title = f"{ext.fd_name.upper() if ext.fd_name == 'fid' else ext.fd_name} of {images.shape[0]} samples"
    text = markdown(result, title)
    atomic_write_bytes(out_dir / "eval.md", text.encode())
    log.info("%s -> %s\n%s", title, out_dir / "eval.json", text)
    return result


@hydra.main(version_base="1.3", config_path=config_path(), config_name="eval_app")
def _app(cfg: DictConfig) -> None:
    exit_on_user_error(run_eval)(cfg, run_dir())


def main() -> None:
    """Console script ``scoresde-eval``."""
    check_overrides("eval_app")
    _app()


if __name__ == "__main__":
    main()
