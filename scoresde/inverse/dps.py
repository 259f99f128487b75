"""DPS: Diffusion Posterior Sampling (Chung et al., ICLR 2023), a score wrapper."""

from __future__ import annotations


import torch

from .base import _Wrapper, _coefs, tweedie

Tensor = torch.Tensor

__all__ = ['dps']


class dps(_Wrapper):
    """Diffusion Posterior Sampling (Chung, Kim, McCann, Klasky & Ye, ICLR 2023, Algorithm 1) as a score.

    With Tweedie's x0_hat(x_t) = (x_t + sigma^2 s(x_t, t)) / alpha and the residual r = y - A x0_hat,
    DPS approximates p(y | x_t) by p(y | x0 = x0_hat) and, for Gaussian noise, replaces the
    likelihood's 1 / (2 s_y^2) by the step zeta_i = zeta' / |r| (their Alg. 1), which gives

        s~(x, t) = s(x, t) - (scale / |r|) grad_x |r|^2 = s(x, t) - 2 scale grad_x |r|

    (per sample; the gradient flows through the score: one backward pass a call).  Chung et al.
    apply zeta_i per DDPM step (1,000 steps); as a score term the step is divided by the step's
    variance, so ``scale`` is not their zeta' (``scale`` = zeta' / (g^2 dt)).  The default
    ``scale`` is the one that measured best on the mixture problems (see the benchmarks).
    """

    def __init__(self, score_fn, sde, op, y, scale: float = 1.0):
        super().__init__(score_fn, sde, op, y)
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.scale = float(scale)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        y = self.y_like(x)
        alpha, sigma = _coefs(self.sde, t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = self.score_fn(xg, t)
            r = y - self.op.forward(tweedie(xg, s, alpha, sigma))
            norm = torch.linalg.vector_norm(r.reshape(r.shape[0], -1), dim=1)
            grad, = torch.autograd.grad(norm.sum(), xg)
        self.backward_passes += 1
        return s.detach() - 2.0 * self.scale * grad
