"""A small U-Net score network for images, in the style of DDPM++ (Song et al., ICLR 2021, App. H).

The network maps ``x [B, C, H, W]`` and ``t [B]`` (floats in [0, 1]) to a tensor shaped like ``x``;
:class:`~scoresde.score.ScoreModel` turns that output into a score (noise or score
parameterization).  The architecture follows DDPM++ (``ncsnpp.py`` of score_sde_pytorch, with
``resblock_type="ddpm"``, no FIR, no progressive growing), scaled down for 8x8 to 32x32 images:

* time conditioning: an embedding of t (Gaussian Fourier features sin/cos(2 pi W t), W ~ N(0, s^2),
  Tancik et al. 2020, as in NCSN++; or the sinusoidal embedding of Vaswani et al. on 1000 t, as in
  DDPM) followed by an MLP  Linear -> SiLU -> Linear;  every residual block adds a learned
  projection of SiLU(embedding) to its hidden state;  a class-conditional network
  (``num_classes`` K > 0) adds a learned label embedding (K classes and the null label K, the
  unconditional score of classifier-free guidance) to the time embedding, as the class
  embedding of Dhariwal & Nichol's and Ho & Salimans' U-Nets;
* residual blocks  h = Conv(SiLU(GN(x))) + Dense(SiLU(temb));  h = Conv(Dropout(SiLU(GN(h))));
  out = (skip(x) + h) / sqrt(2)  (DDPM++'s ``skip_rescale``: keeps the variance of the sum of
  two unit-variance branches at one, so depth does not inflate activations);
* GroupNorm with min(C // 4, 32) groups (as DDPM++);
* self-attention (one head, softmax(q k^T / sqrt(C)) v over the H W positions) at the
  resolutions listed in ``attn_resolutions`` and always in the middle block; its output is also
  added with the 1/sqrt(2) rescaling;
* the encoder halves the resolution between levels (stride-2 conv), the decoder doubles it
  (nearest neighbour + conv) and concatenates the encoder's activations (U-Net skips), each of
  those concatenations followed by a residual block;
* the last conv of every residual branch and of the output is initialised at zero (DDPM++'s
  ``init_scale = 0``), so at initialisation every block is the (rescaled) identity and the
  network outputs zero;  other weights use Xavier-uniform (DDPM's ``default_init``).

Sizing.  ``ch_mult`` gives the width of each level as a multiple of ``nf``; with L levels the
image side must be divisible by 2^(L-1).  For the 8x8 digits, ``nf=32, ch_mult=(1, 2),
num_res_blocks=1`` with attention at 4x4 has 0.70 M parameters and trains in minutes on a CPU
(conf/experiment/digits.yaml); ``nf=32, ch_mult=(1, 2, 2), num_res_blocks=2`` has 1.62 M.  DDPM++'s
CIFAR-10 model is ``nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,)``
(58.7 M here, 32x32 RGB).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import GaussianFourierProjection, LabelEmbedding, SinusoidalEmbedding, check_num_classes

Tensor = torch.Tensor

__all__ = ["UNet", "ResBlock", "AttnBlock", "count_parameters", "unet"]

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _groups(channels: int) -> int:
    """DDPM++'s GroupNorm group count min(C // 4, 32), lowered to a divisor of C (GroupNorm needs one)."""
    g = max(1, min(channels // 4, 32))
    while channels % g:
        g -= 1
    return g


def _init(module: nn.Module, zero: bool = False) -> nn.Module:
    """Xavier-uniform weights and zero bias; ``zero`` gives all-zero weights (init_scale = 0)."""
    if zero:
        nn.init.zeros_(module.weight)
    else:
        nn.init.xavier_uniform_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class ResBlock(nn.Module):
    """DDPM++ residual block with additive time conditioning and 1/sqrt(2) skip rescaling."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float = 0.0,
                 skip_rescale: bool = True):
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(in_ch), in_ch, eps=1e-6)
        self.conv0 = _init(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.dense = _init(nn.Linear(temb_dim, out_ch))
        self.norm1 = nn.GroupNorm(_groups(out_ch), out_ch, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _init(nn.Conv2d(out_ch, out_ch, 3, padding=1), zero=True)
        # 1x1 projection of the skip when the width changes (DDPM++'s NIN).
        self.skip = _init(nn.Conv2d(in_ch, out_ch, 1)) if in_ch != out_ch else nn.Identity()
        self.scale = _SQRT_HALF if skip_rescale else 1.0

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = h + self.dense(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return (self.skip(x) + h) * self.scale


class AttnBlock(nn.Module):
    """Single-head self-attention over the H W positions, residual with 1/sqrt(2) rescaling."""

    def __init__(self, ch: int, skip_rescale: bool = True):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch, eps=1e-6)
        self.qkv = _init(nn.Conv2d(ch, 3 * ch, 1))
        self.out = _init(nn.Conv2d(ch, ch, 1), zero=True)
        self.scale = _SQRT_HALF if skip_rescale else 1.0

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)            # [B, HW, C], softmax(q k^T/sqrt(C)) v
        h = self.out(h.transpose(-1, -2).reshape(B, C, H, W))
        return (x + h) * self.scale


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = _init(nn.Conv2d(ch, ch, 3, stride=2, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = _init(nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM++-style U-Net: ``net(x [B, C, H, W], t [B]) -> [B, C, H, W]`` (see the module docstring).

    Args:
        image_size: side of the (square) input images; must be divisible by 2^(len(ch_mult) - 1).
        channels: image channels C (1 for grayscale, 3 for RGB; any count works).
        nf: base width; level i has ``nf * ch_mult[i]`` channels.
        ch_mult: width multipliers, one per resolution level.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: feature-map sides at which self-attention follows each residual block;
            None puts it at image_size / 2 (DDPM++: 16 for 32x32), or nowhere with one level.
        dropout: dropout rate inside the residual blocks.
        embedding: ``"fourier"`` (Gaussian Fourier features of t) or ``"sinusoidal"`` (of 1000 t).
        fourier_scale: std s of the Fourier frequencies W ~ N(0, s^2).
        skip_rescale: divide every residual sum by sqrt(2) (DDPM++).
        num_classes: 0 or None (default): unconditional; K > 0: ``net(x, t, y)`` takes labels
            ``y [B]`` in [0, K] (K or None = the null label).
    """

    def __init__(self, image_size: int = 8, channels: int = 1, nf: int = 32,
                 ch_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Optional[Sequence[int]] = None, dropout: float = 0.1,
                 embedding: str = "fourier", fourier_scale: float = 16.0,
                 skip_rescale: bool = True, num_classes: Optional[int] = None):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        if attn_resolutions is None:
            attn_resolutions = (image_size // 2,) if len(ch_mult) > 1 else ()
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        if not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty list of positive integers, got {ch_mult}")
        if channels < 1 or nf < 1 or num_res_blocks < 1:
            raise ValueError(f"channels, nf and num_res_blocks must be positive, got "
                             f"{channels}, {nf}, {num_res_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        factor = 2 ** (len(ch_mult) - 1)
        if image_size < factor or image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by 2^(levels - 1) = {factor} "
                             f"for ch_mult={ch_mult}; use fewer levels or another size")
        resolutions = [image_size // 2 ** i for i in range(len(ch_mult))]
        unused = sorted(set(attn_resolutions) - set(resolutions))
        if unused:
            raise ValueError(f"attn_resolutions {unused} match no level; the levels have sides {resolutions}")
        if embedding == "fourier":
            emb = GaussianFourierProjection(nf, scale=fourier_scale)
        elif embedding == "sinusoidal":
            emb = SinusoidalEmbedding(nf, scale=1000.0)
        else:
            raise ValueError(f"unknown embedding {embedding!r}; valid: 'fourier', 'sinusoidal'")

        self.image_size, self.channels = image_size, channels
        temb_dim = 4 * nf
        self.temb = nn.Sequential(emb, _init(nn.Linear(nf, temb_dim)), nn.SiLU(),
                                  _init(nn.Linear(temb_dim, temb_dim)))
        kw = dict(temb_dim=temb_dim, dropout=dropout, skip_rescale=skip_rescale)

        self.conv_in = _init(nn.Conv2d(channels, nf, 3, padding=1))
        # Encoder: a flat list walked in order; each ResBlock / Downsample output is pushed as a skip.
        self.down = nn.ModuleList()
        skip_chs, ch = [nf], nf
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, nf * mult, **kw))
                ch = nf * mult
                if resolutions[level] in attn_resolutions:
                    self.down.append(AttnBlock(ch, skip_rescale))
                skip_chs.append(ch)
            if level < len(ch_mult) - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)

        self.mid = nn.ModuleList([ResBlock(ch, ch, **kw), AttnBlock(ch, skip_rescale), ResBlock(ch, ch, **kw)])

        # Decoder: each ResBlock pops one skip and concatenates it.
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skip_chs.pop(), nf * ch_mult[level], **kw))
                ch = nf * ch_mult[level]
                if resolutions[level] in attn_resolutions:
                    self.up.append(AttnBlock(ch, skip_rescale))
            if level > 0:
                self.up.append(Upsample(ch))
        assert not skip_chs

        self.norm_out = nn.GroupNorm(_groups(ch), ch, eps=1e-6)
        self.conv_out = _init(nn.Conv2d(ch, channels, 3, padding=1), zero=True)
        # built last and only when asked: unconditional networks keep their parameters, their
        # random initialisation and their checkpoints exactly
        self.num_classes = check_num_classes(num_classes)
        if self.num_classes:
            self.label_embed = LabelEmbedding(self.num_classes, temb_dim)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels or x.shape[2:] != (self.image_size,) * 2:
            raise ValueError(f"UNet expects x of shape [B, {self.channels}, {self.image_size}, "
                             f"{self.image_size}], got {list(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [B] = [{x.shape[0]}], got {list(t.shape)}")
        temb = self.temb(t)
        if self.num_classes:
            temb = temb + self.label_embed(y, x.shape[0]).to(temb.dtype)
        elif y is not None:
            raise ValueError("labels given to an unconditional network (num_classes=0)")
        h = self.conv_in(x)
        skips = [h]
        for m in self.down:
            if isinstance(m, ResBlock):
                h = m(h, temb)
                skips.append(h)
            elif isinstance(m, AttnBlock):
                h = skips[-1] = m(h)          # the skip is the block's output after attention
            else:
                h = m(h)
                skips.append(h)
        for m in self.mid:
            h = m(h, temb) if isinstance(m, ResBlock) else m(h)
        for m in self.up:
            h = m(torch.cat([h, skips.pop()], dim=1), temb) if isinstance(m, ResBlock) else m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def unet(data_shape: Sequence[int], nf: int = 32, ch_mult: Sequence[int] = (1, 2, 2),
         num_res_blocks: int = 2, attn_resolutions: Optional[Sequence[int]] = None,
         dropout: float = 0.1, embedding: str = "fourier", fourier_scale: float = 16.0,
         skip_rescale: bool = True, num_classes: Optional[int] = None) -> UNet:
    """Registry factory: a :class:`UNet` for samples of shape ``data_shape = [C, H, W]`` (H = W);
    the other arguments are the UNet's (listed so that config schemas can check them)."""
    shape = tuple(int(d) for d in data_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"the U-Net needs square images, data_shape [C, H, H]; got {list(shape)}")
    return UNet(image_size=shape[1], channels=shape[0], nf=nf, ch_mult=ch_mult,
                num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
                embedding=embedding, fourier_scale=fourier_scale, skip_rescale=skip_rescale,
                num_classes=num_classes)
