"""NCSN++ and DDPM++ (Song et al., ICLR 2021, App. H): one configurable U-Net.

NCSN++ and DDPM++ are one network switched by options, as in score_sde_pytorch's
``models/ncsnpp.py``.  This is our implementation of it, keeping the reference's module names,
shapes and registration order (every layer in one flat ``all_modules`` list, walked in order by
``forward``), so its checkpoints load key for key and its positional EMA list lines up
(``scoresde.interop.from_score_sde``).  The blocks live in :mod:`scoresde.nn.layers_pp`.

Options (the reference config's ``model`` fields):

* ``resblock_type``: ``"ddpm"`` (DDPM's block; resampling by separate Down/Upsample modules) or
  ``"biggan"`` (BigGAN's block, resampling inside a residual block).
* ``progressive`` (output pyramid): ``"none"``; ``"output_skip"`` (each decoder level adds an
  image-space prediction to the upsampled running one; its sum is the output); ``"residual"``
  (a feature pyramid upsampled by a conv and merged into h by a rescaled sum).
* ``progressive_input`` (input pyramid): ``"none"``; ``"input_skip"`` (the image, FIR/mean
  downsampled, joined to h by a 1x1 ``Combine``); ``"residual"`` (the pyramid goes through a
  strided conv and is merged into h by a rescaled sum).  ``progressive_combine`` ``"sum"`` or
  ``"cat"`` for input_skip.
* ``fir`` / ``fir_kernel``: FIR (StyleGAN2) resampling instead of nearest / mean.
* ``embedding_type``: ``"positional"`` (DDPM's sinusoidal embedding of the label) or
  ``"fourier"`` (Gaussian Fourier features of ``log label``; ``fourier_scale`` is the std of the
  frequencies).  The label is what the reference's network is fed: ``time_scale * c`` for the
  conditioning c, with ``time_scale`` 999 by default for the positional embedding (c = t, the
  reference's continuous VP / sub-VP label 999 t) and 1 for the Fourier one (c = sigma(t), its VE
  label).
* ``scale_by_sigma``: divide the output by the label, sigma (VE: the output is then the score).
* ``centered``: inputs in [-1, 1]; otherwise [0, 1] inputs are mapped by ``2 x - 1`` first.
* ``conditional``: condition on the noise level (the time MLP and the blocks' ``Dense_0``);
  not a class label.
* ``skip_rescale``: divide residual, attention and residual-pyramid sums by sqrt(2).
* ``nf``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``dropout``, ``init_scale``,
  ``resamp_with_conv``, ``nonlinearity``.

Checked against the reference's own outputs (``tests/data/score_sde/``, to <= 1e-5 relative; about
1e-6 measured) for BigGAN and DDPM-type blocks, FIR and naive resampling, both pyramids of
each kind the reference runs, both embeddings, with and without conditioning.  Two paths the
reference cannot run, so no checkpoint has them: its non-FIR ``layerspp.Upsample`` passes
``'nearest'`` as ``F.interpolate``'s scale_factor (an error), which breaks DDPM-type blocks
without FIR and the residual output pyramid; here that upsampler is what it evidently means
(nearest, then ``Conv_0``), tested for shapes and gradients only.  FIR upsampling with a conv
(its ``upsample_conv_2d`` slices with a negative step) is refused.

The buffer ``sigmas`` (the reference's discrete VE noise levels, float64) is kept only so the
state_dict matches the reference's; the continuous-time forward never reads it.

Sizes (parameters, counting the frozen Fourier ``W``; ``tests/test_nn_ncsnpp.py``): DDPM++ CIFAR-10
(nf 128, ch_mult 1,2,2,2, 4 blocks, attention at 16, BigGAN blocks, positional) 61,804,419; its
deep variant (8 blocks) 106,632,579; NCSN++ VE CIFAR-10 (FIR, residual input pyramid, Fourier)
62,758,915; deep 107,587,075 -- all equal to the reference's.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layers_pp import (AttnBlockpp, Combine, Downsample, GaussianFourierProjection, ResnetBlockBigGANpp,
                        ResnetBlockDDPMpp, Upsample, check_image_input, conv3x3, default_init_, downsample_fir,
                        fir_kernel_2d,
                        group_norm, naive_downsample, naive_upsample, timestep_embedding, upsample_fir)

Tensor = torch.Tensor

__all__ = ["NCSNpp", "ncsnpp", "ACTIVATIONS", "reference_sigmas"]

ACTIVATIONS = {"swish": F.silu, "elu": F.elu, "relu": F.relu, "lrelu": lambda x: F.leaky_relu(x, 0.2)}
_SQRT2 = math.sqrt(2.0)


def reference_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> Tensor:
    """The reference's discrete noise levels ``exp(linspace(log sigma_max, log sigma_min, N))`` (float64)."""
    return torch.from_numpy(np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), int(num_scales))))


def _choice(name: str, value: str, valid: Sequence[str]) -> str:
    value = str(value).lower()
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")
    return value


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++: ``net(x [B, C, H, W], c [B]) -> [B, C, H, W]`` (see the module docstring).

    ``c`` is the noise conditioning, the network's label is ``time_scale * c``: by default the
    time t for the positional embedding (label 999 t), sigma(t) for the Fourier one (label sigma,
    embedded as ``log sigma``).  Through
    :class:`~scoresde.score.ScoreModel`: VP / sub-VP configs are ``parameterization="noise",
    time_input="t"``; VE configs (Fourier, ``scale_by_sigma``) are ``parameterization="score",
    time_input="sigma"``.
    """

    def __init__(self, image_size: int = 32, num_channels: int = 3, nf: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resamp_with_conv: bool = True,
                 conditional: bool = True, fir: bool = False, fir_kernel: Sequence[float] = (1, 3, 3, 1),
                 skip_rescale: bool = True, resblock_type: str = "biggan", progressive: str = "none",
                 progressive_input: str = "none", progressive_combine: str = "sum",
                 embedding_type: str = "positional", fourier_scale: float = 16.0, init_scale: float = 0.0,
                 scale_by_sigma: bool = False, centered: bool = True, nonlinearity: str = "swish",
                 time_scale: Optional[float] = None, sigma_min: float = 0.01, sigma_max: float = 50.0,
                 num_scales: int = 1000):
        super().__init__()
        # the constructor's arguments, normalised below: what a checkpoint's config must match
        self.hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        resblock_type = _choice("resblock_type", resblock_type, ("ddpm", "biggan"))
        progressive = _choice("progressive", progressive, ("none", "output_skip", "residual"))
        progressive_input = _choice("progressive_input", progressive_input, ("none", "input_skip", "residual"))
        combine = _choice("progressive_combine", progressive_combine, ("sum", "cat"))
        embedding_type = _choice("embedding_type", embedding_type, ("fourier", "positional"))
        nonlinearity = _choice("nonlinearity", nonlinearity, tuple(ACTIVATIONS))
        if not ch_mult or min(ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty list of positive integers, got {ch_mult}")
        if nf < 4 or num_res_blocks < 1 or num_channels < 1:
            raise ValueError(f"nf must be >= 4 and num_res_blocks, num_channels >= 1; got nf={nf}, "
                             f"num_res_blocks={num_res_blocks}, num_channels={num_channels}")
        factor = 2 ** (len(ch_mult) - 1)
        if image_size < factor or image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by 2^(levels - 1) = {factor} "
                             f"for ch_mult={ch_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if fir:
            fir_kernel_2d(fir_kernel)                 # checks the kernel
        if scale_by_sigma and embedding_type != "fourier":
            raise ValueError("scale_by_sigma needs embedding_type='fourier' (the network is fed sigma); "
                             "the reference's positional variant looks sigma up by a discrete index")
        self.image_size, self.num_channels, self.nf = int(image_size), int(num_channels), int(nf)
        self.ch_mult, self.num_res_blocks, self.attn_resolutions = ch_mult, int(num_res_blocks), attn_resolutions
        self.resblock_type, self.progressive, self.progressive_input = resblock_type, progressive, progressive_input
        self.progressive_combine, self.embedding_type = combine, embedding_type
        self.fir, self.fir_kernel, self.skip_rescale = bool(fir), tuple(fir_kernel), bool(skip_rescale)
        self.conditional, self.scale_by_sigma, self.centered = bool(conditional), bool(scale_by_sigma), bool(centered)
        if time_scale is None:
            time_scale = 999.0 if embedding_type == "positional" else 1.0
        self.time_scale = float(time_scale)
        self.hparams.update(ch_mult=list(ch_mult), attn_resolutions=list(attn_resolutions),
                            fir_kernel=[float(k) for k in fir_kernel], resblock_type=resblock_type,
                            progressive=progressive, progressive_input=progressive_input,
                            progressive_combine=combine, embedding_type=embedding_type, nonlinearity=nonlinearity,
                            time_scale=self.time_scale)
        self.act = ACTIVATIONS[nonlinearity]
        self.register_buffer("sigmas", reference_sigmas(sigma_min, sigma_max, num_scales))

        act, temb_dim = self.act, 4 * nf
        resolutions = [image_size // 2 ** i for i in range(len(ch_mult))]
        m: list = []
        if embedding_type == "fourier":
            m.append(GaussianFourierProjection(embedding_size=nf, scale=fourier_scale))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        if conditional:
            for i, o in ((embed_dim, temb_dim), (temb_dim, temb_dim)):
                lin = nn.Linear(i, o)
                default_init_(lin.weight)
                nn.init.zeros_(lin.bias)
                m.append(lin)

        def attn(ch):
            return AttnBlockpp(ch, skip_rescale=skip_rescale, init_scale=init_scale)

        def block(in_ch, out_ch=None, up=False, down=False):
            if resblock_type == "ddpm":
                return ResnetBlockDDPMpp(in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale, act)
            return ResnetBlockBigGANpp(in_ch, out_ch, temb_dim, up, down, dropout, fir, fir_kernel,
                                       skip_rescale, init_scale, act)

        # encoder
        m.append(conv3x3(num_channels, nf))
        skip_chs, in_ch, pyramid_ch = [nf], nf, num_channels
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                m.append(block(in_ch, nf * mult))
                in_ch = nf * mult
                if resolutions[level] in attn_resolutions:
                    m.append(attn(in_ch))
                skip_chs.append(in_ch)
            if level != len(ch_mult) - 1:
                m.append(Downsample(in_ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
                         if resblock_type == "ddpm" else block(in_ch, down=True))
                if progressive_input == "input_skip":
                    m.append(Combine(pyramid_ch, in_ch, method=combine))
                    if combine == "cat":
                        in_ch *= 2
                elif progressive_input == "residual":
                    m.append(Downsample(pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                    pyramid_ch = in_ch
                skip_chs.append(in_ch)

        # middle
        in_ch = skip_chs[-1]
        m += [block(in_ch), attn(in_ch), block(in_ch)]

        # decoder
        out_pyramid_ch = 0
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                m.append(block(in_ch + skip_chs.pop(), nf * ch_mult[level]))
                in_ch = nf * ch_mult[level]
            if resolutions[level] in attn_resolutions:
                m.append(attn(in_ch))
            if progressive != "none":
                if level == len(ch_mult) - 1 or progressive == "output_skip":
                    m.append(group_norm(in_ch))
                    if progressive == "output_skip":
                        m.append(conv3x3(in_ch, num_channels, init_scale=init_scale))
                        out_pyramid_ch = num_channels
                    else:
                        m.append(conv3x3(in_ch, in_ch))
                        out_pyramid_ch = in_ch
                else:                                   # residual, below the coarsest level
                    m.append(Upsample(out_pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                    out_pyramid_ch = in_ch
            if level != 0:
                m.append(Upsample(in_ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
                         if resblock_type == "ddpm" else block(in_ch, up=True))
        assert not skip_chs
        if progressive != "output_skip":
            m.append(group_norm(in_ch))
            m.append(conv3x3(in_ch, num_channels, init_scale=init_scale))
        self.all_modules = nn.ModuleList(m)

    def _resample_image(self, x: Tensor, up: bool) -> Tensor:
        """The parameter-free pyramid resampler (input_skip down, output_skip up)."""
        if up:
            return upsample_fir(x, self.fir_kernel) if self.fir else naive_upsample(x)
        return downsample_fir(x, self.fir_kernel) if self.fir else naive_downsample(x)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        c = check_image_input("NCSNpp", x, c, "c", self.num_channels, self.image_size)
        mods = iter(self.all_modules)
        act = self.act

        def norm_conv(h: Tensor) -> Tensor:       # conv(act(GroupNorm(h))): two modules, in order
            norm = next(mods)
            return next(mods)(act(norm(h)))

        label = c * self.time_scale              # what the reference's network is fed: 999 t or sigma
        if self.embedding_type == "fourier":
            temb = next(mods)(torch.log(label))
        else:
            temb = timestep_embedding(label, self.nf)
        if self.conditional:
            temb = next(mods)(temb)
            temb = next(mods)(act(temb))
        else:
            temb = None
        if not self.centered:
            x = 2 * x - 1.0

        # encoder: every block's output (after its attention) is a skip
        pyramid = x if self.progressive_input != "none" else None
        hs = [next(mods)(x)]
        for level in range(len(self.ch_mult)):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                h = next(mods)(hs[-1]) if self.resblock_type == "ddpm" else next(mods)(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    pyramid = self._resample_image(pyramid, up=False)
                    h = next(mods)(pyramid, h)
                elif self.progressive_input == "residual":
                    pyramid = next(mods)(pyramid)
                    pyramid = (pyramid + h) / _SQRT2 if self.skip_rescale else pyramid + h
                    h = pyramid
                hs.append(h)

        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)

        # decoder
        out_pyramid = None
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            if self.progressive == "output_skip":
                pred = norm_conv(h)
                out_pyramid = pred if out_pyramid is None else self._resample_image(out_pyramid, up=True) + pred
            elif self.progressive == "residual":
                if out_pyramid is None:
                    out_pyramid = norm_conv(h)
                else:
                    out_pyramid = next(mods)(out_pyramid)
                    out_pyramid = (out_pyramid + h) / _SQRT2 if self.skip_rescale else out_pyramid + h
                    h = out_pyramid
            if level != 0:
                h = next(mods)(h) if self.resblock_type == "ddpm" else next(mods)(h, temb)
        assert not hs

        if self.progressive == "output_skip":
            h = out_pyramid
        else:
            h = norm_conv(h)
        assert next(mods, None) is None, "every module is used exactly once"
        if self.scale_by_sigma:
            h = h / label.reshape(-1, 1, 1, 1)
        return h


def ncsnpp(data_shape: Sequence[int], nf: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2),
           num_res_blocks: int = 4, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
           resamp_with_conv: bool = True, conditional: bool = True, fir: bool = False,
           fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True, resblock_type: str = "biggan",
           progressive: str = "none", progressive_input: str = "none", progressive_combine: str = "sum",
           embedding_type: str = "positional", fourier_scale: float = 16.0, init_scale: float = 0.0,
           scale_by_sigma: bool = False, centered: bool = True, nonlinearity: str = "swish",
           time_scale: Optional[float] = None, sigma_min: float = 0.01, sigma_max: float = 50.0,
           num_scales: int = 1000) -> NCSNpp:
    """Registry factory: an :class:`NCSNpp` for samples of shape ``data_shape = [C, H, H]``; the
    defaults are DDPM++ at the CIFAR-10 size (vp/cifar10_ddpmpp_continuous)."""
    shape = tuple(int(d) for d in data_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"NCSN++ needs square images, data_shape [C, H, H]; got {list(shape)}")
    return NCSNpp(image_size=shape[1], num_channels=shape[0], nf=nf, ch_mult=ch_mult,
                  num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
                  resamp_with_conv=resamp_with_conv, conditional=conditional, fir=fir, fir_kernel=fir_kernel,
                  skip_rescale=skip_rescale, resblock_type=resblock_type, progressive=progressive,
                  progressive_input=progressive_input, progressive_combine=progressive_combine,
                  embedding_type=embedding_type, fourier_scale=fourier_scale, init_scale=init_scale,
                  scale_by_sigma=scale_by_sigma, centered=centered, nonlinearity=nonlinearity,
                  time_scale=time_scale, sigma_min=sigma_min, sigma_max=sigma_max, num_scales=num_scales)
