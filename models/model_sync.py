"""One learner across partitions: each partition's model shares the updates it made.

Each partition learns from its own users only; with 8 partitions every model sees an
eighth of the stream and ``p̂`` (which the samplers and scores rest on) gets worse as a
deployment grows. :class:`WeightSharing` turns the partitions' models back into one: a
partition exports the change of its weights since its last export (a sparse
:class:`WeightDelta`), and every other partition adds it to its own weights. Each SGD
step is then applied once to every model, as if one model had learned the whole stream
(with the delay of one export period), the way a parameter server or Hogwild! merges
asynchronous updates.

Foreign deltas added to a model are not exported again: the base of the next export
moves with them.

>>> from models.scorers.logistic import HashedLogisticRegression
>>> a, b = HashedLogisticRegression(16), HashedLogisticRegression(16)
>>> sa, sb = WeightSharing(a), WeightSharing(b)
>>> for _ in range(20):
...     sa.touch({3: 1.0})
...     a.learn({3: 1.0}, True)
>>> delta = sa.export()
>>> sb.apply(delta)
>>> round(b.proba({3: 1.0}), 6) == round(a.proba({3: 1.0}), 6)
True
>>> sb.export().size  # what b received is not b's to share
0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.scorers.logistic import HashedLogisticRegression
from models.state import StateError, decode_array, encode_array

__all__ = ["SharedLearners", "WeightDelta", "WeightSharing"]


@dataclass(frozen=True, slots=True)
class WeightDelta:
    """The change of one model's weights over one export period."""

    idx: np.ndarray  # int32 buckets
    val: np.ndarray  # float32 changes
    intercept: float
    steps: int  # the SGD steps it carries

    @property
    def size(self) -> int:
        """Non-zero changes carried."""
        return int(self.idx.size)

    def to_state(self) -> dict[str, Any]:
        """Plain-data form (a ``model-sync`` record)."""
        return {
            "idx": encode_array(self.idx.astype(np.int32)),
            "val": encode_array(self.val.astype(np.float32)),
            "intercept": float(self.intercept),
            "steps": int(self.steps),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], n_features: int) -> WeightDelta:
        """Decode and check a record read from Kafka (untrusted)."""
        try:
            idx, val = decode_array(state["idx"]), decode_array(state["val"])
            intercept, steps = float(state["intercept"]), int(state["steps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"malformed weight delta: {exc!r}") from None
        if idx.ndim != 1 or idx.shape != val.shape:
            raise StateError("weight delta: index and value arrays differ")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n_features):
            raise StateError("weight delta: bucket outside the model's hash buckets")
        if not (np.all(np.isfinite(val)) and np.isfinite(intercept) and 0 <= steps < 2**53):
            raise StateError("weight delta: values must be finite")
        return cls(idx.astype(np.int64), val.astype(np.float64), intercept, steps)


class WeightSharing:
    """Exports a model's own updates and adds other partitions' (see the module).

    Call :meth:`touch` with the features of every example the model learns from (the
    buckets whose weights it changed): an export then reads only those buckets, not the
    ``2**bits`` weights, so a short export period costs little.
    """

    def __init__(self, model: HashedLogisticRegression):
        self.model = model
        self._touched: set[int] = set()
        self._base: dict[int, float] = {}  # bucket → its weight at the last export
        self._base_intercept = model.intercept
        self._base_steps = model.n_iterations
        self.exported = 0
        self.applied = 0

    def touch(self, x: dict[int, float]) -> None:
        """Note the buckets of an example about to be learned (before :meth:`learn`)."""
        w, base = self.model.weights, self._base
        for j in x:
            if j not in base:
                base[j] = w[j]
        self._touched.update(x)

    @property
    def pending(self) -> int:
        """SGD steps learned since the last export."""
        return self.model.n_iterations - self._base_steps

    def export(self) -> WeightDelta:
        """The model's own change since the last export (and move the base to now)."""
        w, base = self.model.weights, self._base
        idx = np.fromiter(self._touched, dtype=np.int64, count=len(self._touched))
        idx.sort()
        val = np.fromiter((w[j] - base[j] for j in idx.tolist()), dtype=np.float64, count=idx.size)
        nz = val != 0.0
        delta = WeightDelta(
            idx=idx[nz],
            val=val[nz],
            intercept=self.model.intercept - self._base_intercept,
            steps=self.pending,
        )
        self._touched.clear()
        self._base.clear()
        self._base_intercept = self.model.intercept
        self._base_steps = self.model.n_iterations
        self.exported += 1
        return delta

    def apply(self, delta: WeightDelta) -> None:
        """Add another partition's delta to the model (and to the base: not re-exported)."""
        if delta.size:
            self.model.add_weights(delta.idx, delta.val)
            base = self._base
            for j, v in zip(delta.idx.tolist(), delta.val.tolist(), strict=True):
                if j in base:
                    base[j] += v
        self.model.intercept += delta.intercept
        self._base_intercept += delta.intercept
        self.applied += 1

    def rebase(self) -> None:
        """Forget what is not exported yet (after the model was restored from a snapshot:
        its updates since that snapshot were exported before, or are lost with it)."""
        self._touched.clear()
        self._base.clear()
        self._base_intercept = self.model.intercept
        self._base_steps = self.model.n_iterations


class SharedLearners:
    """The learners of the partitions one worker holds, made one (see the module).

    :meth:`join` a partition's engine when it is created or restored and :meth:`leave`
    when the partition goes; call :meth:`after_event` after each event a partition
    processed: once the partition learned ``sync_every`` examples since its last export,
    its delta is added to every other partition's learner here and handed to ``publish``
    (for the learners of other workers, which :meth:`receive` it). ``sync_every=0``
    turns sharing off.

    >>> from models.engine import ImportanceEngine
    >>> from models.events import decode_event
    >>> hub = SharedLearners(sync_every=1)
    >>> a, b = ImportanceEngine(), ImportanceEngine()
    >>> hub.join(0, a); hub.join(1, b)
    >>> ev = decode_event(b'{"user_id": 1, "item_id": 2, "type": "pv", "ts": 1511658000}')
    >>> _ = a.resolve(ev, 1, 0.5); hub.after_event(0)
    >>> a.logistic.model.intercept == b.logistic.model.intercept != 0.0
    True
    """

    def __init__(
        self,
        sync_every: int = 10,
        publish: Callable[[int, WeightDelta], None] | None = None,
    ) -> None:
        if not (isinstance(sync_every, int) and sync_every >= 0):
            raise ValueError(f"sync_every must be an integer >= 0, not {sync_every!r}")
        self.sync_every = sync_every
        self.publish = publish
        self.sharing: dict[int, WeightSharing] = {}
        self.exported = 0
        self.received = 0

    def join(self, partition: int, engine: Any) -> None:
        """Share ``engine``'s learner from now on (its state as it is: restored or new)."""
        if not self.sync_every:
            return
        sharing = WeightSharing(engine.logistic.model)
        engine.sharing = sharing
        self.sharing[partition] = sharing

    def leave(self, partition: int) -> None:
        """Stop sharing a partition's learner (revoked, or its model dropped)."""
        self.sharing.pop(partition, None)

    def after_event(self, partition: int) -> None:
        """Export the partition's updates once it learned ``sync_every`` examples."""
        sharing = self.sharing.get(partition)
        if sharing is None or sharing.pending < self.sync_every:
            return
        delta = sharing.export()
        self.exported += 1
        for other, peer in self.sharing.items():
            if other != partition:
                peer.apply(delta)
        if self.publish is not None:
            self.publish(partition, delta)

    def receive(self, delta: WeightDelta) -> None:
        """Add a delta exported by another worker to every learner here."""
        for peer in self.sharing.values():
            peer.apply(delta)
        self.received += 1
