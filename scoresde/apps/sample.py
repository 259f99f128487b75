"""``scoresde-sample``: draw samples from a trained checkpoint with any sampler.

    scoresde-sample checkpoint=outputs/train/.../checkpoints/last.pt                # ODE (dopri5)
    scoresde-sample checkpoint=... sampler=dpm_solver sampler.steps=10 n=5000 seed=1
    python -m scoresde.apps.sample checkpoint=... sampler=pc sampler.corrector=langevin
    scoresde-sample checkpoint=diffusers:/models/ddpm sampler=sde n=16     # a diffusers model folder

Writes to the run directory: ``samples.pt`` (a tensor ``[n, ...]`` in data space: the inverse
of the data set's scaler, so pixels in [0, 1] for images), ``samples.png`` (a scatter plot over
the held-out data for vectors, a grid for images) and ``sample.json`` (sampler, options, NFE,
seconds).  The noise comes from a CPU generator seeded with ``seed``, so the same seed gives the
same samples on any device.  ``checkpoint=diffusers:PATH`` samples a local diffusers model folder
(:func:`scoresde.apps._common.load_score`) under the SDE its scheduler discretises; its samples
are written as pixel intensities in [0, 1] (x / 2 + 1/2, as diffusers' pipelines).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ..data import Scaler, build_dataset
from ..plots import save_samples_png
from . import schema  # noqa: F401  (registers the group schemas)
from ._common import LoadedScore, config_path, cpu_generator, exit_on_user_error, load_score, loaded_model, run_dir

log = logging.getLogger("scoresde")

__all__ = ["SampleAppSchema", "sample_checkpoint", "run_sample", "main"]


@dataclass
class SampleAppSchema:
    checkpoint: str = MISSING
    n: int = 1000
    batch_size: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    ema: bool = True
    progress: bool = False
    sampler: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(name="sample_schema", node=SampleAppSchema)


def sample_checkpoint(checkpoint, sampler: Dict[str, Any], n: int, batch_size: Optional[int] = None,
                      seed: int = 0, device: str = "auto", ema: bool = True, progress: bool = False):
    """Samples of a checkpoint's model (a path, ``diffusers:PATH``, a model from
    :func:`scoresde.load_model` or a :class:`LoadedScore`), in data space.

    Returns ``(x, info)``: ``x`` ``[n, ...]`` on the CPU and ``info`` (sampler, options, nfe summed
    over the batches, nfe_per_batch, seconds, step).
    """
    import scoresde as sd

    if n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive or null, got {batch_size}")
    loaded = checkpoint if isinstance(checkpoint, LoadedScore) else (
        loaded_model(checkpoint) if isinstance(checkpoint, torch.nn.Module) else load_score(checkpoint, device, ema))
    score_fn, sde, shape, meta = loaded
    if shape is None:
        raise ValueError(f"{meta['path']}: the checkpoint records no sample shape (written by an earlier "
                         "version of scoresde-train); retrain or resave it")
    dev = next(score_fn.parameters()).device
    opts = {k: v for k, v in sampler.items() if k != "name"}
    name = sampler.get("name", "ode")
    sd.build_sampler(name, **{k: v for k, v in opts.items() if k != "eps"})  # names checked before any work
    g = cpu_generator(seed)
    chunks, nfes, seconds = [], [], 0.0
    t0 = time.perf_counter()
    for start in range(0, n, batch_size or n):
        b = min(batch_size or n, n - start)
        res = sd.sample(score_fn, sde, (b,) + shape, sampler=name, generator=g, device=dev,
                        progress=progress, **opts)
        chunks.append(res.x.cpu())
        nfes.append(int(res.nfe))
        seconds += res.seconds
    x = Scaler(**meta["scaler"]).to_data(torch.cat(chunks))
    info = {"step": meta["step"], "data": meta["data_name"], "source": meta["source"],
            "sampler": name, "options": opts, "n": n, "nfe": sum(nfes), "nfe_per_batch": nfes,
            "seconds": round(seconds, 4), "wall_seconds": round(time.perf_counter() - t0, 4),
            "seed": seed, "ema": ema, "device": str(dev)}
    return x, info


def _reference(data_config: Optional[Dict[str, Any]], event_shape) -> Optional[torch.Tensor]:
    """Held-out data (data space) under the scatter plot of vector samples; None for images."""
    if len(event_shape) != 1:
        return None
    data_cfg = dict(data_config or {})
    name = data_cfg.pop("name", None)
    if name is None:
        return None
    data = build_dataset(name, **data_cfg)
    return data.scaler.to_data(data.test)


def run_sample(cfg: DictConfig, out_dir: Path) -> Dict[str, Any]:
    """The body of the app: samples -> samples.pt, samples.png, sample.json in ``out_dir``."""
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    loaded = load_score(cfg.checkpoint, cfg.device, cfg.ema)
    x, info = sample_checkpoint(loaded, sampler, cfg.n, cfg.batch_size, cfg.seed, cfg.device, cfg.ema,
                                cfg.progress)
    info = {"checkpoint": str(cfg.checkpoint), **info}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(x, out_dir / "samples.pt")
    ref = _reference(loaded.meta["data"], x.shape[1:])
    title = (f"{info['data'] or cfg.checkpoint}: {info['sampler']}, NFE {info['nfe_per_batch'][0]}"
             + (f", step {info['step']}" if info["step"] is not None else ""))
    save_samples_png(x, out_dir / "samples.png", reference=ref, title=title)
    info["files"] = ["samples.pt", "samples.png"]
    (out_dir / "sample.json").write_text(json.dumps(info, indent=2))
    log.info("%d samples (%s, NFE %d, %.2f s) written to %s", cfg.n, info["sampler"], info["nfe"],
             info["seconds"], out_dir)
    return info


@hydra.main(version_base="1.3", config_path=config_path(), config_name="sample")
def _app(cfg: DictConfig) -> None:
    exit_on_user_error(run_sample)(cfg, run_dir())


def main() -> None:
    """Console script ``scoresde-sample``."""
    _app()


if __name__ == "__main__":
    main()
