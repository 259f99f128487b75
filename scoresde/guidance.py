r"""Guidance: class-conditional sampling as ordinary score functions.

Every function here returns a ``score_fn(x, t)``, so every sampler and ``log_likelihood`` take a
guided model unchanged.  With s(x, t) = grad log p_t(x) and s_y(x, t) = grad log p_t(x | y), Bayes
gives grad log p_t(y | x) = s_y - s, and both guidance forms follow the same field:

* classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6):
  :func:`cfg` returns  s_u + scale (s_c - s_u);
* classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 4; Song et al.
  2021, Sec. 5 and App. I): :func:`classifier` returns  s + scale grad_x log p_t(y | x).

For exact scores and the exact classifier the two fields are equal at every scale.  ``scale = 1``
is the conditional score, so both samplers of p(x | y) result; ``scale = 0`` is the
unconditional score.

Conventions.  Ho & Salimans write eps~ = (1 + w) eps_c - w eps_u, i.e. the guidance strength
w = scale - 1 (their w = 0 is the plain conditional model); diffusers' ``guidance_scale`` is our
``scale`` (``noise_uncond + guidance_scale (noise_cond - noise_uncond)``), and so is
Dhariwal & Nichol's classifier scale s.  Since eps = -sigma s, mixing scores and mixing noise
predictions with the same weights is the same operation.

What scale > 1 samples.  The guided field s_g = (1 - g) s + g s_y is, at each t, the score of the
tilted density q_t proportional to p_t(x)^(1-g) p_t(x | y)^g; but q_t is not the diffusion of
q_0 (diffusion does not commute with powers), so s_g is not the score of any forward process's
marginals.  Hence (i) neither the guided ODE nor the guided SDE samples q_0 proportional to
p(x)^(1-g) p(x | y)^g, and (ii) the ODE and the SDE, which agree for every true score, end at
different distributions.  The one case in closed form: a Gaussian population with a Gaussian
class inside it (per dimension p_0 = N(mu, s^2), p_0(x | y) = N(mu_y, s_y^2); s_y < s lets
p(y | x) = W_y N(x; mu_y, s_y^2) / N(x; mu, s^2) stay below 1 for small enough W_y).  With
x_t = alpha x_0 + sigma z, m = alpha mu, v = alpha^2 s^2 + sigma^2 and m_y, v_y likewise, the
guided score is affine,

    s_g(x, t) = b(t) - A(t) x,   A = (1 - g) / v + g / v_y,   b = (1 - g) m / v + g m_y / v_y,

so from a Gaussian prior (mean M, variance V per dimension) with dx = f x dt + G dw both reverse
processes keep a Gaussian, whose moments follow scalar linear ODEs in t (integrated from T down):

    ODE  dx/dt = f x - 1/2 G^2 s_g:   dM/dt = f M - 1/2 G^2 (b - A M),  dV/dt = (2 f + G^2 A) V;
    SDE  dx = (f x - G^2 s_g) dt + G dw-bar:
                                      dM/dt = f M - G^2 (b - A M),      dV/dt = (2 f + 2 G^2 A) V - G^2.

At g = 1 both give V = v_y (as they must: d v_y/dt = 2 f v_y + G^2); at g > 1 the two endpoint
variances differ from each other and from the tilted target's 1 / A(0).  ``tests/test_guidance.py``
integrates these ODEs (torchdiffeq, float64) and checks the samplers against them.

Cost.  :func:`cfg_model` evaluates the conditional and unconditional halves of a class-conditional
:class:`~scoresde.score.ScoreModel` in one batched network call.  A sampler's NFE counts guided
evaluations (one a call, as for any score_fn); the returned object also counts
``network_calls`` and ``forward_passes`` (per-sample network evaluations in units of the batch:
2 per guided call, 1 at scale 0 or 1), the figure to compare with an unguided sampler's NFE.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from .sde import ScoreFn, as_time

Tensor = torch.Tensor
LogProbFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["cfg", "classifier", "cfg_model", "CFGModel"]


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
    return float(scale)


def _carry_sde(out, *fns) -> None:
    for fn in fns:
        sde = getattr(fn, "sde", None)
        if sde is not None:
            out.sde = sde
            return


def cfg(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float) -> ScoreFn:
    """Classifier-free guidance: ``score_fn(x, t) = s_u + scale (s_c - s_u)``.

    ``scale = 1`` is the conditional score, ``0`` the unconditional one; Ho & Salimans'
    w = scale - 1, diffusers' ``guidance_scale`` = scale (see the module docstring).  At scale 0
    or 1 only the score that matters is evaluated.  For a class-conditional network use
    :func:`cfg_model`, which evaluates both halves in one batched call.
    """
    g = _check_scale(scale)

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        if g == 1.0:
            return cond_score_fn(x, t)
        su = uncond_score_fn(x, t)
        if g == 0.0:
            return su
        return su + g * (cond_score_fn(x, t) - su)

    _carry_sde(score_fn, uncond_score_fn, cond_score_fn)
    return score_fn


def classifier(score_fn: ScoreFn, log_prob_fn: LogProbFn, scale: float) -> ScoreFn:
    """Classifier guidance: ``score_fn(x, t) + scale * grad_x log_prob_fn(x, t)``.

    ``log_prob_fn(x, t) -> [B]`` is log p_t(y_b | x_b) for the wanted labels (for example
    :func:`scoresde.classifier.classifier_log_prob_fn` of a noisy classifier, or a mixture's
    exact ``mix.class_log_prob_fn(sde, labels)``); each row must depend on its own sample only
    (no batch statistics), since the gradient is taken of the batch sum.

    Gradients.  Samplers run under ``torch.no_grad``: there the gradient is taken on a detached
    copy of x with grad enabled locally.  ``log_likelihood`` calls the score with grad enabled
    on an x that requires grad and differentiates the result once more (the divergence): then
    the gradient is taken with ``create_graph=True``, so the divergence sees the classifier's
    Hessian.
    """
    g = _check_scale(scale)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        s = score_fn(x, t)
        if g == 0.0:
            return s
        if torch.is_grad_enabled() and x.requires_grad:
            lp = log_prob_fn(x, t)
            _check_log_prob(lp, x)
            (grad,) = torch.autograd.grad(lp.sum(), x, create_graph=True)
        else:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                lp = log_prob_fn(xg, t.detach() if torch.is_tensor(t) else t)
                _check_log_prob(lp, xg)
                (grad,) = torch.autograd.grad(lp.sum(), xg)
        return s + g * grad.to(s.dtype)

    _carry_sde(guided, score_fn)
    return guided


def _check_log_prob(lp: Tensor, x: Tensor) -> None:
    if lp.shape != (x.shape[0],):
        raise ValueError(f"log_prob_fn must return shape [B] = [{x.shape[0]}], got {tuple(lp.shape)}")


class CFGModel:
    """Classifier-free guidance of a class-conditional score model in one batched call a step.

    ``CFGModel(model, labels, scale)(x, t) = s(x, t, null) + scale (s(x, t, y) - s(x, t, null))``
    with both halves from one network call on ``cat([x, x])`` with labels ``cat([y, null])``.
    Counters: ``network_calls`` (times the network ran) and ``forward_passes`` (per-sample network
    evaluations in units of the batch: 2 a guided call, 1 at scale 0 or 1).  ``reset()`` zeroes both.
    """

    def __init__(self, model, labels: Union[int, Tensor], scale: float):
        k = int(getattr(model, "num_classes", 0) or 0)
        if k <= 0:
            raise ValueError("cfg_model needs a class-conditional ScoreModel (num_classes > 0); "
                             "for two separate score functions use guidance.cfg")
        self.model = model
        self.num_classes = k
        self.scale = _check_scale(scale)
        if torch.is_tensor(labels):
            if labels.is_floating_point() or labels.dim() > 1:
                raise ValueError(f"labels must be an integer or an integer tensor [B], got {labels!r}")
        elif isinstance(labels, bool) or not isinstance(labels, int):
            raise ValueError(f"labels must be an integer or an integer tensor [B], got {labels!r}")
        lab = torch.as_tensor(labels)
        if ((lab < 0) | (lab >= k)).any():
            raise ValueError(f"labels must lie in [0, {k}) (the null label {k} is the unconditional "
                             f"half, added here), got {sorted(set(lab.reshape(-1).tolist()))}")
        self.labels = lab.long()
        self.sde = model.sde
        self.network_calls = 0
        self.forward_passes = 0

    def reset(self) -> None:
        self.network_calls = 0
        self.forward_passes = 0

    def _labels(self, B: int, device) -> Tensor:
        y = self.labels.to(device)
        if y.dim() == 0:
            return y.expand(B)
        if y.shape[0] != B:
            raise ValueError(f"cfg_model was given {y.shape[0]} labels for a batch of {B}")
        return y

    def __call__(self, x: Tensor, t) -> Tensor:
        t = as_time(t, x)
        B = x.shape[0]
        y = self._labels(B, x.device)
        null = torch.full_like(y, self.num_classes)
        self.network_calls += 1
        if self.scale in (0.0, 1.0):
            self.forward_passes += 1
            return self.model(x, t, y if self.scale == 1.0 else null)
        self.forward_passes += 2
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        sc, su = both[:B], both[B:]
        return su + self.scale * (sc - su)

    def __repr__(self) -> str:
        return f"CFGModel(scale={self.scale}, labels={self.labels.tolist()}, num_classes={self.num_classes})"


def cfg_model(model, labels: Union[int, Tensor], scale: float) -> CFGModel:
    """Classifier-free guidance of a class-conditional :class:`~scoresde.score.ScoreModel`
    (``num_classes > 0``, trained with label dropout): see :class:`CFGModel`.

    ``labels`` is one class for the whole batch or a ``[B]`` tensor (then the sampler's batch,
    and ``log_likelihood``'s ``batch_size``, must keep that B).
    """
    return CFGModel(model, labels, scale)
