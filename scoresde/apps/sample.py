"""``scoresde-sample``: draw samples from a trained checkpoint with any sampler.

    scoresde-sample checkpoint=outputs/train/.../checkpoints/last.pt                # ODE (dopri5)
    scoresde-sample checkpoint=... sampler=dpm_solver sampler.steps=10 n=5000 seed=1
    python -m scoresde.apps.sample checkpoint=... sampler=pc sampler.corrector=langevin
    scoresde-sample checkpoint=diffusers:/models/ddpm sampler=sde n=16     # a diffusers model folder
    scoresde-sample checkpoint=score_sde:checkpoint_26.pth score_sde.config=vp/cifar10_ddpmpp_continuous n=16

Writes to the run directory: ``samples.pt`` (a tensor ``[n, ...]`` in data space: the inverse
of the data set's scaler, so pixels in [0, 1] for images), ``samples.png`` (a scatter plot over
the held-out data for vectors, a grid for images) and ``sample.json`` (sampler, options, NFE,
seconds).  The noise comes from a CPU generator seeded with ``seed``, so the same seed gives the
same samples on any device.  ``checkpoint=diffusers:PATH`` samples a local diffusers model folder
(:func:`scoresde.checkpoints.load_score`) under the SDE its scheduler discretises; its samples
are written as pixel intensities in [0, 1] (x / 2 + 1/2, as diffusers' pipelines).

Class-conditional checkpoints (trained with ``model.num_classes=K``) take ``labels`` and the
``guidance`` group (``conf/guidance/``, checked against :func:`guidance_options`):

    scoresde-sample checkpoint=... labels=[3,3,7] guidance.kind=cfg guidance.scale=2
    scoresde-sample checkpoint=... labels=5 n=64 guidance=cfg guidance.scale=4
    scoresde-sample checkpoint=... labels=per_class n=8 guidance.scale=2     # 8 of each class

A list of labels is one sample per entry (``n`` is then ``len(labels)``); one integer gives ``n``
samples of that class; ``labels=per_class`` gives ``n`` samples of every class (``n`` times the
number of classes in all, class by class).  With labels, an image checkpoint's ``samples.png`` has
one row per requested class (in the order they are first requested, up to 16 samples a row, the
class on the left) and a vector one colours the samples by class.  ``guidance.kind=cfg`` is
classifier-free guidance of the model with itself (:func:`scoresde.guidance.cfg_model`: the
conditional and null-label halves in one batched network call a step); scale 1 is the plain
conditional model, 0 the unconditional one.
``guidance.kind=classifier guidance.classifier=PATH`` is classifier guidance with a noisy
classifier trained by ``scoresde-train task=classifier`` on the same SDE
(:func:`scoresde.guidance.classifier`: s + scale grad_x log q_t(y | x)); the score is the
checkpoint's unconditional model (a conditional one's null label).
``sample.json`` then also records the labels, the guidance and, beside the sampler's NFE (guided
evaluations), ``network_calls`` and ``forward_passes`` (network evaluations in units of the
batch: 2 a guided step at scale other than 0 and 1).

Inverse problems (``conf/inverse/``, :mod:`scoresde.apps._inverse`): inpainting, super-resolution
and colorization of held-out or given images with :func:`scoresde.sample_posterior`:

    scoresde-sample checkpoint=... inverse.op=mask inverse.mask=lower_half inverse.method=smc inverse.n=8
    scoresde-sample checkpoint=... inverse.op=downsample inverse.factor=2 inverse.data=lowres.pt

Editing (``conf/edit/``, :mod:`scoresde.apps._edit`): SDEdit of guides at several t0, the
probability-flow encoder's round trip, interpolation between two images:

    scoresde-sample checkpoint=... edit.mode=sdedit edit.guide=blur edit.t0=[0.1,0.3,0.6] edit.n=4
    scoresde-sample checkpoint=... edit.mode=interpolate edit.index=0 edit.other=5 edit.points=9
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ..plots import save_samples_png
from . import schema  # noqa: F401  (registers the group schemas)
from . import _inverse  # noqa: F401  (stores the inverse group's schema)
from . import _edit  # noqa: F401  (stores the edit group's schema)
from ._guidance import guidance_options  # noqa: F401  (re-exported; stores the guidance schema)
from ._sampling import _reference, sample_checkpoint
from ._common import (ScoreSdeOptions, config_path, exit_on_user_error, load_app_score, run_app,
                      run_dir)

log = logging.getLogger("scoresde")

__all__ = ["SampleAppSchema", "guidance_options", "sample_checkpoint", "run_sample", "main"]

@dataclass
class SampleAppSchema:
    checkpoint: str = MISSING
    score_sde: ScoreSdeOptions = field(default_factory=ScoreSdeOptions)   # checkpoint=score_sde:PATH
    n: int = 1000
    batch_size: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    ema: bool = True
    progress: bool = False
    sampler: Dict[str, Any] = field(default_factory=dict)
    labels: Any = None                     # int | list of ints | null (unconditional sampling)
    guidance: Dict[str, Any] = field(default_factory=dict)
    inverse: Dict[str, Any] = field(default_factory=dict)   # inverse.op set: posterior sampling (_inverse.py)
    edit: Dict[str, Any] = field(default_factory=dict)      # edit.mode set: SDEdit, encode, interpolate (_edit.py)
    noise: str = "stream"                  # stream (one generator) | per_item (from (seed, i): _shard.py)


ConfigStore.instance().store(name="sample_schema", node=SampleAppSchema)


def run_sample(cfg: DictConfig, out_dir: Path) -> Dict[str, Any]:
    """The body of the app: samples -> samples.pt, samples.png, sample.json in ``out_dir``
    (with ``inverse.op`` set: posterior samples, :func:`scoresde.apps._inverse.run_inverse`;
    with ``edit.mode`` set: edits, :func:`scoresde.apps._edit.run_edit`)."""
    if cfg.get("inverse") is not None and cfg.inverse.get("op") is not None:
        return _inverse.run_inverse(cfg, out_dir)
    if cfg.get("edit") is not None and cfg.edit.get("mode") is not None:
        return _edit.run_edit(cfg, out_dir)
    from ..training import distributed
    if cfg.get("noise", "stream") != "stream" or distributed.task_rank_world()[1] > 1:
        from ._shard import run_sharded
        return run_sharded(cfg, out_dir)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    loaded = load_app_score(cfg)
    labels = OmegaConf.to_container(cfg.labels) if OmegaConf.is_config(cfg.labels) else cfg.labels
    guidance = OmegaConf.to_container(cfg.guidance, resolve=True)
    x, info = sample_checkpoint(loaded, sampler, cfg.n, cfg.batch_size, cfg.seed, cfg.device, cfg.ema,
                                cfg.progress, labels=labels, guidance=guidance)
    info = {"checkpoint": str(cfg.checkpoint), **info}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(x, out_dir / "samples.pt")
    ref = _reference(loaded.meta["data"], x.shape[1:])
    title = (f"{info['data'] or cfg.checkpoint}: {info['sampler']}, NFE {info['nfe_per_batch'][0]}"
             + (f", step {info['step']}" if info["step"] is not None else ""))
    save_samples_png(x, out_dir / "samples.png", reference=ref, title=title,
                     labels=torch.tensor(info["labels"]) if "labels" in info else None)
    info["files"] = ["samples.pt", "samples.png"]
    (out_dir / "sample.json").write_text(json.dumps(info, indent=2))
    log.info("%d samples (%s, NFE %d, %.2f s) written to %s", info["n"], info["sampler"], info["nfe"],
             info["seconds"], out_dir)
    return info


@hydra.main(version_base="1.3", config_path=config_path(), config_name="sample")
def _app(cfg: DictConfig) -> None:
    exit_on_user_error(run_sample)(cfg, run_dir())


def main() -> None:
    """Console script ``scoresde-sample``; under torchrun, one rank of a sharded run (``_shard.py``)."""
    run_app(_app, "sample")


if __name__ == "__main__":
    main()
