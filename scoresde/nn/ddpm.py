"""DDPM's U-Net (Ho et al., NeurIPS 2020), as score_sde_pytorch's ``models/ddpm.py`` builds it.

Residual blocks with GroupNorm(32) and no skip rescale, attention at ``attn_resolutions`` and in
the middle, nearest up / strided-conv down, DDPM's sinusoidal embedding of ``time_scale * t``
(999 t for the reference's continuous VP model, ``vp/ddpm/cifar10_continuous``: 35,218,947
parameters at nf 128, ch_mult 1,2,2,2, 2 blocks, attention at 16).  Module names, shapes and
registration order are the reference's (one flat ``all_modules`` list), so its checkpoints load
key for key.  Every width ``nf * ch_mult[i]`` must be a multiple of 32 (the fixed group count).

``scale_by_sigma`` (discrete VE training with a DDPM network) is not supported: it looks sigma
up by an integer index, which has no continuous-time meaning.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers_pp import (AttnBlockDDPM, DownsampleDDPM, ResnetBlockDDPM, UpsampleDDPM, check_image_input, conv3x3,
                        default_init_, group_norm, timestep_embedding)
from .ncsnpp import ACTIVATIONS, _choice, reference_sigmas

Tensor = torch.Tensor

__all__ = ["DDPM", "ddpm"]


class DDPM(nn.Module):
    """DDPM's U-Net: ``net(x [B, C, H, W], t [B]) -> [B, C, H, W]``, the noise prediction for VP / sub-VP
    (``ScoreModel(net, sde, parameterization="noise", time_input="t")``)."""

    def __init__(self, image_size: int = 32, num_channels: int = 3, nf: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resamp_with_conv: bool = True,
                 conditional: bool = True, centered: bool = True, nonlinearity: str = "swish",
                 time_scale: float = 999.0, sigma_min: float = 0.01, sigma_max: float = 50.0,
                 num_scales: int = 1000):
        super().__init__()
        # the constructor's arguments, normalised below: what a checkpoint's config must match
        self.hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        nonlinearity = _choice("nonlinearity", nonlinearity, tuple(ACTIVATIONS))
        if not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty list of positive integers, got {ch_mult}")
        if nf < 32 or nf % 32 or num_res_blocks < 1 or num_channels < 1:
            raise ValueError(f"DDPM needs nf a multiple of 32 (GroupNorm(32)) and num_res_blocks, "
                             f"num_channels >= 1; got nf={nf}, num_res_blocks={num_res_blocks}, "
                             f"num_channels={num_channels}")
        factor = 2 ** (len(ch_mult) - 1)
        if image_size < factor or image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by 2^(levels - 1) = {factor} "
                             f"for ch_mult={ch_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.image_size, self.num_channels, self.nf = int(image_size), int(num_channels), int(nf)
        self.ch_mult, self.num_res_blocks, self.attn_resolutions = ch_mult, int(num_res_blocks), attn_resolutions
        self.conditional, self.centered, self.time_scale = bool(conditional), bool(centered), float(time_scale)
        self.hparams.update(ch_mult=list(ch_mult), attn_resolutions=list(attn_resolutions),
                            nonlinearity=nonlinearity, time_scale=self.time_scale)
        self.act = act = ACTIVATIONS[nonlinearity]
        self.register_buffer("sigmas", reference_sigmas(sigma_min, sigma_max, num_scales))

        temb_dim = 4 * nf
        resolutions = [image_size // 2 ** i for i in range(len(ch_mult))]
        m: list = []
        if conditional:
            for i, o in ((nf, temb_dim), (temb_dim, temb_dim)):
                lin = nn.Linear(i, o)
                default_init_(lin.weight)
                nn.init.zeros_(lin.bias)
                m.append(lin)

        def block(in_ch, out_ch=None):
            return ResnetBlockDDPM(in_ch, out_ch, temb_dim, dropout, act)

        m.append(conv3x3(num_channels, nf))
        skip_chs, in_ch = [nf], nf
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                m.append(block(in_ch, nf * mult))
                in_ch = nf * mult
                if resolutions[level] in attn_resolutions:
                    m.append(AttnBlockDDPM(in_ch))
                skip_chs.append(in_ch)
            if level != len(ch_mult) - 1:
                m.append(DownsampleDDPM(in_ch, with_conv=resamp_with_conv))
                skip_chs.append(in_ch)
        m += [block(in_ch), AttnBlockDDPM(in_ch), block(in_ch)]
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                m.append(block(in_ch + skip_chs.pop(), nf * ch_mult[level]))
                in_ch = nf * ch_mult[level]
            if resolutions[level] in attn_resolutions:
                m.append(AttnBlockDDPM(in_ch))
            if level != 0:
                m.append(UpsampleDDPM(in_ch, with_conv=resamp_with_conv))
        assert not skip_chs
        m.append(group_norm(in_ch, 32))
        m.append(conv3x3(in_ch, num_channels, init_scale=0.0))
        self.all_modules = nn.ModuleList(m)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = check_image_input("DDPM", x, t, "t", self.num_channels, self.image_size)
        mods = iter(self.all_modules)
        act = self.act
        temb = None
        if self.conditional:
            temb = next(mods)(timestep_embedding(t * self.time_scale, self.nf))
            temb = next(mods)(act(temb))
        h = x if self.centered else 2 * x - 1.0

        hs = [next(mods)(h)]
        for level in range(len(self.ch_mult)):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                hs.append(next(mods)(hs[-1]))
        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            if level != 0:
                h = next(mods)(h)
        assert not hs
        norm = next(mods)
        h = next(mods)(act(norm(h)))
        assert next(mods, None) is None, "every module is used exactly once"
        return h


def ddpm(data_shape: Sequence[int], nf: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2),
         num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
         resamp_with_conv: bool = True, conditional: bool = True, centered: bool = True,
         nonlinearity: str = "swish", time_scale: float = 999.0, sigma_min: float = 0.01,
         sigma_max: float = 50.0, num_scales: int = 1000) -> DDPM:
    """Registry factory: a :class:`DDPM` for samples of shape ``data_shape = [C, H, H]``; the
    defaults are the reference's CIFAR-10 size (vp/ddpm/cifar10_continuous)."""
    shape = tuple(int(d) for d in data_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"DDPM needs square images, data_shape [C, H, H]; got {list(shape)}")
    return DDPM(image_size=shape[1], num_channels=shape[0], nf=nf, ch_mult=ch_mult,
                num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
                resamp_with_conv=resamp_with_conv, conditional=conditional, centered=centered,
                nonlinearity=nonlinearity, time_scale=time_scale, sigma_min=sigma_min, sigma_max=sigma_max,
                num_scales=num_scales)
