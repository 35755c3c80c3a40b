"""Progressive (test-then-train) evaluation of a probabilistic scorer.

Each labelled event is scored *before* the learner sees its label; the pair
(``p`` at scoring time, resolved label) is recorded here, and AUC and log-loss are
computed over the last ``window`` pairs.

>>> m = ProgressiveMetrics(window=4)
>>> for p, y in [(0.9, 1), (0.2, 0), (0.7, 1), (0.4, 0), (0.6, 0)]:
...     m.update(p, y)
>>> m.n, m.seen, m.auc()  # the oldest pair (0.9, 1) fell out of the window
(4, 5, 1.0)
>>> round(m.log_loss(), 4)
0.5017
>>> auc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1])  # a tie between classes counts one half
0.875
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

__all__ = ["ProgressiveMetrics", "auc"]

_EPS = 1e-7


def auc(scores: Iterable[float], labels: Iterable[int]) -> float | None:
    """Area under the ROC curve of ``scores`` against ``labels`` (0 or 1): Mann–Whitney U
    with average ranks for tied scores (a tie between classes counts one half); None
    without both classes."""
    pairs = sorted(zip(scores, labels, strict=True))
    n_pos = sum(y for _, y in pairs)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum += avg_rank * sum(y for _, y in pairs[i : j + 1])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class ProgressiveMetrics:
    """AUC and log-loss over a bounded window of (prediction, label) pairs."""

    def __init__(self, window: int = 2000) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.pairs: deque[tuple[float, int]] = deque(maxlen=window)
        self.seen = 0

    def update(self, p: float, label: int) -> None:
        """Record the prediction ``p`` made before ``label`` (0 or 1) was known."""
        if not (0.0 <= p <= 1.0) or label not in (0, 1):
            return
        self.pairs.append((float(p), int(label)))
        self.seen += 1

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def positives(self) -> int:
        return sum(y for _, y in self.pairs)

    def auc(self) -> float | None:
        """:func:`auc` of the window's pairs; None without both classes."""
        return auc((p for p, _ in self.pairs), (y for _, y in self.pairs))

    def log_loss(self) -> float | None:
        """Mean binary cross-entropy (p clipped to [1e-7, 1 − 1e-7]); None when empty."""
        if not self.pairs:
            return None
        total = 0.0
        for p, y in self.pairs:
            p = min(max(p, _EPS), 1.0 - _EPS)
            total -= math.log(p) if y else math.log(1.0 - p)
        return total / len(self.pairs)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe summary for the web API."""
        return {
            "window": self.window,
            "n": self.n,
            "positives": self.positives,
            "seen": self.seen,
            "auc": self.auc(),
            "log_loss": self.log_loss(),
        }
