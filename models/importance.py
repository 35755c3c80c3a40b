"""Blend scorer outputs and map the blend to [0, 1] by its rank among recent values.

A rank mapping makes the number readable: 0.9 means "more important than 90 % of the
recent events", whatever the scale of the raw scores.

>>> rank = RollingRank(window=3)
>>> [rank.update(v) for v in (1.0, 2.0, 3.0, 0.5)]
[0.5, 1.0, 1.0, 0.0]
>>> rank.update(2.0)  # recent values are 2.0, 3.0, 0.5: one below, one tie
0.5
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_WEIGHTS", "RollingRank", "blend"]

#: Weights of the scorers in the blend.
DEFAULT_WEIGHTS: Mapping[str, float] = {"logistic": 0.5, "knn": 0.3, "behavior": 0.2}


def blend(scores: Mapping[str, float], weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> float:
    """Weighted mean of the scorers' scores (each in [0, 1])."""
    total = sum(weights.values())
    return sum(weights[name] * scores[name] for name in weights) / total


class RollingRank:
    """Mid-rank of a value among the last ``window`` values (a sorted list + ring).

    ``update`` returns the fraction of recent values below ``x`` plus half the fraction
    equal to it, then adds ``x`` to the window. An empty window gives 0.5. Insertion and
    removal are ``O(log n)`` searches plus a memmove, about a microsecond for 2048.
    """

    def __init__(self, window: int = 2048) -> None:
        self.window = window
        self._ring: deque[float] = deque()
        self._sorted: list[float] = []

    def rank(self, x: float) -> float:
        """Rank of ``x`` among the window, without adding it."""
        n = len(self._sorted)
        if n == 0:
            return 0.5
        lo = bisect.bisect_left(self._sorted, x)
        hi = bisect.bisect_right(self._sorted, x, lo)
        if hi == lo:
            return lo / n
        return (lo + 0.5 * (hi - lo)) / n

    def update(self, x: float) -> float:
        """Rank ``x``, then add it to the window."""
        r = self.rank(x)
        if len(self._ring) == self.window:
            old = self._ring.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._ring.append(x)
        bisect.insort(self._sorted, x)
        return r

    def __len__(self) -> int:
        return len(self._ring)

    def to_state(self) -> dict[str, Any]:
        """The window in arrival order."""
        return {"window": self.window, "values": list(self._ring)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the window saved by :meth:`to_state`."""
        values = [float(v) for v in state["values"]][-self.window :]
        self._ring = deque(values)
        self._sorted = sorted(values)
