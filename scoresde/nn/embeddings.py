"""Time embeddings: map a ``[B]`` time (or noise level) to a ``[B, dim]`` feature vector.

* Gaussian Fourier features (Tancik et al. 2020; Song et al. 2021, NCSN++ ``fourier``):
  ``W ~ N(0, scale^2)`` fixed, ``emb = [sin(2 pi W t), cos(2 pi W t)]``.
* Sinusoidal (Vaswani et al. 2017; Ho et al. 2020, DDPM ``get_timestep_embedding``):
  ``emb = [sin(s t w_k), cos(s t w_k)]`` with ``w_k = max_period^(-k / (dim/2))``; ``s`` (``scale``)
  maps t in [0, 1] onto DDPM's integer steps (1000, as in Song et al.'s VP models).

Labels: :class:`LabelEmbedding` maps a class ``[B]`` (or the null label ``num_classes``, the
unconditional score of classifier-free guidance) to a ``[B, dim]`` vector that the networks add
to their time embedding (as the class embedding of Dhariwal & Nichol's and Ho & Salimans' U-Nets).
"""

from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor

__all__ = ["GaussianFourierProjection", "SinusoidalEmbedding", "build_time_embedding", "EMBEDDINGS",
           "LabelEmbedding"]


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: ``[sin(2 pi W t), cos(2 pi W t)]``, W ~ N(0, scale^2).

    W is a buffer (fixed, saved with the model), as in Song et al.'s NCSN++.
    """

    def __init__(self, dim: int = 128, scale: float = 16.0):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"embedding dim must be a positive even number, got {dim}")
        self.dim = dim
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        proj = t.reshape(-1, 1).to(self.W.dtype) * self.W[None] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class SinusoidalEmbedding(nn.Module):
    """DDPM's sinusoidal embedding of ``scale * t`` with geometric frequencies up to ``max_period``."""

    def __init__(self, dim: int = 128, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"embedding dim must be a positive even number, got {dim}")
        self.dim = dim
        self.scale = float(scale)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, t: Tensor) -> Tensor:
        arg = self.scale * t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


EMBEDDINGS = {"fourier": GaussianFourierProjection, "sinusoidal": SinusoidalEmbedding}


def build_time_embedding(kind: str, dim: int, **kwargs) -> nn.Module:
    """A time embedding by name: ``"fourier"`` or ``"sinusoidal"``."""
    if kind not in EMBEDDINGS:
        raise ValueError(f"unknown time embedding {kind!r}; valid names: {sorted(EMBEDDINGS)}")
    return EMBEDDINGS[kind](dim, **kwargs)


class LabelEmbedding(nn.Module):
    """A learned vector per class plus one for the null label ``num_classes`` (no class).

    The table starts at zero, so a freshly built conditional network computes exactly what its
    unconditional twin computes, for every label; training moves the rows apart.  ``y=None``
    means the null label for the whole batch.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.zeros_(self.table.weight)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, y, batch: int) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=self.table.weight.device)
        y = torch.as_tensor(y, device=self.table.weight.device)
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got dtype {y.dtype}")
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"labels must have shape [B] = [{batch}], got {tuple(y.shape)}")
        if ((y < 0) | (y > self.num_classes)).any():
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null label), "
                             f"got values {sorted(set(y.tolist()))}")
        return self.table(y.long())


def check_num_classes(num_classes) -> int:
    """``None`` or 0: unconditional (returns 0); otherwise a positive integer."""
    if num_classes is None:
        return 0
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be None, 0 (unconditional) or a positive integer, got {num_classes!r}")
    return num_classes
