"""RePaint (Lugmayr et al., CVPR 2022): replacement with resampling jumps."""

from __future__ import annotations

import math
from typing import List

import torch

from ..samplers import SamplerContext
from ..sde import SDE, _transition
from .operators import LinearOperator

Tensor = torch.Tensor

__all__ = ['repaint', 'repaint_schedule']


def repaint_schedule(steps: int, jump_length: int = 10, jumps: int = 10) -> List[int]:
    """RePaint's time-index schedule (Lugmayr et al. 2022, App. B; ``get_schedule_jump`` of their code).

    Indices run from ``steps`` (t = T) down to 0 (t = eps).  Every ``jump_length`` indices the
    sampler jumps ``jump_length`` steps back up (re-noising by the forward process) and comes
    down again, ``jumps - 1`` times, so each such stretch is traversed ``jumps`` times (their r).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if int(jump_length) != jump_length or jump_length < 1:
        raise ValueError(f"jump_length must be a positive integer, got {jump_length}")
    if int(jumps) != jumps or jumps < 1:
        raise ValueError(f"jumps must be a positive integer, got {jumps}")
    left = {j: jumps - 1 for j in range(0, steps - jump_length, jump_length)}
    t, ts = steps, [steps]
    while t >= 1:
        t -= 1
        ts.append(t)
        if left.get(t, 0) > 0:
            left[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    return ts


def repaint(score_fn, sde: SDE, op: LinearOperator, y: Tensor, x: Tensor, ctx: SamplerContext, *,
            eps: float, steps: int = 250, jump_length: int = 10, jumps: int = 10, denoise: bool = True) -> Tensor:
    """RePaint (Lugmayr, Danelljan, Romero, Yu, Timofte & Van Gool, CVPR 2022, Algorithm 1).

    On the uniform grid of ``steps`` steps from T to eps, a step down is the ancestral step
    (``sde.ancestral_coefs``: DDPM's for VP) followed by the replacement of the observed part by
    alpha(s) y + sigma(s) A z (their x^known_{t-1}); a step up is the forward transition
    x <- a x + sqrt(v) z (their x_t ~ N(sqrt(1 - beta_t) x_{t-1}, beta_t I)).  The order of the
    steps is :func:`repaint_schedule` (defaults: their T = 250, jump length j = 10, r = 10
    resamplings).  NFE = the number of steps down.  The resampling lets the unobserved part
    harmonize with the observation, which lowers replacement's bias but does not remove it.
    Noisy observations are used as if exact.
    """
    grid = torch.linspace(eps, sde.T, int(steps) + 1, dtype=torch.float64).tolist()  # index k -> time
    sched = repaint_schedule(steps, jump_length, jumps)
    ctx.expect_nfe(sum(1 for a, b in zip(sched, sched[1:]) if b < a))
    B = x.shape[0]

    def replace(v: Tensor, tau: float, noisy: bool) -> Tensor:
        c = sde.scalars(tau)
        target = c.alpha * y
        if noisy:
            target = target + c.sigma * op.forward(ctx.randn_like(v))
        return v + op.pinv(target - op.forward(v))

    x = replace(x, grid[-1], True)
    mean = x
    for step, (k, j) in enumerate(zip(sched, sched[1:]), 1):
        ctx.at_step(step)
        ct, cs = sde.scalars(grid[k]), sde.scalars(grid[j])
        if j < k:
            score = score_fn(x, torch.full((B,), grid[k], dtype=x.dtype, device=x.device))
            cx, c_score, var = sde.ancestral_coefs(ct.alpha, ct.sigma, cs.alpha, cs.sigma)
            mean = torch.add(x * cx, score, alpha=c_score)
            x = replace(torch.add(mean, ctx.randn_like(x), alpha=math.sqrt(var)), grid[j], True)
            mean = replace(mean, grid[j], False)
        else:
            a, v = _transition(cs.alpha, cs.sigma, ct.alpha, ct.sigma)
            x = torch.add(x * a, ctx.randn_like(x), alpha=math.sqrt(v))
    return mean if denoise else x
