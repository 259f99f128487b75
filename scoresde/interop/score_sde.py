"""score_sde_pytorch (Song et al., ICLR 2021): its checkpoints in, ours out.

Reference: https://github.com/yang-song/score_sde_pytorch at commit
cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44.  Its networks are :class:`scoresde.nn.NCSNpp`
(NCSN++ / DDPM++) and :class:`scoresde.nn.DDPM` here, with its state_dict layout.

**Configs.**  A config is the reference's ``ml_collections`` config as a nested dict (what
``config.to_dict()`` gives).  Every continuous config of the reference whose network scoresde
builds ships with the package (``score_sde_configs/``, written from the reference's own config
modules by ``tests/data/score_sde/make_fixtures.py``), by name:
``"vp/cifar10_ddpmpp_continuous"``, ``"subvp/cifar10_ddpmpp_deep_continuous"``,
``"ve/cifar10_ncsnpp_deep_continuous"``, ``"ve/celebahq_256_ncsnpp_continuous"``, ... (list:
:func:`score_sde_configs`).  A dict, a ``ConfigDict``, or a JSON / YAML file of the dict works too, so
a user's own variant loads.  Discrete-time configs are refused: their networks take integer steps.

**The score, in the reference's model space** (``models/utils.get_score_fn(sde, model,
continuous=True)``): VP and sub-VP networks are fed the label 999 t and predict the noise, score
= ``-net / std(t)`` (sub-VP: std = 1 - exp(-int beta), no square root); VE networks are fed
sigma(t), divide by it inside (``scale_by_sigma``) and output the score itself.  The model space
is [-1, 1] for centered configs (all VP / sub-VP ones) and [0, 1] for the others (all VE ones;
the network maps x to 2 x - 1 inside).  The loaded model says so: ``.data_range`` ((-1, 1) or
(0, 1), as :func:`scoresde.bits_per_dim` takes it) and ``.scaler`` (``{"shift", "scale"}``, pixel
intensity in [0, 1] to model space: ``(x - shift) * scale``, as :func:`scoresde.checkpoints.load_score`
reports for every format).  VE's sigma is computed as the reference computes it,
``sigma_min (sigma_max / sigma_min)^t``: the Fourier features reach arguments of ~10^3, where
one ulp of sigma moves the output by ~1e-5.  Our float32 std is accurate where the reference's
``1 - exp(.)`` is not (0.6% at t = 1e-5 for VP, 1.2% for sub-VP); elsewhere the two agree to ~1e-6
(``tests/test_interop_score_sde.py``).

**Loading is strict.**  A missing file, an unreadable or truncated one, a missing or unexpected
key, a tensor of the wrong shape, an EMA list of the wrong length or shape: each is an error that
names it (never a half-random model; the reference loads with ``strict=False`` and zips the EMA
list, so a mismatch there passes silently).  EMA weights by default: the reference's EMA is a
positional list over the trainable parameters in registration order, so the frozen Fourier ``W``
comes from ``'model'``.  Files are read with ``torch.load(weights_only=True)`` and exactly the
numpy globals its optimizer state needs (after a training step its learning rate is a
``numpy.float64``): ``numpy.dtype``, ``numpy.dtypes.Float64DType`` and the scalar constructor
``numpy.core.multiarray.scalar`` (``numpy._core`` under numpy 2).

**Ours out.**  :func:`to_score_sde` writes a model built here (an NCSN++ / DDPM network of the
config's shape) as the reference's ``utils.save_checkpoint`` does, so its ``restore_checkpoint``
and our :func:`from_score_sde` read it; it reloads bit-identically.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..nn.ddpm import DDPM
from ..nn.ncsnpp import NCSNpp
from ..score import ScoreModel
from ..sde import SDE, SubVPSDE, VESDE, VPSDE

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

__all__ = ["from_score_sde", "to_score_sde", "score_sde_network", "score_sde_sde", "load_score_sde_config",
           "score_sde_configs", "ScoreSdeModel", "ScoreSdeCheckpointError", "SCORE_SDE_COMMIT"]

SCORE_SDE_COMMIT = "cb1f359f4aadf0ff9a5e122fe8fffc9451fd6e44"
_CONFIG_DIR = Path(__file__).with_name("score_sde_configs")
_PREFIX = "module."          # the reference wraps its model in DataParallel

# The reference config's model fields each network reads (``fourier_scale`` only for the Fourier
# embedding); the data fields come from ``config.data``.
_NCSNPP_FIELDS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv",
                  "conditional", "fir", "fir_kernel", "skip_rescale", "resblock_type", "progressive",
                  "progressive_input", "progressive_combine", "embedding_type", "init_scale", "scale_by_sigma",
                  "nonlinearity", "sigma_min", "sigma_max", "num_scales")
_DDPM_FIELDS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv",
                "conditional", "scale_by_sigma", "nonlinearity", "sigma_min", "sigma_max", "num_scales")
_SDE_NAMES = {"vpsde": "vp", "subvpsde": "subvp", "vesde": "ve"}


class ScoreSdeCheckpointError(ValueError):
    """A score_sde_pytorch checkpoint that exists but does not match its config or cannot be read."""


def _numpy_globals() -> list:
    """Exactly what the reference's Adam state needs beyond tensors: numpy scalars and their dtype."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed = [np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None and hasattr(dtypes, "Float64DType"):
        allowed.append(dtypes.Float64DType)
    return allowed


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def score_sde_configs() -> List[str]:
    """The names of the reference configs that ship with scoresde (``"vp/cifar10_ddpmpp_continuous"``, ...)."""
    return sorted(p.relative_to(_CONFIG_DIR).with_suffix("").as_posix() for p in _CONFIG_DIR.rglob("*.json"))


def _read_config_file(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"score_sde config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml   # PyYAML, installed with hydra-core; only needed for YAML configs
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ValueError(f"cannot parse score_sde config {path}: {type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"score_sde config {path} must hold a mapping (the config's to_dict()), "
                         f"got {type(data).__name__}")
    return data


def _field(cfg: Mapping, section: str, key: str):
    try:
        return cfg[section][key]
    except (KeyError, TypeError):
        raise ValueError(f"score_sde config lacks config.{section}.{key}") from None


def load_score_sde_config(config) -> Dict[str, Any]:
    """The config as a nested dict, checked: a shipped name, a dict or ``ConfigDict``, or a JSON / YAML file.

    Errors: an unknown name (listing the shipped ones), a missing file, a missing field (named as
    ``config.model.nf``), a discrete-time config, a network other than NCSN++ / DDPM.
    """
    if isinstance(config, Mapping):
        cfg = copy.deepcopy(dict(config))
    elif hasattr(config, "to_dict"):
        cfg = copy.deepcopy(config.to_dict())
    elif isinstance(config, (str, os.PathLike)):
        name = str(config)
        shipped = _CONFIG_DIR / (name + ".json")
        if not name.endswith((".json", ".yaml", ".yml")) and shipped.is_file():
            cfg = _read_config_file(shipped)
        elif name.endswith((".json", ".yaml", ".yml")) or os.sep in name and Path(name).exists():
            cfg = _read_config_file(Path(name).expanduser())
        else:
            raise ValueError(f"unknown score_sde config {name!r}: not a shipped name nor a .json / .yaml file; "
                             f"shipped: {score_sde_configs()}")
    else:
        raise TypeError(f"config must be a name, a dict or a JSON / YAML path, got {type(config).__name__}")
    for section in ("model", "data", "training"):
        if not isinstance(cfg.get(section), Mapping):
            raise ValueError(f"score_sde config lacks the section config.{section}")
    name = _field(cfg, "model", "name")
    if name not in ("ncsnpp", "ddpm"):
        raise ValueError(f"config.model.name={name!r}: scoresde builds 'ncsnpp' (NCSN++ / DDPM++) and 'ddpm'")
    if not _field(cfg, "training", "continuous"):
        raise ValueError("config.training.continuous is False: discrete-time networks take integer steps "
                         "(and VE ones a reversed time); only continuous configs are supported")
    sde = str(_field(cfg, "training", "sde")).lower()
    if sde not in _SDE_NAMES:
        raise ValueError(f"config.training.sde={sde!r}; valid: {sorted(_SDE_NAMES)}")
    for key in ("image_size", "num_channels", "centered"):
        _field(cfg, "data", key)
    fields = _NCSNPP_FIELDS if name == "ncsnpp" else _DDPM_FIELDS
    for key in fields + (("beta_min", "beta_max") if sde != "vesde" else ()):
        _field(cfg, "model", key)
    if name == "ncsnpp" and str(cfg["model"]["embedding_type"]).lower() == "fourier":
        _field(cfg, "model", "fourier_scale")
    return cfg


def _time_scale(cfg: Mapping) -> float:
    """The label the reference's network is fed is ``time_scale * c``: 999 t for VP / sub-VP (c = t),
    sigma for VE (c = sigma)."""
    return 1.0 if str(cfg["training"]["sde"]).lower() == "vesde" else 999.0


def _network_kwargs(cfg: Mapping) -> Dict[str, Any]:
    m, d = cfg["model"], cfg["data"]
    name = m["name"]
    fields = _NCSNPP_FIELDS if name == "ncsnpp" else _DDPM_FIELDS
    kw = {k: m[k] for k in fields}
    if name == "ncsnpp" and str(m["embedding_type"]).lower() == "fourier":
        kw["fourier_scale"] = m["fourier_scale"]
    if name == "ddpm":
        if kw.pop("scale_by_sigma"):
            raise ValueError("config.model.scale_by_sigma=True with model 'ddpm' looks sigma up by a discrete "
                             "index in the reference; it is not supported")
    for key in ("ch_mult", "attn_resolutions", "fir_kernel"):
        if key in kw:
            kw[key] = list(kw[key])
    kw.update(image_size=int(d["image_size"]), num_channels=int(d["num_channels"]), centered=bool(d["centered"]),
              time_scale=_time_scale(cfg))
    return kw


def score_sde_network(config) -> nn.Module:
    """The config's network (:class:`~scoresde.nn.NCSNpp` or :class:`~scoresde.nn.DDPM`), freshly initialised.

    Its forward is ``net(x, c)`` with c = t (VP / sub-VP) or sigma(t) (VE); the network's label
    ``time_scale * c`` is the reference's (999 t, sigma).
    """
    cfg = load_score_sde_config(config)
    kw = _network_kwargs(cfg)
    return NCSNpp(**kw) if cfg["model"]["name"] == "ncsnpp" else DDPM(**kw)


def score_sde_sde(config) -> SDE:
    """The config's SDE: ``VPSDE`` / ``SubVPSDE(beta_min, beta_max)`` or ``VESDE(sigma_min, sigma_max)``."""
    cfg = load_score_sde_config(config)
    m = cfg["model"]
    kind = str(cfg["training"]["sde"]).lower()
    if kind == "vesde":
        return VESDE(sigma_min=float(m["sigma_min"]), sigma_max=float(m["sigma_max"]))
    return (VPSDE if kind == "vpsde" else SubVPSDE)(beta_min=float(m["beta_min"]), beta_max=float(m["beta_max"]))


# ---------------------------------------------------------------------------------------------
# the score model
# ---------------------------------------------------------------------------------------------
class ScoreSdeModel(ScoreModel):
    """A :class:`~scoresde.score.ScoreModel` over a score_sde_pytorch network, in the reference's model space.

    ``.sde``, ``.config`` (the reference config dict), ``.step`` (the checkpoint's, when loaded),
    ``.data_range`` ((-1, 1) centered, (0, 1) not), ``.scaler`` (``{"shift", "scale"}``: [0, 1]
    pixel intensity to model space, ``(x - shift) * scale``), ``.event_shape`` ``(C, H, W)``.  It
    saves and trains like any ScoreModel.
    """

    def __init__(self, net: nn.Module, config: Mapping):
        cfg = load_score_sde_config(config)
        sde = score_sde_sde(cfg)
        ve = isinstance(sde, VESDE)
        super().__init__(net, sde, parameterization="score" if ve else "noise", time_input="sigma" if ve else "t")
        self.config = cfg
        self.step: Optional[int] = None
        d = cfg["data"]
        self.centered = bool(d["centered"])
        self.data_range: Tuple[float, float] = (-1.0, 1.0) if self.centered else (0.0, 1.0)
        self.scaler = {"shift": 0.5, "scale": 2.0} if self.centered else {"shift": 0.0, "scale": 1.0}
        self.event_shape = (int(d["num_channels"]), int(d["image_size"]), int(d["image_size"]))
        model_spec = {"name": cfg["model"]["name"], "data_shape": list(self.event_shape)}
        model_spec.update({k: v for k, v in _network_kwargs(cfg).items()
                           if k not in ("image_size", "num_channels")})
        sde_spec = ({"name": "ve", "sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max} if ve else
                    {"name": _SDE_NAMES[str(cfg["training"]["sde"]).lower()], "beta_min": sde.beta_min,
                     "beta_max": sde.beta_max})
        self.spec = {"sde": sde_spec, "model": model_spec, "parameterization": self.parameterization,
                     "time_input": self.time_input}

    def conditioning(self, t: Tensor) -> Tensor:
        if isinstance(self.sde, VESDE):
            # sigma exactly as the reference computes it (see the module docstring)
            return self.sde.sigma_min * (self.sde.sigma_max / self.sde.sigma_min) ** t
        return super().conditioning(t)


# ---------------------------------------------------------------------------------------------
# in
# ---------------------------------------------------------------------------------------------
def _read_checkpoint(path: PathLike) -> Dict[str, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"score_sde checkpoint not found: {p}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:   # truncated, foreign or unsafe content: torch raises several types
        raise ScoreSdeCheckpointError(f"cannot read score_sde checkpoint {p}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise ScoreSdeCheckpointError(f"{p} is not a score_sde_pytorch checkpoint: no 'model' entry "
                                      f"(it has {sorted(state) if isinstance(state, dict) else type(state).__name__})")
    return state


def _strip_prefix(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    if sd and all(k.startswith(_PREFIX) for k in sd):
        return {k[len(_PREFIX):]: v for k, v in sd.items()}
    return dict(sd)


def _check_state_dict(net: nn.Module, sd: Mapping[str, Tensor], where: str) -> None:
    """Every key present, none extra, every shape equal: an error naming the first offenders."""
    want = net.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}"
                         + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""))
        raise ScoreSdeCheckpointError(f"{where} does not match the config's network: " + "; ".join(parts))
    for k, v in want.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ScoreSdeCheckpointError(f"{where}: {k!r} has shape {list(sd[k].shape)}, the config's network "
                                          f"needs {list(v.shape)}")


def _trainable(net: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in net.named_parameters() if p.requires_grad]


def from_score_sde(path: PathLike, config, ema: bool = True, device=None) -> ScoreSdeModel:
    """A score_sde_pytorch checkpoint as a score function: ``score_fn(x, t)`` with ``.sde``, in eval mode.

    Args:
        path: the ``checkpoint_N.pth`` its ``run_lib`` wrote (``{'optimizer', 'model', 'ema', 'step'}``).
        config: a shipped config name (:func:`score_sde_configs`), a nested dict or ``ConfigDict``,
            or a JSON / YAML file of one.
        ema: the EMA weights (default, what the reference evaluates and samples with), else the raw ones.
        device: where to put the model (default: stays on the CPU).

    Equal to the reference's ``get_score_fn(sde, model, continuous=True)`` in its model space
    (``.data_range``, ``.scaler``); every mismatch with the config is an error naming it.
    """
    cfg = load_score_sde_config(config)
    net = score_sde_network(cfg)
    state = _read_checkpoint(path)
    where = f"score_sde checkpoint {path}"
    if not isinstance(state["model"], Mapping):
        raise ScoreSdeCheckpointError(f"{where}: 'model' is not a state_dict")
    sd = _strip_prefix(state["model"])
    _check_state_dict(net, sd, where)
    net.load_state_dict(sd, strict=True)
    if ema:
        e = state.get("ema")
        shadow = e.get("shadow_params") if isinstance(e, Mapping) else None
        if not isinstance(shadow, (list, tuple)):
            raise ScoreSdeCheckpointError(f"{where} has no EMA weights ('ema' with 'shadow_params'); "
                                          f"pass ema=False for the raw ones")
        params = _trainable(net)
        if len(shadow) != len(params):
            raise ScoreSdeCheckpointError(f"{where}: the EMA list has {len(shadow)} tensors, the config's network "
                                          f"has {len(params)} trainable parameters (it maps by position)")
        for i, ((name, p), s) in enumerate(zip(params, shadow)):
            if not torch.is_tensor(s) or tuple(s.shape) != tuple(p.shape):
                got = list(s.shape) if torch.is_tensor(s) else type(s).__name__
                raise ScoreSdeCheckpointError(f"{where}: EMA entry {i} ({name!r}) is {got}, needs {list(p.shape)}")
        with torch.no_grad():
            for (_, p), s in zip(params, shadow):
                p.copy_(s)
    model = ScoreSdeModel(net, cfg)
    step = state.get("step")
    model.step = int(step) if isinstance(step, (int, float)) or torch.is_tensor(step) else None
    if device is not None:
        model.to(device)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# out
# ---------------------------------------------------------------------------------------------
def _check_sde(sde: SDE, want: SDE) -> None:
    same = type(sde) is type(want) and all(
        abs(float(getattr(sde, a)) - float(getattr(want, a))) <= 1e-12 * max(1.0, abs(float(getattr(want, a))))
        for a in ("beta_min", "beta_max", "sigma_min", "sigma_max") if hasattr(want, a))
    if not same:
        raise ValueError(f"the model's SDE {sde!r} is not the config's {want!r}")


def to_score_sde(model: nn.Module, path: PathLike, config, ema: Optional[Union[nn.Module, Sequence[Tensor]]] = None,
                 step: int = 0) -> Path:
    """Write ``model`` as a score_sde_pytorch checkpoint (``utils.save_checkpoint``'s layout), atomically.

    Args:
        model: a :class:`~scoresde.score.ScoreModel` over an NCSN++ / DDPM network (or the bare
            network) of the config's shape; a ScoreModel's SDE must be the config's.
        path: the file to write.
        config: the reference config the checkpoint is for (name, dict or file).
        ema: the EMA weights for ``'ema'``: a model of the same shape or the list of its trainable
            parameters in registration order; default: the model's own weights.
        step: the training step recorded.

    Written: ``'model'`` (the network's state_dict under ``module.``, as the reference's
    ``DataParallel`` saves it), ``'ema'`` (``decay`` = ``config.model.ema_rate``, ``num_updates``
    = step, ``shadow_params``), ``'step'`` and ``'optimizer'``: a *fresh* Adam state over the
    network's parameters with the config's hyper-parameters (the reference restores an Adam;
    scoresde trains with AdamW and its moments do not carry over, so resuming there starts the
    moments afresh).
    """
    cfg = load_score_sde_config(config)
    net = model.net if isinstance(model, ScoreModel) else model
    if isinstance(model, ScoreModel):
        _check_sde(model.sde, score_sde_sde(cfg))
        ref = ScoreSdeModel(nn.Identity(), cfg)
        if (model.parameterization, model.time_input) != (ref.parameterization, ref.time_input):
            raise ValueError(f"the model reads its network as parameterization={model.parameterization!r}, "
                             f"time_input={model.time_input!r}; the config's network is "
                             f"{ref.parameterization!r}, {ref.time_input!r}")
    want = score_sde_network(cfg)
    if type(net) is not type(want):
        raise ValueError(f"the model's network is a {type(net).__name__}; the config builds a {type(want).__name__}")
    differ = {k: (getattr(net, "hparams", {}).get(k), v) for k, v in want.hparams.items()
              if k != "dropout" and getattr(net, "hparams", {}).get(k) != v}
    if differ:
        raise ValueError("the model's network differs from the config's: "
                         + ", ".join(f"{k}={a!r} (config: {b!r})" for k, (a, b) in sorted(differ.items())))
    state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    _check_state_dict(want, state, f"model {type(net).__name__}")
    if ema is None:
        shadow = [p.detach().to("cpu", copy=True) for _, p in _trainable(net)]
    else:
        src = ema.net if isinstance(ema, ScoreModel) else ema
        tensors = [p for _, p in _trainable(src)] if isinstance(src, nn.Module) else list(src)
        params = _trainable(want)
        if len(tensors) != len(params) or any(tuple(t.shape) != tuple(p.shape) for t, (_, p) in zip(tensors, params)):
            raise ValueError(f"ema has {len(tensors)} tensors that do not match the config's {len(params)} "
                             f"trainable parameters (shapes in registration order)")
        shadow = [t.detach().to("cpu", copy=True) for t in tensors]
    o = cfg.get("optim", {}) or {}
    optimizer = torch.optim.Adam(list(want.parameters()), lr=float(o.get("lr", 2e-4)),
                                 betas=(float(o.get("beta1", 0.9)), 0.999), eps=float(o.get("eps", 1e-8)),
                                 weight_decay=float(o.get("weight_decay", 0.0)))
    ckpt = {"optimizer": optimizer.state_dict(),
            "model": {_PREFIX + k: v for k, v in state.items()},
            "ema": {"decay": float(cfg["model"].get("ema_rate", 0.9999)), "num_updates": int(step),
                    "shadow_params": shadow},
            "step": int(step)}
    path = Path(path).expanduser()
    atomic_write(path, lambda f: torch.save(ckpt, f))
    return path
