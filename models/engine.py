"""The importance engine: one event's way from features through the scorers to an
importance, a keep decision and a weight, plus learning from resolved labels.

It is pure Python (no Kafka): the Faust agent, the offline ``importance score`` command
and the benchmarks all drive the same engine.

>>> from models.events import decode_event
>>> engine = ImportanceEngine(target_rate=0.5)
>>> ev = decode_event(b'{"user_id": 1, "item_id": 2, "type": "pv", "ts": 1511658000}')
>>> out = engine.score(ev)
>>> sorted(out.scores), 0.0 <= out.importance <= 1.0, out.keep in (True, False)
(['behavior', 'knn', 'logistic'], True, True)
>>> engine.learn(ev, 1)
>>> engine.updates
1
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.clock import EventClock
from models.events import Event
from models.features import EMBEDDING_DIM, embed, hashed_features
from models.importance import DEFAULT_WEIGHTS, RollingRank, blend
from models.sampling import ImportanceSampler
from models.scorers.base import EventFeatures
from models.scorers.behavior import BehaviorPrior
from models.scorers.knn import KNNImportance
from models.scorers.logistic import HashedLogistic
from models.state import STATE_SCHEMA, StateError

__all__ = ["ImportanceEngine", "ScoredEvent"]


@dataclass(slots=True)
class ScoredEvent:
    """The result of scoring one event."""

    event: Event
    importance: float
    scores: dict[str, float]
    p: float
    keep: bool
    probability: float
    weight: float

    def record(
        self, *, updates: int, version: int, scored_at: float | None = None
    ) -> dict[str, Any]:
        """The output record published on ``importance-scores`` (see the README contract)."""
        ev = self.event
        return {
            "event_id": ev.event_id,
            "user_id": ev.user_id,
            "item_id": ev.item_id,
            "category_id": ev.category_id,
            "type": ev.type,
            "ts": ev.ts,
            "importance": round(self.importance, 6),
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "p": round(self.p, 6),
            "keep": self.keep,
            "weight": round(self.weight, 6),
            "keep_probability": round(self.probability, 6),
            "label": ev.label,
            "model": {"updates": updates, "version": version},
            "scored_at": time.time() if scored_at is None else scored_at,
        }


class ImportanceEngine:
    """Behaviour prior + logistic learner + KNN scorer, blended, ranked and sampled."""

    def __init__(
        self,
        *,
        target_rate: float = 0.2,
        hash_bits: int = 18,
        knn_window: int = 1000,
        knn_neighbors: int = 10,
        rank_window: int = 2048,
        weights: Mapping[str, float] = DEFAULT_WEIGHTS,
        clock: EventClock | None = None,
    ) -> None:
        self.hash_bits = hash_bits
        self.weights = dict(weights)
        self.behavior = BehaviorPrior()
        self.logistic = HashedLogistic()
        self.knn = KNNImportance(n_neighbors=knn_neighbors, window_size=knn_window)
        self.rank = RollingRank(rank_window)
        self.sampler = ImportanceSampler(target_rate=target_rate)
        #: the partition's event-time clock (see :mod:`models.clock`), saved with the model
        self.clock = clock if clock is not None else EventClock()
        self.seen = 0
        self.version = 0

    @property
    def watermark(self) -> float:
        """The partition's event time: its robust clock (not the latest timestamp)."""
        return self.clock.time

    @property
    def updates(self) -> int:
        """How many labelled events the learners have learned from."""
        return self.logistic.updates

    def features(self, event: Event) -> EventFeatures:
        """Compute the shared features of an event once."""
        return EventFeatures(
            sparse=hashed_features(event, self.hash_bits),
            dense=embed(event),
            lateness_s=max(0.0, self.watermark - event.ts),
        )

    def score(self, event: Event) -> ScoredEvent:
        """Score an event, decide whether to keep it, and count it in the priors and in
        the partition's clock (its lateness is measured against the clock with it).

        An event that carries an explicit ``label`` is scored with the realised gradient
        and learned from at once.
        """
        self.seen += 1
        self.clock.observe(event.user_id, event.ts)
        feats = self.features(event)
        p = self.logistic.proba(feats)
        scores = {
            "behavior": self.behavior.score(event, feats),
            "logistic": self.logistic.score(event, feats, p),
            "knn": self.knn.score(feats.dense),
        }
        self.behavior.observe(event)
        importance = self.rank.update(blend(scores, self.weights))
        decision = self.sampler.decide(event.event_id, importance)
        if event.label is not None:
            self._learn(event, feats, event.label)
        return ScoredEvent(
            event=event,
            importance=importance,
            scores=scores,
            p=p,
            keep=decision.keep,
            probability=decision.probability,
            weight=decision.weight,
        )

    def learn(self, event: Event, label: int) -> None:
        """Learn from an event whose label resolved after it was scored."""
        self._learn(event, self.features(event), label)

    def _learn(self, event: Event, feats: EventFeatures, label: int) -> None:
        self.logistic.learn(event, feats, label)
        self.knn.learn(feats.dense, label)

    # -- state ------------------------------------------------------------------------
    def to_state(self) -> dict[str, dict[str, Any]]:
        """Plain-data state in parts, each small enough for one Kafka message."""
        self.version += 1
        return {
            "meta": {
                "schema": STATE_SCHEMA,
                "version": self.version,
                "seen": self.seen,
                "watermark": self.watermark,  # read by earlier versions
                "hash_bits": self.hash_bits,
                "rank": self.rank.to_state(),
                "sampler": self.sampler.to_state(),
                "clock": self.clock.to_state(),
            },
            "logistic": self.logistic.to_state(),
            "knn": self.knn.to_state(),
            "behavior": self.behavior.to_state(),
        }

    def load_state(self, parts: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore what :meth:`to_state` produced; raises :class:`StateError` if unusable.

        State read from Kafka is untrusted: besides its structure, numbers must be below
        2**53 in magnitude (exact in JSON; counters cannot overflow later) and the KNN window
        must have this engine's size and embedding dimension, so saved state cannot make
        the engine allocate more memory than it was configured with.
        """
        try:
            _check_untrusted(parts, self.knn.window_size)
            meta = parts["meta"]
            if meta.get("schema") != STATE_SCHEMA:
                raise StateError(f"state schema {meta.get('schema')!r} != {STATE_SCHEMA}")
            if meta.get("hash_bits") != self.hash_bits:
                raise StateError("state was saved with another number of hash bits")
            self.logistic.load_state(parts["logistic"])
            self.knn = KNNImportance.from_state(parts["knn"])
            self.behavior.load_state(parts["behavior"])
            self.rank.load_state(meta["rank"])
            self.sampler.load_state(meta["sampler"])
            if "clock" in meta:
                self.clock.load_state(meta["clock"])
            else:
                # saved by an earlier version, whose watermark was the latest timestamp
                # seen (possibly one far in the future): start the clock afresh
                self.clock.load_state({"time": 0.0, "capped": 0, "users": []})
            self.version = int(meta["version"])
            self.seen = int(meta["seen"])
        except StateError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError, MemoryError) as exc:
            raise StateError(f"unusable model state: {exc!r}") from None


#: Numbers in saved state must be exact as JSON integers (and far from int64 overflow).
_MAX_STATE_INT = 2**53


def _check_untrusted(parts: Any, knn_window: int) -> None:
    """Bounds that saved state must respect before any of it is loaded."""
    stack = [parts]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, (int, float)) and not -_MAX_STATE_INT < value < _MAX_STATE_INT:
            raise StateError(f"number {value:.3g} in saved state is out of range")
    knn = parts["knn"]
    classifier = knn["classifier"]
    for params in (knn["params"], classifier["params"]):
        if params.get("window_size") != knn_window or params.get("features") is not None:
            raise StateError(f"saved KNN window is not {knn_window} unnamed features")
    if classifier.get("dim") not in (None, EMBEDDING_DIM):
        raise StateError(f"saved KNN dimension is not {EMBEDDING_DIM}")
