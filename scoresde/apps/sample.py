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
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ..data import Scaler, build_dataset
from ..plots import save_samples_png
from . import schema  # noqa: F401  (registers the group schemas)
from .schema import schema_from_signature
from . import _inverse  # noqa: F401  (stores the inverse group's schema)
from ..checkpoints import LoadedScore, checkpoint_path, load_score, loaded_model
from ._common import config_path, cpu_generator, exit_on_user_error, run_dir

log = logging.getLogger("scoresde")

__all__ = ["SampleAppSchema", "guidance_options", "sample_checkpoint", "run_sample", "main"]

GUIDANCE_KINDS = ("cfg", "classifier")


def guidance_options(kind: str = "cfg", scale: float = 1.0, classifier: Optional[str] = None) -> Dict[str, Any]:
    """The ``guidance`` node of the sample app (its schema is this signature).

    ``kind``: ``cfg`` (classifier-free guidance of a class-conditional model, Ho & Salimans 2022:
    s(x, t, null) + scale (s(x, t, y) - s(x, t, null)); their w = scale - 1, diffusers'
    ``guidance_scale`` = scale) or ``classifier`` (Song et al. 2021 Sec. 5, Dhariwal & Nichol
    2021: s(x, t) + scale grad_x log q_t(y | x) with the noisy classifier checkpoint
    ``classifier``).  Returns the checked options.
    """
    if kind not in GUIDANCE_KINDS:
        raise ValueError(f"unknown guidance.kind {kind!r}; valid: {', '.join(GUIDANCE_KINDS)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"guidance.scale must be a number, got {scale!r}")
    if kind == "classifier" and not classifier:
        raise ValueError("guidance.kind=classifier needs guidance.classifier=PATH (a checkpoint of "
                         "scoresde-train task=classifier)")
    if kind == "cfg" and classifier:
        raise ValueError("guidance.classifier is used only with guidance.kind=classifier")
    out = {"kind": kind, "scale": float(scale)}
    if classifier:
        out["classifier"] = str(classifier)
    return out


class _Counted:
    """Counts the calls of a function (the classifier guidance's score and classifier evaluations)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def _classifier_guided(model, clf, y: torch.Tensor, scale: float):
    """(guided score_fn, score counter, classifier counter) for classifier guidance of ``model``."""
    import scoresde as sd
    from ..classifier import classifier_log_prob_fn

    if model.num_classes:
        null = model.null_label
        score = _Counted(lambda x, t: model(x, t, torch.full((x.shape[0],), null, dtype=torch.long,
                                                              device=x.device)))
    else:
        score = _Counted(model)
    lp = _Counted(classifier_log_prob_fn(clf, y))
    fn = sd.guidance.classifier(score, lp, scale)
    return fn, score, lp


def _load_guidance_classifier(path: str, model, dev):
    from ..checkpoints import load_classifier

    clf = load_classifier(checkpoint_path(path), device=dev)
    want = (model.checkpoint.get("config") or {}).get("sde")
    have = (clf.checkpoint.get("config") or {}).get("sde")
    if want is not None and have is not None and dict(want) != dict(have):
        raise ValueError(f"the classifier {path} was trained on the SDE {dict(have)}, the score model on "
                         f"{dict(want)}: guidance needs the same forward process")
    return clf


GuidanceSchema = schema_from_signature("GuidanceSchema", guidance_options, None)
ConfigStore.instance().store(group="schema/guidance", name="guidance", node=GuidanceSchema)


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
    labels: Any = None                     # int | list of ints | null (unconditional sampling)
    guidance: Dict[str, Any] = field(default_factory=dict)
    inverse: Dict[str, Any] = field(default_factory=dict)   # inverse.op set: posterior sampling (_inverse.py)


ConfigStore.instance().store(name="sample_schema", node=SampleAppSchema)


PER_CLASS = "per_class"


def _check_labels(labels, n: int, num_classes: int) -> Optional[torch.Tensor]:
    """The int64 labels of a conditional draw (None: unconditional): ``[n]`` for one integer,
    one per entry of a list, ``n`` of each class in turn for ``"per_class"``."""
    if labels is None:
        return None
    if not num_classes:
        raise ValueError("labels given, but the checkpoint's model is unconditional (model.num_classes=0); "
                         "train with model.num_classes=K for class-conditional sampling")
    if isinstance(labels, str):
        if labels != PER_CLASS:
            raise ValueError(f"labels must be an integer, a non-empty list of integers or {PER_CLASS!r}, "
                             f"got {labels!r}")
        return torch.arange(num_classes).repeat_interleave(n)
    vals = [labels] if isinstance(labels, int) and not isinstance(labels, bool) else list(labels)
    if not vals or any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
        raise ValueError(f"labels must be an integer, a non-empty list of integers or {PER_CLASS!r}, "
                         f"got {labels!r}")
    bad = sorted({v for v in vals if not 0 <= v < num_classes})
    if bad:
        raise ValueError(f"labels must lie in [0, {num_classes}) for this model, got {bad}")
    y = torch.tensor(vals, dtype=torch.long)
    return y.expand(n).clone() if len(vals) == 1 and isinstance(labels, int) else y


def sample_checkpoint(checkpoint, sampler: Dict[str, Any], n: int, batch_size: Optional[int] = None,
                      seed: int = 0, device: str = "auto", ema: bool = True, progress: bool = False,
                      labels: Union[None, int, List[int]] = None, guidance: Optional[Dict[str, Any]] = None):
    """Samples of a checkpoint's model (a path, ``diffusers:PATH``, a model from
    :func:`scoresde.load_model` or a :class:`LoadedScore`), in data space.

    ``labels`` (class-conditional models only): one class for all ``n`` samples, a list, one
    sample per entry (``n`` is then ``len(labels)``), or ``"per_class"``: ``n`` samples of each
    class, class by class (``n`` times the number of classes in all); ``guidance`` the options of
    :func:`guidance_options` (default: cfg at scale 1, the conditional model).

    Returns ``(x, info)``: ``x`` ``[n, ...]`` on the CPU and ``info`` (sampler, options, nfe summed
    over the batches, nfe_per_batch, seconds, step; with labels also labels, guidance,
    network_calls and forward_passes).
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
    model = score_fn
    guide = guidance_options(**(guidance or {})) if labels is not None else None
    clf = None
    if guide is not None and guide["kind"] == "classifier":
        clf = _load_guidance_classifier(guide["classifier"], model, dev)
        y = _check_labels(labels, n, int(clf.num_classes))
    else:
        y = _check_labels(labels, n, int(getattr(model, "num_classes", 0) or 0))
    if y is not None:
        n = int(y.numel())
    opts = {k: v for k, v in sampler.items() if k != "name"}
    name = sampler.get("name", "ode")
    sd.build_sampler(name, **opts)   # names and the prior checked before any work
    g = cpu_generator(seed)
    chunks, nfes, seconds, n_bad = [], [], 0.0, 0
    calls = passes = clf_calls = 0
    t0 = time.perf_counter()
    for start in range(0, n, batch_size or n):
        b = min(batch_size or n, n - start)
        fn = score_fn
        if clf is not None:
            fn, score, lp = _classifier_guided(model, clf, y[start:start + b].to(dev), guide["scale"])
        elif y is not None:
            fn = sd.guidance.cfg_model(model, y[start:start + b].to(dev), guide["scale"])
        res = sd.sample(fn, sde, (b,) + shape, sampler=name, generator=g, device=dev,
                        progress=progress, **opts)
        if clf is not None:
            calls += score.calls
            passes += score.calls
            clf_calls += lp.calls
        elif y is not None:
            calls += fn.network_calls
            passes += fn.forward_passes
        chunks.append(res.x.cpu())
        nfes.append(int(res.nfe))
        n_bad += int(res.nonfinite)
        seconds += res.seconds
    x = Scaler(**meta["scaler"]).to_data(torch.cat(chunks))
    info = {"step": meta["step"], "data": meta["data_name"], "source": meta["source"],
            "sampler": name, "options": opts, "n": n, "nfe": sum(nfes), "nfe_per_batch": nfes,
            "seconds": round(seconds, 4), "wall_seconds": round(time.perf_counter() - t0, 4),
            "seed": seed, "ema": ema, "device": str(dev),
            # samples holding a NaN/Inf: 0 unless +sampler.nonfinite=count (the default raises)
            "nonfinite": n_bad}
    if y is not None:
        info.update(labels=y.tolist(), guidance=guide, network_calls=calls, forward_passes=passes)
        if clf is not None:
            info["classifier_calls"] = clf_calls   # each a classifier forward and backward
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
    """The body of the app: samples -> samples.pt, samples.png, sample.json in ``out_dir``
    (with ``inverse.op`` set: posterior samples, :func:`scoresde.apps._inverse.run_inverse`)."""
    if cfg.get("inverse") is not None and cfg.inverse.get("op") is not None:
        return _inverse.run_inverse(cfg, out_dir)
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    loaded = load_score(cfg.checkpoint, cfg.device, cfg.ema)
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
    """Console script ``scoresde-sample``."""
    _app()


if __name__ == "__main__":
    main()
