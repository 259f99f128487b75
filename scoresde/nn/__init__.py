"""Score networks.  A network is any ``nn.Module`` with ``net(x, t) -> Tensor`` of x's shape
(``x [B, ...]``, ``t [B]``); :class:`scoresde.ScoreModel` turns its output into a score.

Networks are built by name from a registry, so configs stay plain data::

    net = build_model("mlp", data_shape=(2,), width=256, depth=4)
    net = build_model("unet", data_shape=(1, 8, 8), nf=32, ch_mult=(1, 2))
    net = build_model("ncsnpp", data_shape=(3, 32, 32))    # DDPM++ at the CIFAR-10 size
    net = build_model("ddpm", data_shape=(3, 32, 32))      # Ho et al.'s U-Net

``ncsnpp`` (NCSN++ / DDPM++) and ``ddpm`` are Song et al.'s networks with score_sde_pytorch's
state_dict layout (:mod:`scoresde.nn.ncsnpp`, :mod:`scoresde.nn.ddpm`).

``data_shape`` (the shape of one sample) is passed by the caller (the trainer takes it from the
data set).  Add a network with ``@register_model("name")`` on its class or factory.
"""

from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from .embeddings import GaussianFourierProjection, LabelEmbedding, SinusoidalEmbedding, build_time_embedding
from .ddpm import DDPM, ddpm
from .mlp import MLPScoreNet
from .ncsnpp import NCSNpp, ncsnpp
from .unet import UNet, unet

__all__ = ["MODELS", "register_model", "build_model", "MLPScoreNet", "GaussianFourierProjection",
           "SinusoidalEmbedding", "build_time_embedding", "LabelEmbedding", "UNet", "NCSNpp", "DDPM"]

MODELS: Dict[str, Callable[..., nn.Module]] = {"mlp": MLPScoreNet, "unet": unet, "ncsnpp": ncsnpp, "ddpm": ddpm}


def register_model(name: str):
    """Decorator: register a network class or factory under ``name``."""
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered network by name (``"mlp"``, ...) with its keyword arguments."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {sorted(MODELS)}")
    return MODELS[name](**kwargs)
