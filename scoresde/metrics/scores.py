"""Scores from a classifier's predictions: the Inception Score and how samples are labelled.

Inception Score (Salimans et al. 2016).  With p(y|x) the classifier's softmax and p(y) its mean
over the samples,

    IS = exp( E_x KL(p(y|x) || p(y)) ) = exp( H(p(y)) - E_x H(p(y|x)) ),

between 1 (every sample labelled alike, or every label uncertain) and K (confident labels spread
evenly over K classes).  As is customary (Salimans et al.; torch-fidelity, torchmetrics) the
samples are cut into ``splits`` equal parts, the score is computed on each part (with that
part's own p(y)), and the mean and standard deviation over the parts are reported.  The score
of a part is biased low at small part sizes (p(y) is estimated from the part), so compare scores
at the same n and splits only.  For the FID Inception, feed the logits without the final
layer's bias (torch-fidelity's ``logits_unbiased``, :meth:`InceptionV3.logits`), as the original
TF code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch

Tensor = torch.Tensor

__all__ = ["ISResult", "inception_score", "ClassifierStats", "classifier_stats"]


@dataclass
class ISResult:
    """Result of :func:`inception_score`: mean and spread over the splits."""

    mean: float                    # mean over splits of exp(E_x KL(p(y|x) || p(y)))
    std: float                     # population standard deviation over the splits (as torch-fidelity)
    splits: int
    n: int
    per_split: List[float]

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "splits": self.splits, "n": self.n,
                "per_split": self.per_split}


def _log_probs(logits: Tensor) -> Tensor:
    z = torch.as_tensor(logits).detach().to(torch.float64).cpu()
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape [N, K] with N >= 1 and K >= 2, got {list(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError("logits must be finite")
    return torch.log_softmax(z, dim=1)


def inception_score(logits: Tensor, splits: int = 10) -> ISResult:
    """Inception Score of class logits ``[N, K]`` (see the module docstring).

    The samples are cut, in their order, into ``splits`` parts of equal size (N must be
    divisible by ``splits``, so that no sample is silently dropped).  Computed in float64 from
    log-softmax, so confident logits (p(y|x) = 0 to double precision) give no NaN.
    """
    logp = _log_probs(logits)
    n = logp.shape[0]
    if int(splits) != splits or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits}")
    if n % splits:
        raise ValueError(f"n = {n} samples do not split into splits = {splits} equal parts")
    scores = []
    for part in logp.chunk(splits, dim=0):
        # log p(y) of the part, by logsumexp over its samples
        log_py = torch.logsumexp(part, dim=0) - math.log(part.shape[0])
        kl = (part.exp() * (part - log_py)).sum(1)
        scores.append(float(kl.mean().exp()))
    s = torch.tensor(scores, dtype=torch.float64)
    return ISResult(float(s.mean()), float(s.std(unbiased=False)), int(splits), n, scores)


@dataclass
class ClassifierStats:
    """Result of :func:`classifier_stats`: how a classifier trained on real data labels samples."""

    confidence: float              # mean over samples of max_y p(y | x)
    class_freq: List[float]        # fraction of samples whose argmax label is each class
    class_entropy: float           # entropy (nats) of class_freq; log K when the classes are even
    max_entropy: float             # log K, for reference
    inception_score: float         # exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x)
    n: int

    def as_dict(self) -> dict:
        return {"confidence": self.confidence, "class_freq": self.class_freq,
                "class_entropy": self.class_entropy, "max_entropy": self.max_entropy,
                "inception_score": self.inception_score, "n": self.n}


def classifier_stats(probs: Tensor) -> ClassifierStats:
    """Score samples by the class probabilities ``probs [N, K]`` a classifier gives them.

    Samples of a good model are labelled with high confidence (``confidence``, the mean of
    max_y p(y|x)) and spread over the classes like the data (``class_freq`` of the argmax labels,
    summarised by its entropy; log K for even classes).  ``inception_score`` (Salimans et al.
    2016) combines both: exp(mean_x sum_y p(y|x) log(p(y|x) / p(y))), between 1 and K.  Compare
    every figure with the same classifier's on real held-out data.
    """
    p = torch.as_tensor(probs).detach().to(torch.float64).cpu()
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape [N, K] with N >= 1 and K >= 2, got {list(p.shape)}")
    if not torch.isfinite(p).all() or (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(1, dtype=p.dtype), atol=1e-4):
        raise ValueError("probs must be finite, non-negative and sum to 1 over each row")
    n, K = p.shape
    freq = torch.bincount(p.argmax(1), minlength=K).to(torch.float64) / n
    ent = float(-(freq[freq > 0] * freq[freq > 0].log()).sum())
    py = p.mean(0)
    kl = torch.where(p > 0, p * (p.clamp_min(1e-300).log() - py.clamp_min(1e-300).log()), torch.zeros_like(p)).sum(1)
    return ClassifierStats(float(p.max(1).values.mean()), freq.tolist(), ent, math.log(K),
                           float(kl.mean().exp()), n)
