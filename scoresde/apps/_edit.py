"""The sample app's editing mode: SDEdit of guides at several t0, encode/decode, interpolation.

    python -m scoresde sample checkpoint=... edit.mode=sdedit edit.guide=blur edit.t0=[0.1,0.3,0.6] edit.n=4
    python -m scoresde sample checkpoint=... edit.mode=sdedit edit.data=strokes.png edit.guide=none
    python -m scoresde sample checkpoint=... edit.mode=encode edit.n=8          # round trip and latents
    python -m scoresde sample checkpoint=... edit.mode=interpolate edit.index=0 edit.other=5 edit.points=9

``edit.mode`` set turns the sample app into :mod:`scoresde.edit`'s front end; the node's options
and defaults are :func:`edit_options` (the schema of ``conf/edit/``).  The images (``edit.data``:
the checkpoint's held-out data by default, a data set name, an image file or a .pt / .npy tensor
in data space, as ``inverse.data``) are taken from ``edit.index`` on, in model space through
the data set's scaler, and written back in data space.

* ``sdedit``: each image is made a guide (``edit.guide``: ``none`` (the image itself: a PNG of
  strokes, a tensor), ``blur`` (average pooling by ``edit.factor`` shown at full size),
  ``strokes`` (thresholded at mid-range: flat ink on paper)) and edited at every ``edit.t0``
  (:func:`scoresde.edit.sdedit` with ``edit.sampler``, ``edit.steps`` steps for each unit of t0,
  at least 10).  A class-conditional checkpoint takes ``labels`` and ``guidance`` as plain sampling
  does (classifier-free guidance of the model with itself).  Writes ``edits.pt``
  (``[n, len(t0), ...]``), ``guides.pt``, ``edit.png`` (a row an image: guide | edits at each t0).
* ``encode``: the probability-flow latents at T (:func:`scoresde.edit.encode`, dopri5 at
  ``edit.rtol`` = atol) and their decoding; ``latents.pt`` (model space), ``reconstructions.pt``,
  ``edit.png`` (original | reconstruction), the round trip's relative error in ``sample.json``.
* ``interpolate``: images ``index, ..., index + n - 1`` against ``other, ..., other + n - 1``,
  ``edit.points`` latents slerped between each pair and decoded (:func:`scoresde.edit.interpolate`);
  ``interpolation.pt`` ``[n, points, ...]`` and ``edit.png`` (a row a pair).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from hydra.core.config_store import ConfigStore

from ..data import Scaler
from .schema import schema_from_signature

log = logging.getLogger("scoresde")

__all__ = ["edit_options", "make_guide", "edit_checkpoint", "run_edit", "MODES", "GUIDES"]

MODES = ("sdedit", "encode", "interpolate")
GUIDES = ("none", "blur", "strokes")


def edit_options(mode: Optional[str] = None, data: Optional[str] = None, index: int = 0, n: int = 4,
                 guide: str = "blur", factor: int = 2, t0: Any = (0.1, 0.3, 0.6), sampler: str = "sde",
                 steps: int = 200, options: Optional[Dict[str, Any]] = None, rtol: float = 1e-5,
                 other: Optional[int] = None, points: int = 9) -> Dict[str, Any]:
    """The ``edit`` node of the sample app (its schema is this signature); returns the checked options.

    ``mode``: None (plain sampling) or one of :data:`MODES`.  ``data``, ``index``, ``n``: the
    images (see the module docstring).  ``guide``, ``factor``: how an image becomes an SDEdit
    guide (:func:`make_guide`).  ``t0``: one number or a list, each in (1e-3, T].  ``sampler``:
    the SDEdit sampler (any of :func:`scoresde.sample`), ``steps`` its steps over [0, 1]
    (``max(10, round(steps t0))`` a run), ``options`` its other options.  ``rtol``: rtol = atol of
    the encoder and decoder (dopri5).  ``other``: the first image of the interpolation's second
    end (default ``index + n``); ``points``: the interpolation's points, both ends included.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown edit.mode {mode!r}; valid: {', '.join(MODES)}")
    if guide not in GUIDES:
        raise ValueError(f"unknown edit.guide {guide!r}; valid: {', '.join(GUIDES)}")
    for name, v, low in (("n", n, 1), ("index", index, 0), ("factor", factor, 1), ("steps", steps, 1),
                         ("points", points, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"edit.{name} must be an integer >= {low}, got {v!r}")
    if other is not None and (isinstance(other, bool) or not isinstance(other, int) or other < 0):
        raise ValueError(f"edit.other must be an integer >= 0 or null, got {other!r}")
    t0s = [t0] if isinstance(t0, (int, float)) and not isinstance(t0, bool) else list(t0)
    if not t0s or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 1e-3
                      for t in t0s):
        raise ValueError(f"edit.t0 must be a number or a non-empty list of numbers above eps = 1e-3, got {t0!r}")
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ValueError(f"edit.rtol must be a number in (0, 1), got {rtol!r}")
    return {"mode": mode, "data": data, "index": index, "n": n, "guide": guide, "factor": factor,
            "t0": [float(t) for t in t0s], "sampler": sampler, "steps": steps, "options": dict(options or {}),
            "rtol": float(rtol), "other": other, "points": points}


EditSchema = schema_from_signature("EditSchema", edit_options, None)
ConfigStore.instance().store(group="schema/edit", name="edit", node=EditSchema)


def make_guide(x: torch.Tensor, kind: str, factor: int = 2) -> torch.Tensor:
    """A coarse SDEdit guide from model-space images ``[B, C, H, W]`` (vectors: ``none`` only):
    ``none`` the image itself, ``blur`` ``factor`` x ``factor`` average pooling at full size,
    ``strokes`` each pixel set to the image's max or min by which side of their mid-point it lies."""
    if kind == "none":
        return x
    if x.dim() != 4:
        raise ValueError(f"edit.guide={kind} needs images [C, H, W]; the data have shape {tuple(x.shape[1:])}")
    if kind == "blur":
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"edit.factor={factor} does not divide the image size {tuple(x.shape[2:])}")
        return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, factor), scale_factor=factor,
                                               mode="nearest")
    if kind == "strokes":
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        return torch.where(x > (lo + hi) / 2, hi, lo).expand_as(x).clone()
    raise ValueError(f"unknown edit.guide {kind!r}; valid: {', '.join(GUIDES)}")


def _score(loaded, labels, guidance, n: int):
    """The score to edit with: the checkpoint's, or its classifier-free guided one with labels."""
    import scoresde as sd
    from ._guidance import check_labels, guidance_options

    model = loaded.score_fn
    if labels is None:
        return model, None
    guide = guidance_options(**(guidance or {}))
    if guide["kind"] != "cfg":
        raise ValueError("edit mode takes guidance.kind=cfg (classifier-free guidance of a class-conditional model)")
    y = check_labels(labels, n, int(getattr(model, "num_classes", 0) or 0))
    if y.numel() != n:
        raise ValueError(f"labels: one integer, or a list of edit.n={n} labels (one an image); got {labels!r}")
    dev = next(model.parameters()).device
    return sd.guidance.cfg_model(model, y.to(dev), guide["scale"]), {"labels": y.tolist(), "guidance": guide}


def edit_checkpoint(loaded, options: Dict[str, Any], seed: int = 0, labels=None,
                    guidance: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run the edit ``options`` (:func:`edit_options`) with the score of ``loaded``
    (a :class:`~scoresde.checkpoints.LoadedScore`).  Returns the tensors (data space) and ``info``."""
    import scoresde as sd
    from ._inverse import load_images

    opts = edit_options(**options)
    if opts["mode"] is None:
        raise ValueError("edit.mode is not set: give edit.mode=" + "|".join(MODES))
    score_fn, sde, event_shape, meta = loaded
    if event_shape is None:
        raise ValueError(f"{meta['path']}: the checkpoint records no sample shape; retrain or resave it")
    event_shape = tuple(event_shape)
    scaler = Scaler(**meta["scaler"])
    bad = [t for t in opts["t0"] if t > sde.T]
    if opts["mode"] == "sdedit" and bad:
        raise ValueError(f"edit.t0 must lie in (1e-3, T={sde.T}], got {bad}")
    dev = next(score_fn.parameters()).device if isinstance(score_fn, torch.nn.Module) else torch.device("cpu")
    n = opts["n"]
    images, _ = load_images(opts["data"], meta["data"], event_shape, event_shape, opts["index"], n)
    x = scaler.to_model(images.float()).to(dev)
    n = len(x)
    g = torch.Generator().manual_seed(int(seed))
    info: Dict[str, Any] = {"edit": opts, "n": n, "seed": seed}
    out: Dict[str, Any] = {"images": images}
    if opts["mode"] == "sdedit":
        fn, cond = _score(loaded, labels, guidance, n)
        if cond:
            info.update(cond)
        guides = make_guide(x, opts["guide"], opts["factor"])
        edits, runs = [], []
        for t0 in opts["t0"]:
            steps = max(10, round(opts["steps"] * t0))
            res = sd.edit.sdedit(fn, sde, guides, t0, sampler=opts["sampler"], generator=g, steps=steps,
                                 **opts["options"])
            edits.append(res.x.detach().cpu())
            runs.append({"t0": t0, "steps": steps, "nfe": int(res.nfe), "seconds": round(res.seconds, 4)})
        out["guides"] = scaler.to_data(guides.cpu())
        out["edits"] = scaler.to_data(torch.stack(edits, 1))
        info.update(runs=runs, nfe=sum(r["nfe"] for r in runs))
    elif opts["mode"] == "encode":
        tol = opts["rtol"]
        enc = sd.edit.encode(score_fn, sde, x, rtol=tol, atol=tol)
        dec = sd.edit.decode(score_fn, sde, enc.z, rtol=tol, atol=tol)
        rel = (dec.x - x).reshape(n, -1).norm(dim=1) / x.reshape(n, -1).norm(dim=1)
        out["latents"] = enc.z.detach().cpu()
        out["reconstructions"] = scaler.to_data(dec.x.detach().cpu())
        info.update(nfe_encode=enc.nfe, nfe_decode=dec.nfe, nfe=enc.nfe + dec.nfe,
                    round_trip_rel_error_max=float(rel.max()), round_trip_rel_error_mean=float(rel.mean()),
                    seconds=round(enc.seconds + dec.seconds, 4))
    else:
        other = opts["index"] + n if opts["other"] is None else opts["other"]
        xb, _ = load_images(opts["data"], meta["data"], event_shape, event_shape, other, n)
        if len(xb) != n:
            raise ValueError(f"edit.other={other}: only {len(xb)} images there for the {n} pairs")
        tol = dict(rtol=opts["rtol"], atol=opts["rtol"])
        res = sd.edit.interpolate(score_fn, sde, x, scaler.to_model(xb.float()).to(dev), opts["points"],
                                  encode_options=tol, decode_options=tol)
        out["interpolation"] = scaler.to_data(res.x.detach().cpu())
        info.update(other=other, nfe=int(res.nfe), seconds=round(res.seconds, 4), weights=res.weights.tolist())
    return {**out, "info": info}


def _save_rows(rows: List[torch.Tensor], path: Path, names: List[str], title: str) -> None:
    """Rows of images ``[k, C, H, W]`` in data space [0, 1] as one PNG (column names on top)."""
    from ._inverse import save_inverse_png

    first = torch.stack([r[0] for r in rows])
    rest = torch.stack([r[1:] for r in rows])
    save_inverse_png(first, rest, None, path, title=title, column_titles=names)


def run_edit(cfg, out_dir: Path) -> Dict[str, Any]:
    """The sample app with ``edit.mode`` set: the tensors, edit.png and sample.json in ``out_dir``."""
    from omegaconf import OmegaConf

    from ._common import load_app_score

    options = OmegaConf.to_container(cfg.edit, resolve=True)
    opts = edit_options(**options)   # names checked before the checkpoint loads
    labels = OmegaConf.to_container(cfg.labels) if OmegaConf.is_config(cfg.labels) else cfg.labels
    guidance = OmegaConf.to_container(cfg.guidance, resolve=True)
    loaded = load_app_score(cfg)
    out = edit_checkpoint(loaded, options, cfg.seed, labels, guidance)
    info = {"checkpoint": str(cfg.checkpoint), "step": loaded.meta["step"], "data": loaded.meta["data_name"],
            **out["info"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for key in ("guides", "edits", "latents", "reconstructions", "interpolation"):
        if key in out:
            torch.save(out[key], out_dir / f"{key}.pt")
            files.append(f"{key}.pt")
    images = out["images"]
    if images.dim() == 4:   # images: a PNG grid
        mode = opts["mode"]
        if mode == "sdedit":
            rows = [torch.cat([out["guides"][i:i + 1], out["edits"][i]]) for i in range(len(images))]
            names = ["guide"] + [f"t0={t:g}" for t in opts["t0"]]
        elif mode == "encode":
            rows = [torch.stack([images[i], out["reconstructions"][i]]) for i in range(len(images))]
            names = ["original", "decoded"]
        else:
            rows = list(out["interpolation"])
            names = [f"{w:.2f}" for w in info["weights"]]
        _save_rows(rows, out_dir / "edit.png", names, f"{info['data'] or cfg.checkpoint}: {mode}, NFE {info['nfe']}")
        files.append("edit.png")
    info["files"] = files
    (out_dir / "sample.json").write_text(json.dumps(info, indent=2))
    log.info("edit.mode=%s on %d images (NFE %d) written to %s", opts["mode"], info["n"], info["nfe"], out_dir)
    return info
