"""Online logistic regression over hashed sparse features (river's, on a flat weight array).

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
from collections.abc import Mapping
from typing import Any

import numpy as np
from river import base

from models.events import Event
from models.scorers.base import EventFeatures
from models.state import decode_array, encode_array

__all__ = [
    "HashedLogistic",
    "HashedLogisticRegression",
    "expected_gradient",
    "realised_gradient",
]


def expected_gradient(p: float, norm: float) -> float:
    """Expected log-loss gradient magnitude before the label is known: ``2p(1-p)‖x‖``."""
    return 2.0 * p * (1.0 - p) * norm


def realised_gradient(p: float, y: int, norm: float) -> float:
    """Realised log-loss gradient magnitude once the label is known: ``|y-p|‖x‖``."""
    return abs(y - p) * norm


class HashedLogisticRegression(base.Classifier):
    """river's ``LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2)`` over
    integer feature ids in ``[0, n_features)`` (hash buckets), with its weights in one
    flat array instead of a dict.

    The same model, the same SGD step (log-loss gradient, L2 on the features of the
    example, intercept learning rate ``intercept_lr``, gradient clipped at ``1e12``), the
    same probabilities up to floating-point rounding; river's estimator protocol
    (``learn_one`` / ``predict_proba_one``). ``proba`` and ``learn`` are the hot path: a
    Python loop over the example's few features of a flat list of floats, which measured
    faster per event than river's ``VectorDict`` or numpy fancy indexing for a dozen
    features. :meth:`weights_array` is the weights as numpy (``to_state``).

    >>> model = HashedLogisticRegression(n_features=16, learning_rate=0.5)
    >>> model.predict_proba_one({3: 1.0})
    {False: 0.5, True: 0.5}
    >>> for _ in range(20):
    ...     model.learn_one({3: 1.0}, True)
    >>> model.predict_proba_one({3: 1.0})[True] > 0.9, model.n_iterations
    (True, 20)
    """

    def __init__(
        self,
        n_features: int = 1 << 18,
        learning_rate: float = 0.05,
        l2: float = 1e-6,
        intercept_lr: float = 0.01,
        clip_gradient: float = 1e12,
    ) -> None:
        self.n_features = int(n_features)
        self.learning_rate = float(learning_rate)
        self.l2 = float(l2)
        self.intercept_lr = float(intercept_lr)
        self.clip_gradient = float(clip_gradient)
        self._w: list[float] = [0.0] * self.n_features
        self.intercept = 0.0
        #: SGD steps taken (river's ``optimizer.n_iterations``)
        self.n_iterations = 0

    def raw(self, x: Mapping[int, float]) -> float:
        """``w·x + intercept`` (the logit)."""
        w = self._w
        s = 0.0
        for j, v in x.items():
            s += w[j] * v
        return s + self.intercept

    def proba(self, x: Mapping[int, float]) -> float:
        """P(True) for ``x`` (river's clamped sigmoid)."""
        z = self.raw(x)
        if z < -30:
            return 0.0
        if z > 30:
            return 1.0
        return 1.0 / (1.0 + math.exp(-z))

    def learn(self, x: Mapping[int, float], y: bool | int) -> None:
        """One SGD step on ``(x, y)``, as river's ``learn_one``."""
        w = self._w
        s = 0.0
        for j, v in x.items():
            s += w[j] * v
        z = s + self.intercept
        # river's optim.losses.Log().gradient(y, z): y in {-1, 1}
        sign = 1 if y else -1
        m = z * sign
        if m > 18.0:
            g = math.exp(-m) * -sign
        elif m < -18.0:
            g = float(-sign)
        else:
            g = -sign / (math.exp(m) + 1.0)
        clip = self.clip_gradient
        g = min(max(g, -clip), clip)
        self.intercept -= self.intercept_lr * g
        lr, l2 = self.learning_rate, self.l2
        for j, v in x.items():
            wj = w[j]
            w[j] = wj - lr * (v * g + l2 * wj)
        self.n_iterations += 1

    # river's estimator protocol
    def learn_one(self, x: dict, y: bool | int) -> None:
        """river: learn from one example."""
        self.learn(x, y)

    def predict_proba_one(self, x: dict, **kwargs: Any) -> dict[bool, float]:
        """river: ``{False: 1 - p, True: p}``."""
        p = self.proba(x)
        return {False: 1.0 - p, True: p}

    def weights_array(self) -> np.ndarray:
        """The weights as a float64 array of ``n_features``."""
        return np.array(self._w, dtype=np.float64)

    def set_weights(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Reset to zero weights except ``w[idx] = values``."""
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.n_features):
            raise ValueError("logistic state: a weight index is outside the hash buckets")
        w = np.zeros(self.n_features, dtype=np.float64)
        w[idx] = values
        self._w = w.tolist()

    @property
    def weights(self) -> list[float]:
        """The weights themselves (a flat list: read, do not resize)."""
        return self._w

    def add_weights(self, idx: np.ndarray, values: np.ndarray) -> None:
        """``w[idx] += values`` (another model's updates, :mod:`models.model_sync`)."""
        w = self._w
        for j, v in zip(idx.tolist(), values.tolist(), strict=True):
            w[j] += v

    @property
    def n_weights(self) -> int:
        """How many weights are non-zero."""
        return int(np.count_nonzero(self.weights_array()))


class HashedLogistic:
    """:class:`HashedLogisticRegression` on ``{bucket: 1.0}`` features, with plain-data
    state (the same as when the model was river's ``LogisticRegression``: the non-zero
    weights by bucket, the intercept and the step count)."""

    name = "logistic"

    def __init__(self, learning_rate: float = 0.05, l2: float = 1e-6, bits: int = 18) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.model = HashedLogisticRegression(1 << bits, learning_rate=learning_rate, l2=l2)
        self.updates = 0

    def proba(self, features: EventFeatures) -> float:
        """P(positive) for the event."""
        return self.model.proba(features.sparse)

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
        self.model.learn(features.sparse, label)
        self.updates += 1

    def to_state(self) -> dict[str, Any]:
        """Weights as two arrays (bucket indices and values), the intercept and counters."""
        weights = self.model.weights_array()
        idx = np.flatnonzero(weights).astype(np.int64)
        val = weights[idx]
        return {
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "updates": self.updates,
            "intercept": float(self.model.intercept),
            "optimizer_steps": int(self.model.n_iterations),
            "idx": encode_array(idx),
            "w": encode_array(val),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`to_state` saved."""
        idx = decode_array(state["idx"])
        val = decode_array(state["w"])
        if idx.shape != val.shape:
            raise ValueError("logistic state: index and weight arrays differ in length")
        self.model.set_weights(idx.astype(np.int64), val.astype(np.float64))
        self.model.intercept = float(state["intercept"])
        self.model.n_iterations = int(state["optimizer_steps"])
        self.updates = int(state["updates"])
