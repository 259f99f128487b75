"""The sample app's inverse problems: inpainting, super-resolution, colorization of given images.

    python -m scoresde sample checkpoint=... inverse.op=mask inverse.mask=lower_half inverse.n=8
    python -m scoresde sample checkpoint=... inverse.op=downsample inverse.factor=2 inverse.method=pigdm
    python -m scoresde sample checkpoint=... inverse.op=mask inverse.mask=center inverse.data=digit.png

``inverse.op`` set (``mask``, ``downsample``, ``grayscale``, ``matrix``) turns the sample app into a
posterior sampler: each of ``n`` images x (data space) is observed as y = A x + noise_std e
(e ~ N(0, I), noise drawn from the app's seed) and ``samples`` draws of p(x | y) come from
:func:`scoresde.sample_posterior` with the checkpoint's unconditional score.  The node's options
and defaults are :func:`inverse_options` (the schema of ``conf/inverse/``).

Model space.  The score lives in model space x_m = (x - shift) * scale (the data set's
:class:`~scoresde.data.Scaler`); since A is linear, y_m = scale (y - A (shift 1)) = A x_m +
|scale| noise_std e, so the operator gets noise std |scale| noise_std there.

Writes ``samples.pt`` (``[n, samples, *event_shape]`` in data space), ``observation.pt`` (y in
data space, ``[n, *obs_shape]``), ``inverse.png`` (one row an image: the observation A^+ y, missing
pixels of a mask in red, | the samples | the original) and ``sample.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from hydra.core.config_store import ConfigStore

from ..data import DATASETS, Scaler, build_dataset
from ..data.images import _pil_to_levels
from .schema import schema_from_signature

log = logging.getLogger("scoresde")

__all__ = ["inverse_options", "named_mask", "build_operator", "load_images", "inverse_checkpoint",
           "save_inverse_png", "run_inverse", "OPS", "MASKS"]

OPS = ("mask", "downsample", "grayscale", "matrix")
MASKS = ("lower_half", "upper_half", "left_half", "right_half", "center", "random")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
TENSOR_SUFFIXES = (".pt", ".pth", ".npy")


def inverse_options(op: Optional[str] = None, method: str = "smc", data: Optional[str] = None, n: int = 8,
                    index: int = 0, samples: int = 4, mask: str = "lower_half", fraction: float = 0.5,
                    factor: int = 2, weights: str = "mean", matrix: Optional[str] = None,
                    noise_std: float = 0.0, steps: int = 200, particles: Optional[int] = None,
                    sampler: Optional[str] = None, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The ``inverse`` node of the sample app (its schema is this signature); returns the checked options.

    ``op``: None (plain sampling) or one of :data:`OPS`: ``mask`` (:class:`scoresde.inverse.operators.Mask`,
    inpainting), ``downsample`` (:class:`~scoresde.inverse.operators.Downsample` by ``factor``, average pooling:
    super-resolution), ``grayscale`` (:class:`~scoresde.inverse.operators.Grayscale` with ``weights`` ``mean`` or
    ``luminance``: colorization) or ``matrix`` (:class:`~scoresde.inverse.operators.Matrix` from the ``[m, D]``
    tensor file ``matrix``, .pt or .npy).
    ``mask``: the region to fill in, by name (:data:`MASKS`; ``center`` the central square of half
    the side, ``random`` each pixel observed with probability ``fraction``, drawn from the seed), or
    a file (.pt, .npy or an image) of the image's ``[H, W]`` or ``[C, H, W]`` shape holding
    1 / True where the pixel is OBSERVED (as :class:`scoresde.inverse.operators.Mask`).
    ``method``: one of :data:`scoresde.inverse.METHODS`; ``steps`` its steps (the loop methods'
    ``steps``, the sampler's for the score wrappers projection / dps / pigdm, whose ``sampler``
    defaults to ``pc``); ``options`` more keyword options of :func:`scoresde.sample_posterior`
    (e.g. ``{scale: 0.5}`` for dps).  ``particles`` (smc): each draw is one particle of its own
    cloud of ``particles`` (independent draws); null: the ``samples`` draws of an image are the
    particles of one cloud (resampled, so they can repeat).
    ``data``: the images observed: null (the checkpoint's data set, held-out split), a built-in
    data set name (:data:`scoresde.data.DATASETS`, held-out split), an image file (pixel / 255 =
    data value; resized to the model's size), or a .pt / .npy tensor ``[N, *event_shape]`` or
    ``[*event_shape]`` in data space.  A tensor of the observation's shape (e.g. low-resolution
    images for ``downsample``) is taken as y itself (no original).  Images ``index`` to
    ``index + n``; ``noise_std``: the observation noise std in data space.
    """
    from ..inverse import METHODS

    if op is not None and op not in OPS:
        raise ValueError(f"unknown inverse.op {op!r}; valid: {', '.join(OPS)}")
    if method not in METHODS:
        raise ValueError(f"unknown inverse.method {method!r}; valid: {', '.join(METHODS)}")
    for name, v, low in (("n", n, 1), ("samples", samples, 1), ("steps", steps, 1), ("index", index, 0),
                         ("factor", factor, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"inverse.{name} must be an integer >= {low}, got {v!r}")
    if particles is not None and (isinstance(particles, bool) or not isinstance(particles, int) or particles < 1):
        raise ValueError(f"inverse.particles must be a positive integer or null, got {particles!r}")
    if particles is not None and method != "smc":
        raise ValueError(f"inverse.particles is an option of inverse.method=smc, not {method!r}")
    if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"inverse.noise_std must be a finite number >= 0, got {noise_std!r}")
    if not 0 < float(fraction) <= 1:
        raise ValueError(f"inverse.fraction must lie in (0, 1], got {fraction!r}")
    if op == "matrix" and not matrix:
        raise ValueError("inverse.op=matrix needs inverse.matrix=FILE (a [m, D] tensor, .pt or .npy)")
    return {"op": op, "method": method, "data": data, "n": n, "index": index, "samples": samples, "mask": mask,
            "fraction": float(fraction), "factor": factor, "weights": weights, "matrix": matrix,
            "noise_std": float(noise_std), "steps": steps, "particles": particles, "sampler": sampler,
            "options": dict(options or {})}


InverseSchema = schema_from_signature("InverseSchema", inverse_options, None)
ConfigStore.instance().store(group="schema/inverse", name="inverse", node=InverseSchema)


# -- inputs -------------------------------------------------------------------------------------
def _existing(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return p


def _read_tensor(path: str, what: str) -> torch.Tensor:
    """A tensor from a .pt / .npy file, or an image file as ``[C, H, W]`` in [0, 1]."""
    p = _existing(path, what)
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth"):
        t = torch.load(p, map_location="cpu", weights_only=True)
        if not torch.is_tensor(t):
            raise ValueError(f"{what} file {path} must hold a tensor, got {type(t).__name__}")
        return t
    if suffix == ".npy":
        import numpy as np
        return torch.from_numpy(np.load(p))
    if suffix in IMAGE_SUFFIXES:
        return _read_image(p)
    raise ValueError(f"{what} file {path}: unknown suffix {suffix!r}; valid: {', '.join(TENSOR_SUFFIXES + IMAGE_SUFFIXES)}")


def _read_image(p: Path, channels: Optional[int] = None, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """An image file as ``[C, H, W]`` in [0, 1]: ``channels`` 1 or 3 (default: grayscale stays
    grayscale, anything else RGB), box-resized to ``size`` (H, W) if given."""
    from PIL import Image

    with Image.open(p) as img:
        if size is not None and img.size != (size[1], size[0]):
            log.info("%s: resized from %dx%d to %dx%d", p, img.size[0], img.size[1], size[1], size[0])
        c = channels if channels is not None else (1 if img.mode == "L" else 3)
        return _pil_to_levels(img, size, c, Image.BOX).float() / 255.0


def load_images(data: Optional[str], data_config: Optional[Dict[str, Any]], event_shape: Tuple[int, ...],
                obs_shape: Tuple[int, ...], index: int = 0, n: int = 8) -> Tuple[torch.Tensor, bool]:
    """``(images [n', ...] in data space, is_observation)``: the originals (event shape) or, for a
    tensor of ``obs_shape`` (and not the event shape), the observations themselves."""
    if data is None or data in DATASETS:
        cfg = dict(data_config or {})
        name = cfg.pop("name", None) if data is None or data == cfg.get("name") else data
        if data is not None and data != name:
            cfg = {}
        if name is None:
            raise ValueError("the checkpoint records no data set: give inverse.data=NAME (one of "
                             f"{', '.join(sorted(DATASETS))}) or a file")
        ds = build_dataset(name, **{k: v for k, v in cfg.items() if k != "name"})
        x = ds.scaler.to_data(ds.test)
        if tuple(x.shape[1:]) != tuple(event_shape):
            raise ValueError(f"data set {name!r} has images of shape {tuple(x.shape[1:])}, the model "
                             f"{tuple(event_shape)}")
        src = f"data set {name!r} (held-out)"
        is_obs = False
    else:
        p = _existing(data, "inverse.data")
        if p.suffix.lower() in IMAGE_SUFFIXES:
            if len(event_shape) != 3:
                raise ValueError(f"inverse.data={data} is an image, but the model's data are vectors {tuple(event_shape)}")
            x = _read_image(p, event_shape[0], tuple(event_shape[1:]))[None]
            is_obs = False
        else:
            x = _read_tensor(data, "inverse.data").float()
            for shape, obs in ((tuple(event_shape), False), (tuple(obs_shape), True)):
                if tuple(x.shape) == shape:
                    x = x[None]
                if tuple(x.shape[1:]) == shape:
                    is_obs = obs
                    break
            else:
                raise ValueError(f"inverse.data={data} holds a tensor of shape {tuple(x.shape)}; expected "
                                 f"[N, *{tuple(event_shape)}] (images) or [N, *{tuple(obs_shape)}] (observations)")
        src = str(data)
    if index >= len(x):
        raise ValueError(f"inverse.index={index}, but {src} holds only {len(x)} images")
    return x[index:index + n], is_obs


def named_mask(name: str, event_shape: Tuple[int, ...], fraction: float = 0.5,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The boolean mask (True = observed) of event shape ``[C, H, W]`` whose hole is ``name``
    (:data:`MASKS`): a half, the central square of half the side, or ``random`` (each pixel
    observed with probability ``fraction``, the same for all channels)."""
    if len(event_shape) != 3:
        raise ValueError(f"named masks are for images [C, H, W]; the data have shape {tuple(event_shape)} "
                         "(give inverse.mask=FILE)")
    C, H, W = event_shape
    keep = torch.ones(H, W, dtype=torch.bool)
    if name == "lower_half":
        keep[H // 2:] = False
    elif name == "upper_half":
        keep[:(H + 1) // 2] = False
    elif name == "left_half":
        keep[:, :(W + 1) // 2] = False
    elif name == "right_half":
        keep[:, W // 2:] = False
    elif name == "center":
        h, w = max(H // 2, 1), max(W // 2, 1)
        keep[(H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w] = False
    elif name == "random":
        keep = torch.rand(H, W, generator=generator) < fraction
        if not keep.any():
            keep.view(-1)[0] = True
    else:
        raise ValueError(f"unknown inverse.mask {name!r}; valid names: {', '.join(MASKS)}, or a file")
    return keep.expand(C, H, W).clone()


def _mask(spec: str, event_shape: Tuple[int, ...], fraction: float, generator) -> torch.Tensor:
    if spec in MASKS or not Path(spec).expanduser().suffix:
        return named_mask(spec, event_shape, fraction, generator)
    m = _read_tensor(spec, "inverse.mask")
    given = tuple(m.shape)
    if m.dim() == 3 and len(event_shape) == 3 and m.shape[0] != event_shape[0] and tuple(m.shape[1:]) == tuple(event_shape[1:]):
        m = m[:1]   # an RGB image mask on a gray model: one channel
    if len(event_shape) == 3 and m.dim() == 2:
        m = m[None]
    if len(event_shape) == 3 and m.dim() == 3 and m.shape[0] == 1:
        m = m.expand(event_shape[0], *m.shape[1:])
    if tuple(m.shape) != tuple(event_shape):
        raise ValueError(f"inverse.mask={spec} has shape {given}; the data's is {tuple(event_shape)} "
                         f"(or [H, W] for images)")
    if m.is_floating_point() and not bool(((m == 0) | (m == 1)).all()):
        m = m > 0.5   # an image file's 0 / 255 levels, read as [0, 1]
    return m.bool()


def build_operator(opts: Dict[str, Any], event_shape: Tuple[int, ...], noise_std: float = 0.0,
                   generator: Optional[torch.Generator] = None):
    """The :mod:`scoresde.inverse.operators` operator of the checked ``opts`` on data of ``event_shape``; a
    ValueError names the problem when it does not fit that shape."""
    from .. import ops

    name = opts["op"]
    if name == "mask":
        op = ops.Mask(_mask(opts["mask"], event_shape, opts["fraction"], generator), noise_std=noise_std)
    elif name == "downsample":
        if len(event_shape) != 3:
            raise ValueError(f"inverse.op=downsample needs images [C, H, W], the data have shape {tuple(event_shape)}")
        f = opts["factor"]
        if event_shape[1] % f or event_shape[2] % f:
            raise ValueError(f"inverse.factor={f} does not divide the image size {tuple(event_shape[1:])}")
        op = ops.Downsample(f, noise_std=noise_std)
    elif name == "grayscale":
        if len(event_shape) != 3 or event_shape[0] != 3:
            raise ValueError(f"inverse.op=grayscale needs RGB images [3, H, W], the data have shape {tuple(event_shape)}")
        op = ops.Grayscale(opts["weights"], noise_std=noise_std)
    elif name == "matrix":
        A = _read_tensor(opts["matrix"], "inverse.matrix")
        D = math.prod(event_shape)
        if A.dim() != 2 or A.shape[1] != D:
            raise ValueError(f"inverse.matrix={opts['matrix']} has shape {tuple(A.shape)}; it must be [m, {D}] "
                             f"for data of shape {tuple(event_shape)}")
        op = ops.Matrix(A, noise_std=noise_std, event_shape=event_shape)
    else:
        raise ValueError(f"unknown inverse.op {name!r}; valid: {', '.join(OPS)}")
    return op


# -- the posterior draw ----------------------------------------------------------------------------
def _method_options(opts: Dict[str, Any], k: int) -> Tuple[Optional[str], Dict[str, Any], int]:
    """(sampler, options of sample_posterior, particles per draw)."""
    from ..inverse import WRAPPERS

    method = opts["method"]
    extra = dict(opts["options"])
    sampler = opts["sampler"]
    if method in WRAPPERS:
        sampler = sampler or "pc"
        if sampler == "pc":
            extra.setdefault("predictor", "reverse_diffusion")
    elif sampler is not None and not (method == "replacement" and sampler == "pc"):
        raise ValueError(f"inverse.method={method} runs its own loop: inverse.sampler must be null, got {sampler!r}")
    extra.setdefault("steps", opts["steps"])
    per = 1
    if method == "smc":
        if opts["particles"] is not None:
            per = opts["particles"]
            extra["particles"] = per
        else:
            extra["particles"] = k
    return sampler, extra, per


def inverse_checkpoint(loaded, options: Dict[str, Any], seed: int = 0, progress: bool = False) -> Dict[str, Any]:
    """Posterior samples for the inverse problem ``options`` (:func:`inverse_options`) with the
    score of ``loaded`` (a :class:`~scoresde.checkpoints.LoadedScore`).

    Returns a dict: ``samples [n, k, *event_shape]``, ``observation`` (y, data space),
    ``shown`` (A^+ y in data space, the observation as an image), ``original`` (None when the
    file held observations), ``observed`` (the mask's True = observed entries, or None) and ``info``.
    """
    import scoresde as sd

    opts = inverse_options(**options)
    if opts["op"] is None:
        raise ValueError("inverse.op is not set: give inverse.op=" + "|".join(OPS))
    score_fn, sde, event_shape, meta = loaded
    if event_shape is None:
        raise ValueError(f"{meta['path']}: the checkpoint records no sample shape; retrain or resave it")
    event_shape = tuple(event_shape)
    scaler = Scaler(**meta["scaler"])
    g = torch.Generator().manual_seed(int(seed))
    op = build_operator(opts, event_shape, abs(scaler.scale) * opts["noise_std"], g)
    try:
        obs_shape = tuple(op.forward(torch.zeros((1,) + event_shape)).shape[1:])
    except ValueError as e:
        raise ValueError(f"inverse.op={opts['op']} does not fit data of shape {event_shape}: {e}") from e
    images, is_obs = load_images(opts["data"], meta["data"], event_shape, obs_shape, opts["index"], opts["n"])
    n, k = len(images), opts["samples"]
    offset = op.forward(torch.full((1,) + event_shape, float(scaler.shift)))      # A (shift 1)
    if is_obs:
        y_data, original = images, None
    else:
        original = images
        y_data = op.forward(images)
        if opts["noise_std"] > 0:
            y_data = y_data + opts["noise_std"] * torch.randn(y_data.shape, generator=g)
    y_model = (y_data - offset) * scaler.scale
    sampler, extra, per = _method_options(opts, k)
    dev = next(score_fn.parameters()).device if isinstance(score_fn, torch.nn.Module) else torch.device("cpu")
    y_rep = y_model.repeat_interleave(k * per, dim=0)
    t0 = time.perf_counter()
    res = sd.sample_posterior(score_fn, sde, op, y_rep.to(dev), method=opts["method"], sampler=sampler,
                              generator=g, progress=progress, **extra)
    wall = time.perf_counter() - t0
    x = res.x.detach().cpu().reshape((n, k, per) + event_shape)[:, :, 0]
    samples = scaler.to_data(x)
    shown = scaler.to_data(op.pinv(y_model))
    observed = getattr(op, "mask", None)
    info = {"inverse": {k_: v for k_, v in opts.items()}, "operator": repr(op), "method": res.method,
            "sampler": res.sampler, "options": {k_: v for k_, v in res.options.items()
                                                if isinstance(v, (int, float, str, bool, type(None)))},
            "n": n, "samples_per_image": k, "particles_per_draw": per, "batch": int(y_rep.shape[0]),
            "nfe": int(res.nfe), "backward_passes": int(res.backward_passes), "seconds": round(res.seconds, 4),
            "wall_seconds": round(wall, 4), "seed": seed, "observation_shape": list(obs_shape),
            "original_given": original is not None, "nonfinite": int(res.nonfinite)}
    if observed is not None:
        info["observed_fraction"] = float(observed.float().mean())
    return {"samples": samples, "observation": y_data, "shown": shown, "original": original,
            "observed": observed, "info": info}


def _tile(img: torch.Tensor, observed: Optional[torch.Tensor]) -> torch.Tensor:
    """``[C, H, W]`` in [0, 1] -> ``[H, W, 3]``; pixels outside ``observed`` tinted red."""
    img = img.detach().float().clamp(0, 1)
    rgb = img.expand(3, *img.shape[1:]).clone() if img.shape[0] == 1 else img[:3].clone()
    if observed is not None:
        miss = ~observed.bool().all(0)
        rgb[0][miss], rgb[1][miss], rgb[2][miss] = 0.55, 0.15, 0.15
    return rgb.permute(1, 2, 0)


def save_inverse_png(shown: torch.Tensor, samples: torch.Tensor, original: Optional[torch.Tensor], path,
                     observed: Optional[torch.Tensor] = None, title: str = "",
                     column_titles: Optional[List[str]] = None) -> Path:
    """One row an image: the observation ``shown [n, C, H, W]`` | ``samples [n, k, C, H, W]`` |
    ``original [n, C, H, W]`` (omitted when None), in data space [0, 1], one pixel of gap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, k = samples.shape[:2]
    C, H, W = samples.shape[2:]
    cols = [[_tile(shown[i], observed)] + [_tile(samples[i, j], None) for j in range(k)]
            + ([_tile(original[i], None)] if original is not None else []) for i in range(n)]
    ncol = len(cols[0])
    gap = 1 + max(H, W) // 8
    grid = torch.ones((n * (H + gap) + gap, ncol * (W + gap) + 2 * gap + gap, 3))
    xs = []
    for c in range(ncol):
        # an extra gap after the observation and before the original separates the three parts
        x0 = gap + c * (W + gap) + (gap if c >= 1 else 0) + (gap if original is not None and c == ncol - 1 else 0)
        xs.append(x0)
        for r in range(n):
            y0 = gap + r * (H + gap)
            grid[y0:y0 + H, x0:x0 + W] = cols[r][c]
    scale = max(0.25, 4.0 / max(H, W))
    fig, ax = plt.subplots(figsize=(max(3.0, grid.shape[1] * scale / 8), max(2.0, grid.shape[0] * scale / 8 + 0.6)))
    ax.imshow(grid.numpy(), interpolation="nearest")
    names = column_titles or (["observed"] + [f"sample {j + 1}" for j in range(k)] + (["original"] if original is not None else []))
    for x0, name in zip(xs, names):
        ax.text(x0 + W / 2, -1, name, ha="center", va="bottom", fontsize=7, rotation=45 if len(names) > 8 else 0)
    ax.set_title(title, fontsize=9, pad=18)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_inverse(cfg, out_dir: Path) -> Dict[str, Any]:
    """The sample app with ``inverse.op`` set: samples.pt, observation.pt, inverse.png, sample.json."""
    from omegaconf import OmegaConf

    from ._common import load_app_score

    options = OmegaConf.to_container(cfg.inverse, resolve=True)
    inverse_options(**options)   # names checked before the checkpoint loads
    loaded = load_app_score(cfg)
    out = inverse_checkpoint(loaded, options, cfg.seed, cfg.progress)
    info = {"checkpoint": str(cfg.checkpoint), "step": loaded.meta["step"], "data": loaded.meta["data_name"],
            **out["info"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(out["samples"], out_dir / "samples.pt")
    torch.save(out["observation"], out_dir / "observation.pt")
    o = info["inverse"]
    what = {"mask": f"mask {o['mask']}", "downsample": f"downsample x{o['factor']}",
            "grayscale": f"grayscale ({o['weights']})", "matrix": "matrix"}[o["op"]]
    title = (f"{info['data'] or cfg.checkpoint}: {what}, noise {o['noise_std']:g}; {info['method']}, "
             f"NFE {info['nfe']}")
    if out["samples"].dim() == 5:   # images [n, k, C, H, W]
        save_inverse_png(out["shown"], out["samples"], out["original"], out_dir / "inverse.png",
                         observed=out["observed"], title=title)
        info["files"] = ["samples.pt", "observation.pt", "inverse.png"]
    else:
        info["files"] = ["samples.pt", "observation.pt"]   # vectors: no image to draw
    (out_dir / "sample.json").write_text(json.dumps(info, indent=2))
    log.info("%d x %d posterior samples (%s, NFE %d, %.2f s) written to %s", info["n"], info["samples_per_image"],
             info["method"], info["nfe"], info["seconds"], out_dir)
    return info
