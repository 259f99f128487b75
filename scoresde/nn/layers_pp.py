"""Building blocks of NCSN++ / DDPM++ and DDPM (Song et al., ICLR 2021; Ho et al., NeurIPS 2020).

Every block keeps the attribute names, the parameter shapes and the registration order of
score_sde_pytorch's ``models/layers.py`` and ``models/layerspp.py``, so a state_dict moves between
the two codebases key for key and the EMA shadow list (positional) lines up.  The code is ours;
what must agree is written down here:

* **Initialisation** (``default_init``, DDPM's): uniform variance scaling with fan_avg,
  ``U(-b, b)``, ``b = sqrt(3 scale / ((fan_in + fan_out) / 2))``, fans over the receptive field;
  scale 0 becomes 1e-10 (``init_scale = 0`` makes the last conv of each branch almost, not
  exactly, zero).  Biases start at zero.
* **NIN** (network-in-network, a 1x1 layer) stores ``W`` as ``[in, out]`` (the transpose of an
  ``nn.Linear`` weight) and ``b``; its default init scale is 0.1.
* **GroupNorm**: ``min(C // 4, 32)`` groups in NCSN++/DDPM++ blocks, 32 in DDPM's; eps 1e-6.
* **Skip rescale**: residual sums are divided by sqrt(2), which keeps the sum of two
  unit-variance branches at unit variance.
* **Attention**: one head, ``softmax(q^T k / sqrt(C))`` over all H W positions.
* **Resampling without FIR**: nearest-neighbour up, 2x2 mean down; the DDPM-type strided conv
  pads (0, 1, 0, 1) (TensorFlow's 'SAME' for a stride-2 3x3 conv) and has no padding of its own.
* **FIR resampling** (StyleGAN2's ``upfirdn2d``): the separable kernel ``k k^T / sum(k k^T)``
  (``[1, 3, 3, 1]`` by default).  Up by 2 (gain 4): zero insertion, padding (2, 1), convolution
  with the kernel -- which is one depthwise transposed convolution of stride 2 and padding 1.
  Down by 2: padding (1, 1), convolution, every second sample -- one depthwise strided
  convolution with padding 1.  The conv-then-down layer (``Conv2d_0``, the residual input
  pyramid) blurs with padding (2, 2) and then applies its 3x3 weight at stride 2 without padding.
  These are plain ``conv2d`` / ``conv_transpose2d`` calls: no custom CUDA op, the same code on CPU
  and GPU.  (The kernel is flipped as upfirdn2d's convolution does; the default kernel is
  symmetric, so the flip only matters for a user's asymmetric kernel.)
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

__all__ = ["check_image_input", "default_init_",
           "conv3x3", "conv1x1", "NIN", "GaussianFourierProjection", "timestep_embedding",
           "fir_kernel_2d", "upsample_fir", "downsample_fir", "naive_upsample", "naive_downsample",
           "FIRDownConv2d", "Combine", "AttnBlockpp", "Upsample", "Downsample", "ResnetBlockDDPMpp",
           "ResnetBlockBigGANpp", "AttnBlockDDPM", "UpsampleDDPM", "DownsampleDDPM", "ResnetBlockDDPM",
           "groups_pp", "group_norm"]

_SQRT2 = math.sqrt(2.0)


def check_image_input(net: str, x: Tensor, t, t_name: str, channels: int, size: int) -> Tensor:
    """Check ``x`` is ``[B, channels, size, size]`` and return the per-sample ``t`` as ``[B]``
    (a scalar is broadcast); a mismatch is a ValueError naming ``net`` and the argument."""
    if x.ndim != 4 or x.shape[1] != channels or tuple(x.shape[2:]) != (size,) * 2:
        raise ValueError(f"{net} expects x of shape [B, {channels}, {size}, {size}], got {list(x.shape)}")
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"{t_name} must have shape [B] = [{x.shape[0]}], got {list(t.shape)}")
    return t


def groups_pp(channels: int) -> int:
    """NCSN++'s GroupNorm group count min(C // 4, 32) (C must be a multiple of it, as in the reference)."""
    return min(channels // 4, 32)


def group_norm(channels: int, groups: Optional[int] = None) -> nn.GroupNorm:
    """GroupNorm (eps 1e-6) with ``groups`` groups (default NCSN++'s min(C // 4, 32)); an error names
    the width when C is not a multiple of the group count (the widths come from nf, ch_mult and the
    U-Net's concatenations)."""
    g = groups_pp(channels) if groups is None else groups
    if g < 1 or channels % g:
        raise ValueError(f"GroupNorm over {channels} channels needs a group count dividing it, got {g} "
                         f"(min(C // 4, 32) in NCSN++, 32 in DDPM); choose nf so that every width divides")
    return nn.GroupNorm(g, channels, eps=1e-6)


def default_init_(tensor: Tensor, scale: float = 1.0) -> Tensor:
    """DDPM's initialisation in place: U(-b, b), b = sqrt(3 scale / fan_avg); scale 0 -> 1e-10.

    Fans as the reference computes them: axis 1 is "in", axis 0 is "out", times the receptive
    field (the product of the remaining axes).  fan_avg is symmetric, so NIN's ``[in, out]``
    layout gets the same bound as a Linear's ``[out, in]``.
    """
    scale = 1e-10 if scale == 0 else float(scale)
    shape = tensor.shape
    receptive = math.prod(shape) / shape[1] / shape[0]
    fan_avg = (shape[0] + shape[1]) * receptive / 2.0
    bound = math.sqrt(3.0 * scale / fan_avg)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def _conv(in_ch: int, out_ch: int, k: int, stride: int, padding: int, bias: bool, init_scale: float) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=padding, bias=bias)
    default_init_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
            padding: int = 1) -> nn.Conv2d:
    """3x3 convolution with DDPM's initialisation."""
    return _conv(in_ch, out_ch, 3, stride, padding, bias, init_scale)


def conv1x1(in_ch: int, out_ch: int, bias: bool = True, init_scale: float = 1.0) -> nn.Conv2d:
    """1x1 convolution with DDPM's initialisation."""
    return _conv(in_ch, out_ch, 1, 1, 0, bias, init_scale)


def _linear(in_dim: int, out_dim: int) -> nn.Linear:
    lin = nn.Linear(in_dim, out_dim)
    default_init_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


class NIN(nn.Module):
    """A 1x1 layer over channels: ``y[b, :, h, w] = W^T x[b, :, h, w] + b`` with ``W`` stored ``[in, out]``."""

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(default_init_(torch.empty(in_dim, out_dim), init_scale))
        self.b = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: Tensor) -> Tensor:
        # a 1x1 convolution with weight W^T: 20% faster than the reference's permute + einsum on a CPU
        return F.conv2d(x, self.W.t()[:, :, None, None], self.b)


class GaussianFourierProjection(nn.Module):
    """``[sin(2 pi W s), cos(2 pi W s)]`` of a scalar s, W ~ N(0, scale^2) of size ``embedding_size``.

    ``W`` is a Parameter with ``requires_grad=False`` (as in the reference): it is in the
    state_dict and in ``parameters()``, but not in the EMA shadow list, which keeps only
    trainable parameters.  The product is taken in the reference's order, ``((s W) 2) pi``: the
    arguments reach ~10^3 at NCSN++'s scale 16, where one float32 ulp of the argument is 6e-5.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, s: Tensor) -> Tensor:
        proj = s[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def timestep_embedding(timesteps: Tensor, dim: int, max_positions: float = 10000.0) -> Tensor:
    """DDPM's sinusoidal embedding: ``[sin(s w_i), cos(s w_i)]``, ``w_i = max_positions^(-i / (half - 1))``.

    Note ``half - 1`` (so the lowest frequency is exactly 1 / max_positions) and float32
    arithmetic whatever the input dtype, as the reference computes it; an odd ``dim`` gets one
    zero column.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device)
                      * -(math.log(max_positions) / (half - 1)))
    arg = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


# --- resampling -------------------------------------------------------------------------------

def fir_kernel_2d(k: Sequence[float], gain: float = 1.0) -> Tensor:
    """The normalised separable FIR kernel ``gain k k^T / sum(k k^T)`` (float32)."""
    k1 = torch.as_tensor(k, dtype=torch.float32)
    if k1.ndim != 1 or k1.numel() < 2:
        raise ValueError(f"fir_kernel must be a 1-D list of at least 2 numbers, got {list(k)!r}")
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum() * gain          # float32 throughout, as the reference's numpy setup


def _depthwise(kernel: Tensor, x: Tensor) -> Tensor:
    """The flipped kernel repeated for each channel: upfirdn2d's convolution as a grouped conv weight."""
    return torch.flip(kernel, [0, 1]).to(dtype=x.dtype, device=x.device).expand(x.shape[1], 1, *kernel.shape)


def upsample_fir(x: Tensor, k: Sequence[float] = (1, 3, 3, 1)) -> Tensor:
    """Upsample by 2 with the FIR kernel K (gain 4) as one depthwise transposed convolution.

    The reference inserts zeros, pads by ``(pad0, pad1) = ((n - 1) // 2 + 1, (n - 2) // 2)`` and
    convolves with the n x n kernel, so output sample o is ``sum_i x[i] K[o + n - 1 - pad0 - 2 i]``:
    the stride-2 transposed convolution with weight K, cropped by ``n - 1 - pad0`` in front and
    ``n - 2 - pad1`` behind (1 and 1 for ``[1, 3, 3, 1]``: conv_transpose2d's ``padding=1``).
    """
    kernel = fir_kernel_2d(k, gain=4.0)
    n = kernel.shape[0]
    pad0, pad1 = (n - 1) // 2 + 1, (n - 2) // 2
    crop0, crop1 = n - 1 - pad0, n - 2 - pad1
    w = torch.flip(_depthwise(kernel, x), [2, 3])     # conv_transpose applies the kernel unflipped
    if crop0 == crop1:
        return F.conv_transpose2d(x, w, stride=2, padding=crop0, groups=x.shape[1])
    out = F.conv_transpose2d(x, w, stride=2, groups=x.shape[1])
    return out[..., crop0:out.shape[-2] - crop1, crop0:out.shape[-1] - crop1]


def downsample_fir(x: Tensor, k: Sequence[float] = (1, 3, 3, 1)) -> Tensor:
    """Downsample by 2 with the FIR kernel (gain 1): pad ((n - 1) // 2, (n - 2) // 2), convolve at stride 2."""
    kernel = fir_kernel_2d(k)
    n = kernel.shape[0]
    p = n - 2
    pad0, pad1 = (p + 1) // 2, p // 2
    w = _depthwise(kernel, x)
    if pad0 == pad1:
        return F.conv2d(x, w, stride=2, padding=pad0, groups=x.shape[1])
    return F.conv2d(F.pad(x, (pad0, pad1, pad0, pad1)), w, stride=2, groups=x.shape[1])


def naive_upsample(x: Tensor) -> Tensor:
    """Nearest-neighbour upsampling by 2."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def naive_downsample(x: Tensor) -> Tensor:
    """2x2 mean pooling."""
    return F.avg_pool2d(x, 2, stride=2)


class FIRDownConv2d(nn.Module):
    """The reference's ``up_or_down_sampling.Conv2d(down=True)``: FIR blur, then a 3x3 conv at stride 2.

    The blur pads by ``((p + 1) // 2, p // 2)`` with ``p = (n - 2) + (3 - 1)``; the conv has no
    padding.  Weight ``[out, in, 3, 3]`` and bias ``[out]`` sit on this module, as ``weight`` and
    ``bias``.
    """

    def __init__(self, in_ch: int, out_ch: int, fir_kernel: Sequence[float] = (1, 3, 3, 1), kernel: int = 3):
        super().__init__()
        self.weight = nn.Parameter(default_init_(torch.empty(out_ch, in_ch, kernel, kernel)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.fir_kernel = tuple(fir_kernel)

    def forward(self, x: Tensor) -> Tensor:
        kernel = fir_kernel_2d(self.fir_kernel)
        p = (kernel.shape[0] - 2) + (self.weight.shape[-1] - 1)
        pad0, pad1 = (p + 1) // 2, p // 2
        w = _depthwise(kernel, x)
        if pad0 == pad1:
            x = F.conv2d(x, w, padding=pad0, groups=x.shape[1])
        else:
            x = F.conv2d(F.pad(x, (pad0, pad1, pad0, pad1)), w, groups=x.shape[1])
        return F.conv2d(x, self.weight, self.bias, stride=2)


# --- NCSN++ / DDPM++ blocks -------------------------------------------------------------------

class Combine(nn.Module):
    """Input-pyramid merge (``input_skip``): ``Conv_0`` (1x1) of the pyramid, then sum with or concatenate to h."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"unknown progressive_combine {method!r}; valid: 'sum', 'cat'")
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, pyramid: Tensor, h: Tensor) -> Tensor:
        p = self.Conv_0(pyramid)
        return torch.cat([p, h], dim=1) if self.method == "cat" else p + h


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """One head over the H W positions: ``out[:, :, p] = sum_j softmax_j(q_p . k_j / sqrt(C)) v_j``."""
    B, C, H, W = q.shape
    logits = torch.einsum("bcp,bcj->bpj", q.reshape(B, C, H * W), k.reshape(B, C, H * W)) * (int(C) ** -0.5)
    return torch.einsum("bpj,bcj->bcp", logits.softmax(dim=-1), v.reshape(B, C, H * W)).reshape(B, C, H, W)


class AttnBlockpp(nn.Module):
    """Self-attention with a residual connection, ``(x + NIN_3(attn)) / sqrt(2)`` under skip_rescale."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        h = self.GroupNorm_0(x)
        h = self.NIN_3(_attention(self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)))
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class Upsample(nn.Module):
    """NCSN++'s upsampler: nearest (+ ``Conv_0`` 3x3) or FIR (without a conv).

    The reference's non-FIR branch calls ``F.interpolate(x, (2H, 2W), 'nearest')``, which passes
    'nearest' as the scale factor and fails; this is the nearest upsampling it means.

    FIR with a conv (the reference's ``Conv2d_0`` with ``up=True``) does not run in the reference
    (it slices a tensor with a negative step), so no checkpoint has one; it is refused here.
    """

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if fir and with_conv:
            raise ValueError("FIR upsampling with a convolution (fir=True with resamp_with_conv=True in a "
                             "'ddpm' resblock network, or progressive='residual' with fir=True) does not run "
                             "in score_sde_pytorch, so no checkpoint has it; use fir=False there")
        if with_conv:
            self.Conv_0 = conv3x3(in_ch, out_ch)
        self.fir, self.with_conv, self.fir_kernel = fir, with_conv, tuple(fir_kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self.fir:
            return upsample_fir(x, self.fir_kernel)
        h = naive_upsample(x)
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """NCSN++'s downsampler: mean pool, DDPM's padded stride-2 ``Conv_0``, FIR, or FIR + ``Conv2d_0``."""

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir:
            self.Conv2d_0 = FIRDownConv2d(in_ch, out_ch, fir_kernel)
        elif with_conv:
            self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        self.fir, self.with_conv, self.fir_kernel = fir, with_conv, tuple(fir_kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else downsample_fir(x, self.fir_kernel)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return naive_downsample(x)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM's residual block with NCSN++'s GroupNorm, init_scale and skip rescale.

    ``h = Conv_0(act(GN_0(x))) + Dense_0(act(temb));  h = Conv_1(Dropout(act(GN_1(h))))``;
    the skip is ``NIN_0(x)`` when the width changes; out = ``(skip + h) / sqrt(2)`` under skip_rescale.
    """

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, temb_dim: Optional[int] = None,
                 dropout: float = 0.1, skip_rescale: bool = False, init_scale: float = 0.0, act=F.silu):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = _linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            self.NIN_0 = NIN(in_ch, out_ch)
        self.skip_rescale, self.act, self.out_ch = skip_rescale, act, out_ch

    def forward(self, x: Tensor, temb: Optional[Tensor] = None) -> Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if x.shape[1] != self.out_ch:
            x = self.NIN_0(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN's residual block, optionally resampling (``up`` / ``down``) inside.

    ``h = act(GN_0(x))``; both h and x are resampled (FIR or naive); ``h = Conv_0(h) +
    Dense_0(act(temb))``; ``h = Conv_1(Dropout(act(GN_1(h))))``; the skip is ``Conv_2(x)`` (1x1)
    when the width changes or the block resamples; out = ``(skip + h) / sqrt(2)`` under skip_rescale.
    """

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, temb_dim: Optional[int] = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True,
                 init_scale: float = 0.0, act=F.silu):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = _linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.project = in_ch != out_ch or up or down
        if self.project:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, tuple(fir_kernel)
        self.skip_rescale, self.act = skip_rescale, act

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return upsample_fir(x, self.fir_kernel) if self.fir else naive_upsample(x)
        if self.down:
            return downsample_fir(x, self.fir_kernel) if self.fir else naive_downsample(x)
        return x

    def forward(self, x: Tensor, temb: Optional[Tensor] = None) -> Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.project:
            x = self.Conv_2(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


# --- DDPM (Ho et al.) blocks: 32 groups, no skip rescale ---------------------------------------

class AttnBlockDDPM(nn.Module):
    """DDPM's self-attention block: GroupNorm(32), NIN q/k/v/out (out at init scale 0), ``x + h``."""

    def __init__(self, channels: int):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels, 32)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=0.0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.GroupNorm_0(x)
        return x + self.NIN_3(_attention(self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)))


class UpsampleDDPM(nn.Module):
    """Nearest-neighbour upsampling by 2, then ``Conv_0`` (3x3) if ``with_conv``."""

    def __init__(self, channels: int, with_conv: bool = False):
        super().__init__()
        if with_conv:
            self.Conv_0 = conv3x3(channels, channels)
        self.with_conv = with_conv

    def forward(self, x: Tensor) -> Tensor:
        h = naive_upsample(x)
        return self.Conv_0(h) if self.with_conv else h


class DownsampleDDPM(nn.Module):
    """Pad (0, 1, 0, 1) and a stride-2 ``Conv_0`` (3x3) if ``with_conv``, else 2x2 mean pooling."""

    def __init__(self, channels: int, with_conv: bool = False):
        super().__init__()
        if with_conv:
            self.Conv_0 = conv3x3(channels, channels, stride=2, padding=0)
        self.with_conv = with_conv

    def forward(self, x: Tensor) -> Tensor:
        return self.Conv_0(F.pad(x, (0, 1, 0, 1))) if self.with_conv else naive_downsample(x)


class ResnetBlockDDPM(nn.Module):
    """DDPM's residual block: as :class:`ResnetBlockDDPMpp` with GroupNorm(32), the last conv at
    init scale 0 and a plain sum ``x + h``."""

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, temb_dim: Optional[int] = None,
                 dropout: float = 0.1, act=F.silu):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch, 32)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = _linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, 32)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=0.0)
        if in_ch != out_ch:
            self.NIN_0 = NIN(in_ch, out_ch)
        self.act, self.out_ch = act, out_ch

    def forward(self, x: Tensor, temb: Optional[Tensor] = None) -> Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if x.shape[1] != self.out_ch:
            x = self.NIN_0(x)
        return x + h
