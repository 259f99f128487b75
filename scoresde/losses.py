"""Continuous-time denoising score matching (Song et al. 2021, eq. 7; Vincent 2011).

For data x0, t ~ U(eps, T), z ~ N(0, I) and x_t = alpha(t) x0 + sigma(t) z, the per-sample loss is

    l(x0, t, z) = lambda(t) * R( s(x_t, t) + z / sigma(t) )^2

where z / sigma = -grad log p(x_t | x0) and R reduces the squared error over the data dims:
``"mean"`` averages (Song et al.'s ``reduce_mean=True``), ``"sum"`` takes ``1/2 sum`` (their
``reduce_mean=False``, the 1/2 of the likelihood bound).  Weightings:

* ``"sigma2"``: lambda = sigma(t)^2, so l = R(sigma s + z)^2, the noise-prediction loss of DDPM.
* ``"likelihood"``: lambda = g(t)^2, the weighting under which the time integral of the loss
  bounds the negative log-likelihood (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood
  training of score-based diffusion models", Thm. 1).

Every loss here estimates the same quantity, the time average E_{t ~ U(eps, T)} E[l], so their
values compare.  With ``importance_sampling=True`` (likelihood weighting only) t is drawn instead
from q(t) proportional to g(t)^2 / sigma(t)^2, which removes the 1/t spike of the likelihood
weighting at small t (Song et al. 2021, Sec. 5).  For any linear SDE
g^2 = d sigma^2/dt - 2 f sigma^2, hence g^2 / sigma^2 = -2 d lambda_snr / dt with the log-SNR
lambda_snr = log(alpha / sigma): q is uniform in log-SNR, sampled exactly by inverting the
log-SNR, and has normaliser Z = 2 (lambda_snr(eps) - lambda_snr(T)).  The importance weight is
lambda / ((T - eps) q) = Z sigma^2 / (T - eps), so

    l_IS = Z / (T - eps) * R(sigma s + z)^2,      E_q[l_IS] = E_{U(eps, T)}[l_likelihood].

Label dropout (classifier-free guidance, Ho & Salimans 2022, Alg. 1).  With ``labels`` the score
is ``s(x_t, t, y)``, and each label is replaced by the null label K (``score_fn.num_classes``)
with probability ``p_uncond``: one network learns both grad log p_t(x | y) and, at the null
label, grad log p_t(x) (the minimiser of the DSM loss over the dropped samples, which are
distributed as the unconditional data).  The drop draws come from the caller's generator after
t and the noise, so t and z are the same with or without labels.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable, Optional, Tuple

import torch

from .sde import SDE, expand_to

Tensor = torch.Tensor

__all__ = ["dsm_loss", "DSMLoss", "drop_labels", "sample_time", "importance_time", "importance_norm",
           "bound_constant", "dsm_bound", "WEIGHTINGS", "REDUCTIONS", "LOSSES"]

WEIGHTINGS = ("sigma2", "likelihood")
REDUCTIONS = ("mean", "sum")


def _check(sde: SDE, eps: float, weighting: str, reduction: str, importance_sampling: bool) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid names: {list(WEIGHTINGS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid names: {list(REDUCTIONS)}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling is defined for weighting='likelihood' only "
                         f"(got weighting={weighting!r})")


def sample_time(sde: SDE, n: int, eps: float = 1e-5, generator: Optional[torch.Generator] = None,
                dtype=None, device=None) -> Tensor:
    """t ~ U(eps, T), shape ``[n]``."""
    device = device if device is not None else (generator.device if generator is not None else None)
    u = torch.rand(n, generator=generator, dtype=dtype, device=device)
    return eps + (sde.T - eps) * u


def _log_snr_range(sde: SDE, eps: float) -> Tuple[Tensor, Tensor]:
    ends = sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64))
    return ends[0], ends[1]


def importance_norm(sde: SDE, eps: float = 1e-5) -> float:
    """Z = int_eps^T g(t)^2 / sigma(t)^2 dt = 2 (log_snr(eps) - log_snr(T))."""
    hi, lo = _log_snr_range(sde, eps)
    return float(2.0 * (hi - lo))


def importance_time(sde: SDE, n: int, eps: float = 1e-5, generator: Optional[torch.Generator] = None,
                    dtype=None, device=None) -> Tensor:
    """t ~ q(t) proportional to g(t)^2 / sigma(t)^2 on [eps, T], shape ``[n]`` (uniform in log-SNR)."""
    device = device if device is not None else (generator.device if generator is not None else None)
    hi, lo = _log_snr_range(sde, eps)
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    lam = hi.to(u.device) + u * (lo - hi).to(u.device)
    t = sde.t_from_log_snr(lam).clamp(eps, sde.T)
    return t.to(dtype or torch.get_default_dtype())


def dsm_loss(score_fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, x0: Tensor, *,
             weighting: str = "sigma2", importance_sampling: bool = False, eps: float = 1e-5,
             reduction: str = "mean", generator: Optional[torch.Generator] = None,
             t: Optional[Tensor] = None, noise: Optional[Tensor] = None,
             labels: Optional[Tensor] = None, p_uncond: float = 0.1) -> Tensor:
    """Per-sample denoising score-matching losses ``[B]`` (see the module docstring).

    ``t`` and ``noise`` may be given (common random numbers in tests); otherwise they are drawn
    with ``generator`` on x0's device.  ``labels [B]`` (integers in [0, K)) train a
    class-conditional ``score_fn(x, t, y)`` with ``num_classes`` K, each label dropped to the null
    label K with probability ``p_uncond``; without labels ``p_uncond`` is unused.
    """
    _check(sde, eps, weighting, reduction, importance_sampling)
    B = x0.shape[0]
    if t is None:
        draw = importance_time if importance_sampling else sample_time
        t = draw(sde, B, eps, generator=generator, dtype=x0.dtype, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    xt = sde.perturb(x0, t, noise)
    # the squared error in at least float32, also under autocast (half-precision scores)
    ct = torch.promote_types(x0.dtype, torch.float32)
    if labels is None:
        score = score_fn(xt, t).to(ct)
    else:
        y = drop_labels(labels, getattr(score_fn, "num_classes", 0), p_uncond, B, generator, x0.device)
        score = score_fn(xt, t, y).to(ct)
    noise, tc = noise.to(ct), t.to(ct)
    sigma = sde.std(tc)
    err = expand_to(sigma, score) * score + noise              # sigma s + z
    if weighting == "likelihood" and not importance_sampling:
        err = expand_to(sde.diffusion(tc) / sigma, score) * err  # g (s + z / sigma)
    sq = err.pow(2).reshape(B, -1)
    per = sq.mean(1) if reduction == "mean" else 0.5 * sq.sum(1)
    if importance_sampling:
        per = per * (importance_norm(sde, eps) / (sde.T - eps))
    return per


def drop_labels(labels: Tensor, num_classes: int, p_uncond: float, batch: int,
                generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """``labels`` with each entry replaced by the null label ``num_classes`` with prob. ``p_uncond``."""
    if not num_classes:
        raise ValueError("labels need a class-conditional score model (score_fn.num_classes > 0)")
    if not (isinstance(p_uncond, (int, float)) and 0.0 <= p_uncond <= 1.0):
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond!r}")
    y = torch.as_tensor(labels, device=device)
    if y.is_floating_point() or y.dtype == torch.bool or y.shape != (batch,):
        raise ValueError(f"labels must be an integer tensor of shape [B] = [{batch}], got "
                         f"{y.dtype} {tuple(y.shape)}")
    if ((y < 0) | (y >= num_classes)).any():
        raise ValueError(f"labels must lie in [0, {num_classes}), got values {sorted(set(y.tolist()))}")
    y = y.long()
    if p_uncond > 0:
        gdev = generator.device if generator is not None else device
        drop = (torch.rand(batch, generator=generator, device=gdev) < p_uncond).to(y.device)
        y = torch.where(drop, torch.full_like(y, num_classes), y)
    return y


@dataclass
class DSMLoss:
    """The training loss as a callable ``loss(score_model, x0, generator) -> scalar``.

    ``score_model`` needs ``.sde``; the batch mean of :func:`dsm_loss` is returned.  With
    ``labels`` (a class-conditional model) each is dropped to the null label with probability
    ``p_uncond``.
    """

    weighting: str = "sigma2"
    importance_sampling: bool = False
    eps: float = 1e-5
    reduction: str = "mean"
    p_uncond: float = 0.1

    def __post_init__(self):
        # the floor of the training times t ~ U(eps, T): above 0 (sigma(0) = 0 divides) and below T = 1
        if isinstance(self.eps, bool) or not (isinstance(self.eps, (int, float)) and 0.0 < self.eps < 1.0):
            raise ValueError(f"eps must lie in (0, 1), got {self.eps!r}")
        if not (isinstance(self.p_uncond, (int, float)) and 0.0 <= self.p_uncond <= 1.0):
            raise ValueError(f"p_uncond must lie in [0, 1], got {self.p_uncond!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; valid names: {list(WEIGHTINGS)}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; valid names: {list(REDUCTIONS)}")
        if self.importance_sampling and self.weighting != "likelihood":
            raise ValueError("importance_sampling is defined for weighting='likelihood' only")

    def per_sample(self, score_model, x0: Tensor, generator: Optional[torch.Generator] = None, **kw) -> Tensor:
        return dsm_loss(score_model, score_model.sde, x0, weighting=self.weighting,
                        importance_sampling=self.importance_sampling, eps=self.eps,
                        reduction=self.reduction, generator=generator, p_uncond=self.p_uncond, **kw)

    def __call__(self, score_model, x0: Tensor, generator: Optional[torch.Generator] = None,
                 labels: Optional[Tensor] = None) -> Tensor:
        return self.per_sample(score_model, x0, generator, labels=labels).mean()


LOSSES = {"dsm": DSMLoss}
"""The training losses by the name a config's ``loss.name`` gives; the other keys are the
constructor's keyword arguments."""


def bound_constant(sde: SDE, x0: Tensor, eps: float = 1e-5) -> Tensor:
    r"""C(x0) ``[B]`` (nats): with likelihood weighting and ``reduction="sum"``, C - (T - eps) E[loss]
    is a lower bound on E log q_eps(x_eps) over the data blurred to eps, x_eps ~ N(alpha_eps x0,
    sigma_eps^2 I), for the SDE's prior N(0, s^2 I).

    Derivation.  Average the per-point bound of ``scoresde.likelihood.elbo`` (transitions from eps) over
    x_eps | x0: the transitions compose, x_t | x0 ~ N(alpha_t x0, sigma_t^2 I), and Stein's lemma
    on *that* Gaussian, E[div s] = E[s . z] / sigma_t, gives

        E_{x_eps|x0} log q_eps(x_eps) >= E log pi(x_T) + D log(alpha_T / alpha_eps)
            + int_eps^T D g^2 / (2 sigma^2) dt - 1/2 int_eps^T g^2 E|s(x_t, t) + z / sigma_t|^2 dt.

    The last integral is (T - eps) times the likelihood-weighted, sum-reduced DSM loss (its time
    average over U(eps, T); the importance-sampled loss has the same mean).  The third term is
    D/2 Z with Z = ``importance_norm`` = 2 (lambda(eps) - lambda(T)); it is finite because
    sigma_eps > 0 (from eps itself it would diverge, which is why the per-point ELBO needs
    antithetic pairs).  The prior term is closed form, x_T ~ N(alpha_T x0, sigma_T^2 I):
    E log pi = -D/2 log(2 pi s^2) - (alpha_T^2 |x0|^2 + D sigma_T^2) / (2 s^2).  So

        C = E log pi(x_T) + D log(alpha_T / alpha_eps) + D (lambda(eps) - lambda(T)),

    and -(C - (T - eps) loss) bounds -log q_eps of the blurred data from above (Song, Durkan,
    Murray & Ermon 2021, Thm. 1 and its DSM form; Huang et al. 2021, Thm. 3).
    """
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    B, D = x0.shape[0], x0[0].numel()
    ends = torch.tensor([eps, sde.T], dtype=torch.float64)
    al, sg, lam = sde.mean_coef(ends), sde.std(ends), sde.log_snr(ends)
    s2 = sde.prior_std ** 2
    sq = x0.detach().to(torch.float64).reshape(B, -1).pow(2).sum(1)
    prior = -0.5 * D * math.log(2 * math.pi * s2) - (float(al[1]) ** 2 * sq + D * float(sg[1]) ** 2) / (2 * s2)
    const = D * (math.log(float(al[1]) / float(al[0])) + float(lam[0] - lam[1]))
    return prior + const


def dsm_bound(score_fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, x0: Tensor, *,
              importance_sampling: bool = True, eps: float = 1e-5,
              generator: Optional[torch.Generator] = None, t: Optional[Tensor] = None,
              noise: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""The training bound from one DSM draw per point: returns ``(bound, loss)``, both ``[B]``.

    ``loss`` is :func:`dsm_loss` with ``weighting="likelihood"``, ``reduction="sum"`` (and
    importance sampling if asked: it removes the loss's 1/sigma^2 spike at small t, see the module
    docstring), whatever weighting the model was trained with; ``bound = C - (T - eps) loss`` with
    C from :func:`bound_constant` is an unbiased one-draw estimate of a lower bound on
    E log q_eps(x_eps) over x_eps ~ N(alpha_eps x0, sigma_eps^2 I), in nats; ``-bound`` is the
    upper bound on the NLL of the blurred data (divide by D log 2 for bits/dim).  Same t and noise
    (given, or drawn from ``generator``) give the same loss and bound.
    """
    loss = dsm_loss(score_fn, sde, x0, weighting="likelihood", importance_sampling=importance_sampling,
                    eps=eps, reduction="sum", generator=generator, t=t, noise=noise)
    C = bound_constant(sde, x0, eps).to(device=loss.device)
    bound = C - (sde.T - eps) * loss.to(torch.float64)
    return bound.to(loss.dtype), loss
