"""Online logistic regression (river) over hashed sparse features.

Its score is the gradient magnitude of the log-loss, normalised to [0, 1]: before the
label is known the *expected* one, ``2·p·(1−p)·‖x‖`` (divided by its maximum
``0.5·‖x‖``), once known the *realised* one, ``|y − p|·‖x‖`` (divided by ``‖x‖``).

>>> from models.events import decode_event
>>> from models.features import embed, hashed_features
>>> from models.scorers.base import EventFeatures
>>> scorer = HashedLogistic()
>>> ev = decode_event(b'{"user_id": 1, "item_id": 2, "type": "pv", "ts": 1511658000}')
>>> feats = EventFeatures(hashed_features(ev), embed(ev))
>>> round(scorer.proba(feats), 3), round(scorer.score(ev, feats), 3)  # untrained: p = 0.5
(0.5, 1.0)
>>> for _ in range(50):
...     scorer.learn(ev, feats, 1)
>>> scorer.proba(feats) > 0.9, scorer.updates
(True, 50)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from river import linear_model, optim
from river.utils import VectorDict

from models.events import Event
from models.scorers.base import EventFeatures
from models.state import decode_array, encode_array

__all__ = ["HashedLogistic", "expected_gradient", "realised_gradient"]


def expected_gradient(p: float, norm: float) -> float:
    """Expected log-loss gradient magnitude before the label is known: ``2p(1-p)‖x‖``."""
    return 2.0 * p * (1.0 - p) * norm


def realised_gradient(p: float, y: int, norm: float) -> float:
    """Realised log-loss gradient magnitude once the label is known: ``|y-p|‖x‖``."""
    return abs(y - p) * norm


class HashedLogistic:
    """river ``LogisticRegression`` on ``{bucket: 1.0}`` features, with plain-data state."""

    name = "logistic"

    def __init__(self, learning_rate: float = 0.05, l2: float = 1e-6) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2)
        self.updates = 0

    def proba(self, features: EventFeatures) -> float:
        """P(positive) for the event."""
        return self.model.predict_proba_one(features.sparse)[True]

    def score(self, event: Event, features: EventFeatures, p: float | None = None) -> float:
        """Normalised gradient magnitude: realised when ``event.label`` is set, else expected."""
        if p is None:
            p = self.proba(features)
        if event.label is not None:
            return realised_gradient(p, event.label, 1.0)
        return expected_gradient(p, 1.0) / 0.5

    @staticmethod
    def norm(features: EventFeatures) -> float:
        """‖x‖ of the sparse feature vector."""
        return math.sqrt(sum(v * v for v in features.sparse.values()))

    def learn(self, event: Event, features: EventFeatures, label: int) -> None:
        """One SGD step on the resolved label."""
        self.model.learn_one(features.sparse, bool(label))
        self.updates += 1

    def to_state(self) -> dict[str, Any]:
        """Weights as two arrays (bucket indices and values), the intercept and counters."""
        weights = dict(self.model._weights)
        idx = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
        val = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
        return {
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "updates": self.updates,
            "intercept": float(self.model.intercept),
            "optimizer_steps": int(self.model.optimizer.n_iterations),
            "idx": encode_array(idx),
            "w": encode_array(val),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`to_state` saved."""
        idx = decode_array(state["idx"])
        val = decode_array(state["w"])
        if idx.shape != val.shape:
            raise ValueError("logistic state: index and weight arrays differ in length")
        self.model._weights = VectorDict(dict(zip(idx.tolist(), val.tolist(), strict=True)))
        self.model.intercept = float(state["intercept"])
        self.model.optimizer.n_iterations = int(state["optimizer_steps"])
        self.updates = int(state["updates"])
