"""Shared by the Inception tests and their reference generator: random FID-Inception weights from a
seed (He-scaled convolutions, so activations stay O(1) through the 94 layers), and fixed inputs."""

import math

import torch

from scoresde.metrics.inception import FIDInceptionNet


def random_inception_state(seed: int = 0) -> dict:
    """A state dict with the FID Inception's keys and shapes, drawn from ``seed`` in key order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in FIDInceptionNet().state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros_like(v)
        elif k.endswith("conv.weight"):
            fan_in = v[0].numel()
            out[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif k.endswith("bn.weight") or k.endswith("running_var"):
            out[k] = 1 + 0.1 * torch.rand(v.shape, generator=g)
        elif k.startswith("fc."):
            out[k] = 0.02 * torch.randn(v.shape, generator=g)
        else:                                           # bn.bias, running_mean
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
    return out


def reference_images() -> torch.Tensor:
    """Three uint8 RGB 32x32 images: noise, a gradient, a checkerboard."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
    ramp = (torch.arange(32) * 8).to(torch.uint8).expand(3, 32, 32)
    ij = torch.arange(32)
    checker = (((ij[:, None] // 4 + ij[None, :] // 4) % 2) * 255).to(torch.uint8).expand(3, 32, 32)
    return torch.stack([noise, ramp.clone(), checker.clone()])
