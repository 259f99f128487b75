"""Inception Score of logits against closed forms: uniform 1, confident one-hot over K classes K."""
import math

import pytest
import torch

import scoresde as sd
from scoresde.metrics import inception_score


def test_uniform_predictions_score_one():
    r = inception_score(torch.zeros(100, 10), splits=10)
    assert r.mean == pytest.approx(1.0, abs=1e-12) and r.std == pytest.approx(0.0, abs=1e-12)


def test_confident_one_hot_over_k_classes_scores_k():
    K = 10
    logits = 1e4 * torch.eye(K).repeat(20, 1)          # every split of 20 holds each class twice
    r = sd.metrics.inception_score(logits, splits=10)
    assert r.mean == pytest.approx(K, rel=1e-9) and r.std == pytest.approx(0.0, abs=1e-9)
    assert r.n == 200 and len(r.per_split) == 10


def test_split_spread_shows_when_the_splits_differ():
    K = 4
    even = 1e4 * torch.eye(K).repeat(2, 1)              # split 1: IS = 4
    one = 1e4 * torch.eye(K)[[0] * 8]                   # split 2: one class only, IS = 1
    r = inception_score(torch.cat([even, one]), splits=2)
    assert r.per_split == pytest.approx([4.0, 1.0])
    assert r.mean == pytest.approx(2.5) and r.std == pytest.approx(1.5)


def test_inception_score_agrees_with_classifier_stats_on_one_split():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=g, dtype=torch.float64)
    r = inception_score(logits, splits=1)
    assert r.mean == pytest.approx(sd.metrics.classifier_stats(logits.softmax(1)).inception_score, rel=1e-10)
    # and with exp(H(p(y)) - E H(p(y|x)))
    p = logits.softmax(1)
    py = p.mean(0)
    want = math.exp(float(-(py * py.log()).sum() + (p * p.log()).sum(1).mean()))
    assert r.mean == pytest.approx(want, rel=1e-10)


def test_inception_score_rejects_bad_input():
    with pytest.raises(ValueError, match="equal parts"):
        inception_score(torch.zeros(15, 3), splits=10)
    with pytest.raises(ValueError, match="shape"):
        inception_score(torch.zeros(15), splits=1)
    with pytest.raises(ValueError, match="finite"):
        inception_score(torch.tensor([[0.0, float("nan")]]), splits=1)
