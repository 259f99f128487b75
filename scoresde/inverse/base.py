"""What every posterior method shares: the result type, Tweedie's denoiser and the score-wrapper base."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch

from ..samplers import SampleResult
from ..sde import SDE, ScoreFn, as_time, expand_to
from .operators import LinearOperator

Tensor = torch.Tensor

__all__ = ['PosteriorResult', 'tweedie']


@dataclass
class PosteriorResult(SampleResult):
    """What :func:`sample_posterior` returns: a :class:`SampleResult` plus

    ``method``; ``backward_passes`` (vector-Jacobian products through ``score_fn``);
    ``info`` (method facts, e.g. the SMC's number of resampling steps).  ``nfe`` counts every
    forward pass of ``score_fn`` (``forward_passes`` is the same number)."""

    method: str = ""
    backward_passes: int = 0
    info: dict = field(default_factory=dict)

    @property
    def forward_passes(self) -> int:
        return self.nfe


def tweedie(x: Tensor, score: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Tweedie's denoiser E[x0 | x_t] = (x + sigma^2 score) / alpha (``alpha``, ``sigma`` ``[B]``)."""
    return (x + expand_to(sigma, x) ** 2 * score) / expand_to(alpha, x)


def _coefs(sde: SDE, t: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
    t = as_time(t, x)
    return sde.mean_coef(t), sde.std(t)


# -- score wrappers ----------------------------------------------------------------------------------
class _Wrapper:
    """A score function built on ``score_fn`` that counts its backward passes."""

    def __init__(self, score_fn: ScoreFn, sde: SDE, op: LinearOperator, y: Tensor):
        self.score_fn, self.sde, self.op, self.y = score_fn, sde, op, y
        self.backward_passes = 0
        self._y: Dict[object, Tensor] = {}

    def y_like(self, x: Tensor) -> Tensor:
        key = (x.dtype, str(x.device))
        if key not in self._y:
            self._y[key] = self.y.to(device=x.device, dtype=x.dtype)
        y = self._y[key]
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has batch {y.shape[0]} but x has {x.shape[0]}: give one observation a sample")
        return y


# -- methods with their own loop ------------------------------------------------------------------
def _uniform_grid(sde: SDE, steps: int, eps: float) -> List[float]:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    return torch.linspace(sde.T, eps, int(steps) + 1, dtype=torch.float64).tolist()
