"""Projection: the replacement method as a score wrapper, so it runs under every sampler."""

from __future__ import annotations


import torch

from ..sde import expand_to
from .base import _Wrapper, _coefs

Tensor = torch.Tensor

__all__ = ['projection']


class projection(_Wrapper):
    """Replacement as a score: observed part from the observation, the rest from the prior's score.

        s~(x, t) = (I - P) s(x, t) - A^T (sigma^2 A A^T + alpha^2 s_y^2 I)^+ (A x - alpha y),

    P = A^+ A.  The second term is the exact score of A x_t given y (A x_t ~ N(alpha y,
    sigma^2 A A^T + alpha^2 s_y^2 I)) pulled back to x; for a mask it is -(x_obs - alpha y) /
    sigma^2 in the observed entries.  So the observed part of x follows a diffusion of the
    observation itself (one continuous path instead of replacement's fresh noise each step), and
    the unobserved part sees the unconditional score at the joint state: the replacement method
    of Song et al. (2021, Sec. 5 and App. I.2) in continuous time, for any sampler (ODE samplers
    included, where it is deterministic).  It shares replacement's bias: the unobserved part is
    never told which modes the observation favours.
    """

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        op, y = self.op, self.y_like(x)
        s = self.score_fn(x, t)
        alpha, sigma = _coefs(self.sde, t, x)
        resid = op.forward(x) - expand_to(alpha, y) * y
        obs = -op.adjoint(op.gram_solve(resid, sigma ** 2, alpha ** 2 * op.noise_std ** 2))
        return s - op.project(s) + obs
