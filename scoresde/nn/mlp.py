"""A residual MLP score network for vector data (any event shape, flattened).

    h_0 = W_in x
    h_{l+1} = h_l + W_2 SiLU(LN(W_1 SiLU(h_l) + E_l(temb)))      (l = 0 .. depth-1)
    out = W_out SiLU(h_L)                                           (reshaped to x's shape)

with ``temb = MLP(embedding(t))`` (plus a learned label embedding E(y) for a class-conditional
network, ``num_classes > 0``; ``y = num_classes`` or None is the null label, the unconditional
score of classifier-free guidance).  The residual stream and the output are not normalised, so the
output can grow linearly in x far from the data, as the true noise (about x at large t for VP)
does; a LayerNorm before the output would cap it, and the probability-flow ODE then throws
samples from the prior's tails far out.  The output layer starts at zero, so an untrained network
predicts zero noise (or zero score), the loss's neutral point.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .embeddings import LabelEmbedding, build_time_embedding, check_num_classes

Tensor = torch.Tensor

__all__ = ["MLPScoreNet"]


class _ResBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, norm: bool):
        super().__init__()
        self.lin1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.lin2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        z = self.lin1(self.act(h)) + self.emb(temb)
        return h + self.lin2(self.act(self.norm(z)))


class MLPScoreNet(nn.Module):
    """Residual MLP ``net(x, t) -> Tensor`` of x's shape, for data of shape ``[B, *data_shape]``.

    Args:
        data_shape: the shape of one sample (an int D for vectors).
        width: hidden width.  depth: number of residual blocks.
        embedding: ``"fourier"`` (Gaussian Fourier features) or ``"sinusoidal"``.
        emb_dim: size of the time embedding.  fourier_scale / emb_scale: the embedding's
            frequency scale (``scale`` of the chosen embedding).
        norm: LayerNorm inside each block.
        num_classes: 0 or None (default) for an unconditional network; K > 0 adds a label
            embedding (K classes and the null label K) to the time embedding, and
            ``net(x, t, y)`` takes labels ``y [B]`` (None: the null label).
    """

    def __init__(self, data_shape: Union[int, Sequence[int]] = 2, width: int = 256, depth: int = 4,
                 embedding: str = "fourier", emb_dim: int = 128, emb_scale: float = 16.0,
                 norm: bool = True, num_classes: Optional[int] = None):
        super().__init__()
        self.data_shape = (int(data_shape),) if isinstance(data_shape, int) else tuple(int(d) for d in data_shape)
        if width <= 0 or depth < 0:
            raise ValueError(f"width must be positive and depth non-negative, got width={width}, depth={depth}")
        dim = math.prod(self.data_shape)
        self.time_embed = nn.Sequential(build_time_embedding(embedding, emb_dim, scale=emb_scale),
                                        nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([_ResBlock(width, emb_dim, norm) for _ in range(depth)])
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # built last and only when asked, so unconditional networks (their parameters, their
        # random initialisation, their checkpoints) are exactly what they were before labels
        self.num_classes = check_num_classes(num_classes)
        if self.num_classes:
            self.label_embed = LabelEmbedding(self.num_classes, emb_dim)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"MLPScoreNet expects x of shape [B, {', '.join(map(str, self.data_shape))}], "
                             f"got {tuple(x.shape)}")
        temb = self.time_embed(t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t)
        if self.num_classes:
            temb = temb + self.label_embed(y, x.shape[0]).to(temb.dtype)
        elif y is not None:
            raise ValueError("labels given to an unconditional network (num_classes=0)")
        h = self.inp(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, temb)
        return self.out(torch.nn.functional.silu(h)).reshape(x.shape)
