r"""Noisy (time-dependent) classifiers p_t(y | x_t) for classifier guidance, and their quality.

Classifier guidance (Dhariwal & Nichol 2021, Sec. 4; Song et al. 2021, Sec. 5, App. I) needs
grad_x log p_t(y | x) at every t, so the classifier is trained on noised data: with t ~ U(eps, T),
x_t = alpha(t) x_0 + sigma(t) z and (x_0, y) from the data, it minimises the cross-entropy

    L = E_{t, (x_0, y), z} [ -log q_theta(y | x_t, t) ],

whose minimiser is the exact p_t(y | x_t) (the cross-entropy of q against p_t(y | x) is the
entropy of p_t(y | x) plus KL(p_t(. | x) || q(. | x)), least when q = p_t).  On a labelled
Gaussian mixture p_t(y | x) is known in closed form (``mix.class_log_prob_t``), so
:func:`classifier_error` measures a classifier exactly: its excess cross-entropy (the expected
KL above) and the error of its guidance gradient grad_x log q(y | x_t) against the exact one,
bucket by bucket in t.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .losses import sample_time
from .mixture import GaussianMixture
from .nn.embeddings import build_time_embedding
from .nn.mlp import _ResBlock
from .sde import SDE, as_time, build_sde

Tensor = torch.Tensor

__all__ = ["NoisyClassifier", "noisy_classifier_loss", "classifier_log_prob_fn", "classifier_error",
           "ClassifierError", "build_classifier", "CLASSIFIER_KIND"]


class NoisyClassifier(nn.Module):
    """A time-dependent classifier ``clf(x, t) -> logits [B, K]`` for data of any shape (flattened).

    The trunk is the residual MLP of :class:`~scoresde.nn.MLPScoreNet` (its blocks, its time
    embedding added in every block), followed by SiLU and a linear head to K logits.  The head
    starts at zero, so an untrained classifier predicts the uniform class distribution.

    Args:
        data_shape: shape of one sample (an int D for vectors).
        num_classes: K >= 2.
        width, depth, embedding, emb_dim, emb_scale, norm: as :class:`~scoresde.nn.MLPScoreNet`.
    """

    def __init__(self, data_shape: Union[int, Sequence[int]] = 2, num_classes: int = 2, width: int = 128,
                 depth: int = 3, embedding: str = "fourier", emb_dim: int = 64, emb_scale: float = 16.0,
                 norm: bool = True):
        super().__init__()
        self.data_shape = (int(data_shape),) if isinstance(data_shape, int) else tuple(int(d) for d in data_shape)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if width <= 0 or depth < 0:
            raise ValueError(f"width must be positive and depth non-negative, got width={width}, depth={depth}")
        self.num_classes = num_classes
        dim = math.prod(self.data_shape)
        self.time_embed = nn.Sequential(build_time_embedding(embedding, emb_dim, scale=emb_scale),
                                        nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([_ResBlock(width, emb_dim, norm) for _ in range(depth)])
        self.head = nn.Linear(width, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, t) -> Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"NoisyClassifier expects x of shape [B, {', '.join(map(str, self.data_shape))}], "
                             f"got {tuple(x.shape)}")
        t = as_time(t, x)
        temb = self.time_embed(t)
        h = self.inp(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, temb)
        return self.head(F.silu(h))


def noisy_classifier_loss(clf: Callable[[Tensor, Tensor], Tensor], sde: SDE, x0: Tensor, y: Tensor,
                          eps: float = 1e-5, generator: Optional[torch.Generator] = None) -> Tensor:
    """Per-sample cross-entropy ``[B]`` of ``clf`` on x_t ~ p_t(x_t | x_0), t ~ U(eps, T).

    ``clf(x, t) -> logits [B, K]``; ``y [B]`` the classes of ``x0``.  t, then z, are drawn from
    ``generator`` on x0's device.  Take ``.mean()`` for the training objective.
    """
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    B = x0.shape[0]
    y = torch.as_tensor(y, device=x0.device)
    if y.shape != (B,) or y.is_floating_point():
        raise ValueError(f"y must be an integer tensor of shape [B] = [{B}], got {y.dtype} {tuple(y.shape)}")
    t = sample_time(sde, B, eps, generator=generator, dtype=x0.dtype, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    logits = clf(sde.perturb(x0, t, noise), t)
    if logits.dim() != 2 or logits.shape[0] != B:
        raise ValueError(f"the classifier must return logits [B, K], got {tuple(logits.shape)}")
    return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                           y.long(), reduction="none")


def classifier_log_prob_fn(clf: Callable[[Tensor, Tensor], Tensor], labels: Union[int, Tensor]):
    """``log_prob_fn(x, t) -> [B]`` = log q(y_b | x_b, t) (log-softmax of ``clf``'s logits), the
    input of :func:`scoresde.guidance.classifier`.  ``labels``: one class or a ``[B]`` tensor."""
    lab = torch.as_tensor(labels)
    if lab.is_floating_point() or lab.dim() > 1:
        raise ValueError(f"labels must be an integer or an integer tensor [B], got {labels!r}")
    lab = lab.long()

    def log_prob_fn(x: Tensor, t: Tensor) -> Tensor:
        logits = clf(x, t)
        y = lab.to(x.device)
        y = y.expand(x.shape[0]) if y.dim() == 0 else y
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{y.shape[0]} labels for a batch of {x.shape[0]}")
        if ((y < 0) | (y >= logits.shape[1])).any():
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {sorted(set(y.tolist()))}")
        return torch.log_softmax(logits, 1).gather(1, y[:, None])[:, 0]

    return log_prob_fn


@dataclass
class ClassifierError:
    """Result of :func:`classifier_error`, one entry per t bucket [t_lo, t_hi).

    ``cross_entropy``: E[-log q(y | x_t)];  ``exact_cross_entropy``: E[-log p_t(y | x_t)] on the
    same draws;  ``kl``: E_x KL(p_t(. | x) || q(. | x)), the excess cross-entropy computed
    without the label noise (the lower-variance form of ``cross_entropy - exact_cross_entropy``);
    ``grad_rmse``: sqrt E|grad log q(y | x) - grad log p_t(y | x)|^2 for the drawn y;
    ``grad_rel``: grad_rmse / sqrt E|grad log p_t(y | x)|^2 (1 for a classifier whose gradient
    is zero, the untrained one).
    """

    t_lo: List[float] = field(default_factory=list)
    t_hi: List[float] = field(default_factory=list)
    cross_entropy: List[float] = field(default_factory=list)
    exact_cross_entropy: List[float] = field(default_factory=list)
    kl: List[float] = field(default_factory=list)
    grad_rmse: List[float] = field(default_factory=list)
    grad_rel: List[float] = field(default_factory=list)
    n: int = 0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("t_lo", "t_hi", "cross_entropy", "exact_cross_entropy",
                                               "kl", "grad_rmse", "grad_rel", "n")}


def classifier_error(clf: Callable[[Tensor, Tensor], Tensor], mix: GaussianMixture, sde: SDE, *,
                     n: int = 2000, buckets: Sequence[float] = (1e-3, 0.05, 0.2, 0.5, 1.0),
                     generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
                     device=None) -> ClassifierError:
    """A noisy classifier against the exact classifier of a labelled mixture, per t bucket.

    In each bucket ``[buckets[i], buckets[i+1])``: ``n`` draws (x_0, y) from ``mix``, t uniform in
    the bucket, x_t = alpha x_0 + sigma z; see :class:`ClassifierError` for the figures.  All
    randomness from ``generator``; the classifier runs on ``device`` in ``dtype``.
    """
    edges = [float(b) for b in buckets]
    if len(edges) < 2 or any(b >= c for b, c in zip(edges, edges[1:])) or edges[0] <= 0 or edges[-1] > sde.T:
        raise ValueError(f"buckets must be increasing times in (0, T={sde.T}], at least two, got {list(buckets)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gdev = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device) if device is not None else gdev
    out = ClassifierError(n=n)
    for lo, hi in zip(edges, edges[1:]):
        x0, y = mix.sample_labelled(n, generator=generator, dtype=torch.float64, device=gdev)
        t = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64, device=gdev)
        z = torch.randn(x0.shape, generator=generator, dtype=torch.float64, device=gdev)
        xt = sde.perturb(x0, t, z).to(device)
        t, y = t.to(device), y.to(device)
        # exact classifier and its gradient, float64
        xe = xt.detach().requires_grad_(True)
        lp_exact = mix.class_log_prob_t(xe, sde, t)                                 # [n, K]
        (g_exact,) = torch.autograd.grad(lp_exact.gather(1, y[:, None]).sum(), xe)
        # the classifier in its own dtype
        xq = xt.to(dtype).detach().requires_grad_(True)
        lq = torch.log_softmax(clf(xq, t.to(dtype)), 1)
        if lq.shape != lp_exact.shape:
            raise ValueError(f"the classifier returned {tuple(lq.shape)} logits, the mixture has "
                             f"{mix.num_classes} classes")
        (g_q,) = torch.autograd.grad(lq.gather(1, y[:, None]).sum(), xq)
        lq, g_q = lq.detach().to(torch.float64), g_q.to(torch.float64)
        lp_exact = lp_exact.detach()
        p = lp_exact.exp()
        kl = torch.where(p > 0, p * (lp_exact - lq), torch.zeros_like(p)).sum(1)
        err2 = (g_q - g_exact).reshape(n, -1).pow(2).sum(1).mean()
        ref2 = g_exact.reshape(n, -1).pow(2).sum(1).mean()
        out.t_lo.append(lo)
        out.t_hi.append(hi)
        out.cross_entropy.append(float(-lq.gather(1, y[:, None]).mean()))
        out.exact_cross_entropy.append(float(-lp_exact.gather(1, y[:, None]).mean()))
        out.kl.append(float(kl.mean()))
        out.grad_rmse.append(float(err2.sqrt()))
        out.grad_rel.append(float((err2 / ref2).sqrt()) if ref2 > 0 else math.inf)
    return out


# ---------------------------------------------------------------------------------------------
# from a checkpoint spec
# ---------------------------------------------------------------------------------------------
CLASSIFIER_KIND = "classifier"   # the ``spec["kind"]`` of a noisy-classifier checkpoint
_DEFAULT_EPS = inspect.signature(noisy_classifier_loss).parameters["eps"].default


def build_classifier(spec: Dict[str, Any]) -> NoisyClassifier:
    """A :class:`NoisyClassifier` from a checkpoint spec ``{"kind": "classifier", "sde": {...},
    "classifier": {name, data_shape, num_classes, ...}}``, with ``.sde``, ``.spec`` and ``.eps`` set."""
    if spec.get("kind") != CLASSIFIER_KIND:
        raise ValueError(f"not a classifier spec (kind={spec.get('kind')!r})")
    kw = dict(spec["classifier"])
    name = kw.pop("name", "mlp")
    eps = kw.pop("eps", _DEFAULT_EPS)
    if name != "mlp":
        raise ValueError(f"unknown classifier {name!r}; valid names: ['mlp']")
    sde_kw = dict(spec["sde"])
    clf = NoisyClassifier(**kw)
    clf.sde = build_sde(sde_kw.pop("name"), **sde_kw)
    clf.spec = spec
    clf.eps = float(eps)
    return clf
