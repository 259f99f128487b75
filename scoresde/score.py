"""ScoreModel: a network and an SDE joined into a score function ``score_fn(x, t)``.

Parameterizations (Song et al. 2021, ``mutils.get_score_fn``):

* ``"noise"``: the network predicts the standardized noise eps of x_t = alpha x0 + sigma eps, and
  the score is ``-net(x, t) / sigma(t)`` (exact for the Gaussian transition: grad log p(x_t | x0)
  = -eps / sigma).  The denoising loss with sigma^2 weighting is then ||net - eps||^2.
* ``"score"``: the network output is the score itself.

The network sees the time through ``time_input``: ``"t"`` (the time itself, default),
``"log_sigma"`` (log sigma(t)), ``"sigma"`` (sigma(t), what Song et al.'s NCSN++ for VE is fed:
it embeds log sigma itself and divides its output by sigma) or ``"log_snr"``.

:class:`CountingScore` wraps any score function and counts its calls: the one NFE counter of the
samplers and the likelihood.

Class-conditional models.  When the network has ``num_classes`` K > 0 (``build_model(...,
num_classes=K)``), ``model(x, t, y)`` is the score of p_t(x | y) for labels ``y [B]`` in [0, K),
and the null label K (or ``y=None``) gives the unconditional score, trained by label dropout
(``dsm_loss(..., labels=y, p_uncond=0.1)``; Ho & Salimans 2022).  ``model(x, t)`` keeps the
plain score_fn interface, so a conditional model samples unconditionally as it is.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from .sde import SDE, ScoreFn, as_time, expand_to, build_sde

Tensor = torch.Tensor

__all__ = ["ScoreModel", "build_score_model", "CountingScore", "PARAMETERIZATIONS", "TIME_INPUTS"]

PARAMETERIZATIONS = ("noise", "score")
TIME_INPUTS = ("t", "log_sigma", "log_snr", "sigma")


class ScoreModel(nn.Module):
    """``score_fn(x, t) -> grad_x log p_t(x)`` from a network ``net(x, c) -> Tensor`` and an SDE.

    It is an ``nn.Module`` (so it trains, moves and saves like one) and a score function: pass it
    to every sampler and to ``log_likelihood`` as it is.  ``.sde`` is its SDE.
    """

    def __init__(self, net: nn.Module, sde: SDE, parameterization: str = "noise", time_input: str = "t"):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; valid names: {list(PARAMETERIZATIONS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; valid names: {list(TIME_INPUTS)}")
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be an SDE instance, got {type(sde).__name__}")
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.time_input = time_input
        self.spec: Optional[Dict[str, Any]] = None   # set by build_score_model, saved in checkpoints

    def conditioning(self, t: Tensor) -> Tensor:
        """What the network is given as its time input."""
        if self.time_input == "t":
            return t
        if self.time_input == "log_sigma":
            return torch.log(self.sde.std(t))
        if self.time_input == "sigma":
            return self.sde.std(t)
        return self.sde.log_snr(t)

    @property
    def num_classes(self) -> int:
        """K for a class-conditional network, 0 for an unconditional one."""
        return int(getattr(self.net, "num_classes", 0) or 0)

    @property
    def null_label(self) -> int:
        """The label of the unconditional score (= ``num_classes``) of a conditional model."""
        if not self.num_classes:
            raise ValueError("an unconditional model has no null label (num_classes=0)")
        return self.num_classes

    def forward(self, x: Tensor, t, y: Optional[Tensor] = None) -> Tensor:
        t = as_time(t, x)
        if self.num_classes:
            out = self.net(x, self.conditioning(t), y)
        elif y is not None:
            raise ValueError("labels given to an unconditional ScoreModel (its network has num_classes=0)")
        else:
            out = self.net(x, self.conditioning(t))
        if self.parameterization == "noise":
            return -out / expand_to(self.sde.std(t), x)
        return out

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}, time_input={self.time_input!r}"


def build_score_model(spec: Dict[str, Any], num_classes: Optional[int] = None) -> ScoreModel:
    """A :class:`ScoreModel` from a plain spec (the form checkpoints store)::

        {"sde": {"name": "vp", ...kwargs}, "model": {"name": "mlp", "data_shape": [2], ...},
         "parameterization": "noise", "time_input": "t"}

    A class-conditional model has ``"num_classes": K`` in ``spec["model"]`` (saved there, so
    ``load_model`` restores it); ``num_classes`` here sets it (it must agree with the spec's
    if both are given).  0 or None is unconditional.
    """
    from .nn import build_model

    for key in ("sde", "model"):
        if key not in spec or "name" not in spec[key]:
            raise ValueError(f"model spec needs {key!r} with a 'name'; got {spec!r}")
    sde_kw = {k: v for k, v in spec["sde"].items() if k != "name"}
    net_kw = {k: v for k, v in spec["model"].items() if k != "name"}
    if num_classes is not None:
        if net_kw.get("num_classes") not in (None, num_classes):
            raise ValueError(f"num_classes={num_classes} disagrees with the spec's model.num_classes="
                             f"{net_kw['num_classes']}")
        net_kw["num_classes"] = num_classes
    sde = build_sde(spec["sde"]["name"], **sde_kw)
    net = build_model(spec["model"]["name"], **net_kw)
    # absent keys take ScoreModel's defaults (stated there only)
    model = ScoreModel(net, sde, **{k: spec[k] for k in ("parameterization", "time_input") if k in spec})
    model_spec = dict(spec["model"])
    if num_classes is not None:
        model_spec["num_classes"] = num_classes
    model.spec = {"sde": dict(spec["sde"]), "model": model_spec,
                  "parameterization": model.parameterization, "time_input": model.time_input}
    return model


class CountingScore:
    """Wraps ``score_fn``: counts its calls, broadcasts ``t`` to ``[B]`` in x's dtype, ticks the bar,
    and checks that the score has x's shape (the samplers' and the likelihood's one counter)."""

    def __init__(self, score_fn: ScoreFn, bar=None):
        self.score_fn = score_fn
        self.calls = 0
        self.bar = bar

    def __call__(self, x: Tensor, t) -> Tensor:
        self.calls += 1
        if self.bar is not None:
            self.bar.update(1)
        if not (torch.is_tensor(t) and t.dim() == 1 and t.shape[0] == x.shape[0] and t.dtype == x.dtype
                and t.device == x.device):
            t = as_time(t, x)
        s = self.score_fn(x, t)
        if s.shape != x.shape:
            raise ValueError(f"score_fn returned shape {tuple(s.shape)} for x of shape {tuple(x.shape)}")
        return s
