"""The one rule that turns a device name into a ``torch.device``."""

from __future__ import annotations

import operator

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None


# -- the one rule for where work runs, which SDE and what shape (issue 29.6) -------------------------
def _module_device(obj):
    """The device of the first parameter (else buffer) of ``obj`` or of a module it wraps
    (``.net``, ``.model``, ``.score_fn``, ``.unet`` a level or two down), else None."""
    seen = set()
    todo = [obj]
    while todo:
        o = todo.pop(0)
        if o is None or id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, torch.nn.Module):
            for p in o.parameters():
                return p.device
            for b in o.buffers():
                return b.device
        if len(seen) < 8:
            todo += [getattr(o, name, None) for name in ("net", "model", "score_fn", "unet")]
    return None


def device_of(score_fn=None, *tensors, generator=None) -> torch.device:
    """Where a run lives: the score's device when it is (or wraps) a module with parameters, else
    the first given tensor's, else the generator's, else the CPU.

    The generator only decides the device when nothing else does: a CPU generator with a CUDA
    model draws its noise on the CPU and moves it (the same numbers on every device), a CUDA
    generator draws on the GPU (faster, but the numbers depend on the device).
    """
    dev = _module_device(score_fn)
    if dev is not None:
        return dev
    for t in tensors:
        if torch.is_tensor(t):
            return t.device
    if generator is not None:
        return torch.device(generator.device)
    return torch.device("cpu")


def sde_of(score_fn, sde=None, where: str = "sample"):
    """The SDE to use: ``sde`` if given, else ``score_fn.sde``; a score that carries another SDE
    than the one given warns naming both (the run uses the given one)."""
    import warnings

    from .sde import SDE

    carried = getattr(score_fn, "sde", None)
    if sde is not None and not isinstance(sde, SDE):
        raise TypeError(f"{where}: sde must be a scoresde SDE or None, got {type(sde).__name__}"
                        + (" (to give only the shape, pass it by keyword: shape=...)"
                           if isinstance(sde, (tuple, list, int)) else ""))
    if sde is None:
        if carried is None:
            raise ValueError(f"{where}: sde is required for a score function that carries no .sde")
        return carried
    if carried is not None and carried is not sde and repr(carried) != repr(sde):
        warnings.warn(f"{where}: the sde given ({sde!r}) differs from the score's own ({carried!r}); "
                      "using the one given", stacklevel=3)
    return sde


def data_shape_of(score_fn):
    """The shape of one sample that ``score_fn`` carries (``.data_shape``, or a ScoreModel's spec), or None."""
    shp = getattr(score_fn, "data_shape", None)
    if shp is None:
        spec = getattr(score_fn, "spec", None)
        if isinstance(spec, dict):
            shp = (spec.get("model") or {}).get("data_shape")
    return tuple(int(s) for s in shp) if shp is not None else None


def batch_shape(shape, score_fn=None, name: str = "shape") -> tuple:
    """``shape`` as ``(B, *data_shape)``: a sequence of positive ints, or a batch size alone for a
    score that carries its ``data_shape``; anything else is a ValueError saying what it must be."""
    if isinstance(shape, bool):
        raise TypeError(f"{name} must be [B, ...] (a sequence of positive ints) or a batch size, got a bool")
    if isinstance(shape, int) or (torch.is_tensor(shape) and shape.dim() == 0):
        ds = data_shape_of(score_fn)
        if ds is None:
            raise ValueError(f"{name}={int(shape)} is a batch size, but the score carries no data_shape: "
                             f"give {name} as [B, *data_shape], e.g. ({int(shape)}, 2)")
        shape = (int(shape),) + ds
    try:
        out = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be [B, ...] (a sequence of positive ints) or a batch size, "
                        f"got {type(shape).__name__}") from None
    if any(isinstance(s, bool) or not hasattr(s, "__index__") for s in out):
        raise TypeError(f"{name} must hold integers, got {out}")
    out = tuple(operator.index(s) for s in out)
    if len(out) < 1 or min(out) < 1:
        raise ValueError(f"{name} must be [B, ...] with positive sizes, got {out}")
    return out
