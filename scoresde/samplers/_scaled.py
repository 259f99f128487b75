"""What the few-step solvers (:mod:`.dpm_solver`, :mod:`.unipc`, :mod:`.heun`) share: they step
x~ = x / alpha on a grid of :func:`scoresde.flow.time_grid` with :class:`scoresde.flow.Denoiser`.

End of the trajectory (``denoise``, DPM-Solver++ and Heun).  False: the last step lands on eps and
the sample is x = alpha(eps) x~ (like the ODE sampler).  True: the grid ends at eps one step
earlier and a last step goes to sigma~ = 0; along the exact flow that is the denoiser itself,
x0 = D(x~, eps), a first-order step of one evaluation (EDM's Algorithm 1 ends the same way).
"""

from __future__ import annotations

import torch

from ..flow import Denoiser

Tensor = torch.Tensor


def check_steps(steps, least: int = 1) -> int:
    if int(steps) != steps or steps < least:
        raise ValueError(f"steps must be an integer >= {least}, got {steps}")
    return int(steps)


def grid_steps(steps: int, denoise: bool) -> int:
    """Steps on the time grid: one fewer with ``denoise`` (the last step is D itself)."""
    n_grid = steps - 1 if denoise else steps
    if n_grid < 1:
        raise ValueError("denoise=True needs steps >= 2")
    return n_grid


def record_scaled(ctx, t: float, xt: Tensor, al: float) -> None:
    """Record x = alpha x~ at t; the unscaled state costs a pass over the batch, so only when recorded."""
    if ctx.record_on:
        ctx.record(t, xt * al)


def finish(xt: Tensor, den: Denoiser, denoise: bool, ctx) -> Tensor:
    """The returned sample: the denoiser's D(x~, t_end) (one more evaluation) or alpha x~ at t_end."""
    if denoise:
        ctx.at_step(len(den))      # the last step is the denoiser's evaluation itself
        out = den(xt, len(den) - 1)
        ctx.record(0.0, out)
        return out
    return den.unscale(xt, len(den) - 1)
