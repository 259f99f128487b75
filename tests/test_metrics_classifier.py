"""classifier_stats: confidence, class spread and inception score against closed forms."""
import math

import pytest
import torch

from scoresde.metrics import classifier_stats


def test_confident_even_labels_give_full_entropy_and_inception_score_k():
    K = 10
    p = torch.eye(K).repeat(3, 1)                       # one-hot, every class three times
    s = classifier_stats(p)
    assert s.confidence == 1.0 and s.n == 30
    assert s.class_freq == pytest.approx([0.1] * K)
    assert s.class_entropy == pytest.approx(math.log(K)) and s.max_entropy == pytest.approx(math.log(K))
    assert s.inception_score == pytest.approx(K)


def test_one_class_collapse_gives_zero_entropy_and_inception_score_one():
    p = torch.tensor([[0.7, 0.2, 0.1]]).repeat(5, 1)
    s = classifier_stats(p)
    assert s.confidence == pytest.approx(0.7)
    assert s.class_freq == pytest.approx([1.0, 0.0, 0.0])
    assert s.class_entropy == 0.0
    assert s.inception_score == pytest.approx(1.0)


def test_inception_score_matches_a_hand_computation():
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    py = p.mean(0)
    kl = (p * (p / py).log()).sum(1).mean()
    s = classifier_stats(p)
    assert s.inception_score == pytest.approx(float(kl.exp()))
    assert s.confidence == pytest.approx(0.85)
    assert s.class_entropy == pytest.approx(math.log(2))


def test_classifier_stats_rejects_non_probabilities():
    with pytest.raises(ValueError, match="sum to 1"):
        classifier_stats(torch.tensor([[0.5, 0.6]]))
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        classifier_stats(torch.ones(4))
