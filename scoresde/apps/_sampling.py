"""The sample app's body below Hydra: a checkpoint's samples in data space, with labels and
guidance (:func:`sample_checkpoint`), shared by the app (:mod:`.sample`) and its sharded runs
(:mod:`._shard`)."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Union

import torch

from ..checkpoints import LoadedScore, checkpoint_path, load_score, loaded_model
from ..data import Scaler, build_dataset
from ._common import cpu_generator
from ._guidance import check_labels, guidance_options

__all__ = ["sample_checkpoint"]


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


def sample_checkpoint(checkpoint, sampler: Dict[str, Any], n: int, batch_size: Optional[int] = None,
                      seed: int = 0, device: str = "auto", ema: bool = True, progress: bool = False,
                      labels: Union[None, int, List[int]] = None, guidance: Optional[Dict[str, Any]] = None,
                      item_offset: Optional[int] = None):
    """Samples of a checkpoint's model (a path, ``diffusers:PATH``, a model from
    :func:`scoresde.load_model` or a :class:`LoadedScore`), in data space.

    ``labels`` (class-conditional models only): one class for all ``n`` samples, a list, one
    sample per entry (``n`` is then ``len(labels)``), or ``"per_class"``: ``n`` samples of each
    class, class by class (``n`` times the number of classes in all); ``guidance`` the options of
    :func:`guidance_options` (default: cfg at scale 1, the conditional model).

    Returns ``(x, info)``: ``x`` ``[n, ...]`` on the CPU and ``info`` (sampler, options, nfe summed
    over the batches, nfe_per_batch, seconds, step; with labels also labels, guidance,
    network_calls and forward_passes).  ``item_offset``: per-item noise, sample k's from
    ``(seed, item_offset + k)`` (:class:`scoresde.samplers.ItemNoise`; the sharded app's rule).
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
        y = check_labels(labels, n, int(clf.num_classes))
    else:
        y = check_labels(labels, n, int(getattr(model, "num_classes", 0) or 0))
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
        gen = (g if item_offset is None
               else sd.samplers.ItemNoise(seed, range(item_offset + start, item_offset + start + b)))
        res = sd.sample(fn, sde, (b,) + shape, sampler=name, generator=gen, device=dev,
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
            # samples holding a NaN/Inf: 0 unless sampler.nonfinite=count (the default raises)
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
