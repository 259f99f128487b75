"""k-diffusion out: any score function as a k-diffusion denoiser ``D(x, sigma)`` (Karras et al. 2022's
convention), so k-diffusion's samplers run on it."""

from __future__ import annotations

from typing import Optional

import torch

from ..sde import SDE, ScoreFn, as_time, expand_to

Tensor = torch.Tensor

__all__ = ['KDiffusionDenoiser', 'to_k_diffusion']


class KDiffusionDenoiser:
    """A score function as a k-diffusion denoiser ``D(x, sigma)`` (built by :func:`to_k_diffusion`).

    k-diffusion (Karras et al. 2022) works in the scaled space x~ = x / alpha(t) with
    sigma~ = sigma(t) / alpha(t) = exp(-lambda(t)), where every linear SDE is
    x~ = x0 + sigma~ eps.  Tweedie's formula there reads
    D(x~, sigma~) = x~ + sigma~^2 grad_{x~} log p~ = x~ + (sigma^2 / alpha) score(alpha x~, t),
    with t = t_from_log_snr(-log sigma~).  ``sigma_min`` / ``sigma_max`` are sigma~ at ``eps``
    and T, the range for k-diffusion's sigma schedules; its samplers start from
    ``randn * sigma_max``.
    """

    def __init__(self, score_fn: ScoreFn, sde: SDE, eps: float = 1e-3):
        self.score_fn = score_fn
        self.sde = sde
        sg = torch.exp(-sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64)))
        self.sigma_min, self.sigma_max = float(sg[0]), float(sg[1])

    def __call__(self, x: Tensor, sigma) -> Tensor:
        sigma = as_time(sigma, x)
        if bool((sigma <= 0).any()):
            raise ValueError("sigma must be positive (the denoiser at sigma = 0 is the identity)")
        t = self.sde.t_from_log_snr(-torch.log(sigma.to(torch.float64)))
        al, sg = self.sde.coefs(t, dtype=torch.float64, device=x.device)
        score = self.score_fn(expand_to(al.to(x.dtype), x) * x, t.to(x.dtype))
        return x + expand_to((sg ** 2 / al).to(x.dtype), x) * score


def to_k_diffusion(score_fn: ScoreFn, sde: Optional[SDE] = None, eps: float = 1e-3) -> KDiffusionDenoiser:
    """A score function as a k-diffusion denoiser ``D(x, sigma)`` in the scaled space (see
    :class:`KDiffusionDenoiser`); plain torch, k-diffusion itself is not needed."""
    if sde is None:
        sde = getattr(score_fn, "sde", None)
        if not isinstance(sde, SDE):
            raise ValueError("to_k_diffusion needs the SDE: pass sde= (score_fn has no .sde)")
    return KDiffusionDenoiser(score_fn, sde, eps)
