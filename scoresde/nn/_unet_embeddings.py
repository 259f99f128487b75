"""Time embeddings for the U-Net until the shared ``scoresde.nn.embeddings`` lands (then removed)."""

from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


class GaussianFourierEmbedding(nn.Module):
    """[sin(2 pi W t), cos(2 pi W t)], W ~ N(0, scale^2) fixed (Tancik et al. 2020; NCSN++)."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        proj = 2 * math.pi * t[:, None] * self.W[None, :]
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class SinusoidalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of scale * t (Vaswani et al. 2017; DDPM with scale 1000)."""

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        self.scale = scale
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / (half - 1)))

    def forward(self, t: Tensor) -> Tensor:
        arg = self.scale * t[:, None] * self.freqs[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)
