"""ProgressiveMetrics: AUC and log-loss over a bounded window of (p, label) pairs."""

from __future__ import annotations

import math
import random

import pytest

from models.progressive import ProgressiveMetrics


def brute_auc(pairs):
    pos = [p for p, y in pairs if y]
    neg = [p for p, y in pairs if not y]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_count_with_ties():
    rng = random.Random(3)
    m = ProgressiveMetrics(window=500)
    pairs = []
    for _ in range(400):
        p = round(rng.random(), 1)  # many ties
        y = int(rng.random() < p)
        m.update(p, y)
        pairs.append((p, y))
    assert m.auc() == pytest.approx(brute_auc(pairs))


def test_log_loss_matches_definition_and_clips():
    m = ProgressiveMetrics()
    for p, y in [(0.8, 1), (0.3, 0), (0.0, 1), (1.0, 1)]:
        m.update(p, y)
    eps = 1e-7
    expected = -(math.log(0.8) + math.log(0.7) + math.log(eps) + math.log(1 - eps)) / 4
    assert m.log_loss() == pytest.approx(expected)


def test_window_is_bounded_and_keeps_the_latest():
    m = ProgressiveMetrics(window=10)
    for i in range(25):
        m.update(0.9 if i >= 15 else 0.1, 1 if i >= 15 else 0)
    assert m.n == 10 and m.seen == 25
    assert m.positives == 10
    assert m.auc() is None  # only positives left in the window


def test_empty_and_invalid_inputs():
    m = ProgressiveMetrics()
    assert m.auc() is None and m.log_loss() is None
    m.update(float("nan"), 1)
    m.update(1.5, 0)
    m.update(0.5, 2)
    assert m.n == 0
    assert m.as_dict() == {
        "window": 2000,
        "n": 0,
        "positives": 0,
        "seen": 0,
        "auc": None,
        "log_loss": None,
    }
    with pytest.raises(ValueError):
        ProgressiveMetrics(window=0)


def test_perfect_and_inverted_rankings():
    good, bad = ProgressiveMetrics(), ProgressiveMetrics()
    for i in range(50):
        y = i % 2
        good.update(0.2 + 0.6 * y, y)
        bad.update(0.8 - 0.6 * y, y)
    assert good.auc() == 1.0
    assert bad.auc() == 0.0
