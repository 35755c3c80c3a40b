"""The importance engine: one event's way from features through the scorers to an
importance, plus deciding (label-time sampling, :mod:`models.label_sampling`) and learning
from labels once they are known.

It is pure Python (no Kafka): the Faust agent, the offline ``importance score`` command
and the benchmarks all drive the same engine.

>>> from models.events import decode_event
>>> engine = ImportanceEngine(target_rate=0.5)
>>> ev = decode_event(b'{"user_id": 1, "item_id": 2, "type": "pv", "ts": 1511658000}')
>>> out = engine.score(ev)
>>> sorted(out.scores), 0.0 <= out.importance <= 1.0, out.decision is None
(['behavior', 'knn', 'logistic'], True, True)
>>> decision = engine.resolve(ev, 1, out.p)   # its label is known: decide, then learn
>>> decision.keep, decision.pi, engine.updates   # every positive is kept
(True, 1.0, 1)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from models.clock import EventClock
from models.events import Event
from models.features import EMBEDDING_DIM, embed, hashed_features
from models.importance import DEFAULT_WEIGHTS, RollingRank, blend
from models.label_sampling import LabelDecision, LabelSampler, make_sampler
from models.scorers.base import EventFeatures
from models.scorers.behavior import BehaviorPrior
from models.scorers.knn import _BATCH_MIN, KNNImportance
from models.scorers.logistic import HashedLogistic
from models.state import STATE_SCHEMA, StateError

if TYPE_CHECKING:
    from models.model_sync import WeightSharing

#: hash buckets of the features, as a power of two (the engine's default)
HASH_BITS = 18

__all__ = ["ImportanceEngine", "ScoredEvent"]


@dataclass(slots=True)
class ScoredEvent:
    """The result of scoring one event."""

    event: Event
    importance: float
    scores: dict[str, float]
    p: float
    #: the event's hashed sparse features (what a label-time sampler reads)
    x: dict[int, float]
    #: the label-time decision of an event that carried its label (else None: decided
    #: when its label resolves, :meth:`ImportanceEngine.resolve`)
    decision: LabelDecision | None = None

    def record(
        self, *, updates: int, version: int, scored_at: float | None = None
    ) -> dict[str, Any]:
        """The output record published on ``importance-scores`` (contract: docs/contracts.md)."""
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
            "label": ev.label,
            "model": {"updates": updates, "version": version},
            "scored_at": time.time() if scored_at is None else scored_at,
        }


class ImportanceEngine:
    """Behaviour prior + logistic learner + KNN scorer, blended and ranked; labelled
    examples kept or dropped by a label-time sampler (``sampler``: a name of
    :data:`models.label_sampling.SAMPLERS` tuned to ``target_rate`` with ``salt``, or a
    sampler)."""

    def __init__(
        self,
        *,
        target_rate: float = 0.2,
        sampler: str | LabelSampler = "fisher-mix",
        salt: int = 0,
        hash_bits: int = HASH_BITS,
        knn_window: int = 1000,
        knn_neighbors: int = 10,
        rank_window: int = 2048,
        weights: Mapping[str, float] = DEFAULT_WEIGHTS,
        clock: EventClock | None = None,
    ) -> None:
        self.hash_bits = hash_bits
        self.weights = dict(weights)
        self.behavior = BehaviorPrior()
        self.logistic = HashedLogistic(bits=hash_bits)
        #: set by :class:`models.model_sync.SharedLearners` when the partitions share it
        self.sharing: WeightSharing | None = None
        self.knn = KNNImportance(n_neighbors=knn_neighbors, window_size=knn_window)
        self.rank = RollingRank(rank_window)
        self.sampler = (
            sampler
            if isinstance(sampler, LabelSampler)
            else make_sampler(sampler, target_rate=target_rate, salt=salt)
        )
        #: the partition's event-time clock (see :mod:`models.clock`), saved with the model
        self.clock = clock if clock is not None else EventClock()
        self.seen = 0
        self.version = 0
        #: nearest-neighbour operations (vector, -1 to score or the label to learn) and
        #: the events they score, begun and not yet flushed
        self._knn_ops: list[tuple[np.ndarray, int]] = []
        self._pending: list[ScoredEvent] = []

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

    # -- one event at a time ----------------------------------------------------------
    def score(self, event: Event) -> ScoredEvent:
        """Score an event and count it in the priors and in the partition's clock (its
        lateness is measured against the clock with it).

        An event that carries an explicit ``label`` is scored with the realised gradient,
        decided (kept or dropped as a training example, with ``p`` from before learning)
        and learned from at once.
        """
        scored = self.begin(event)
        self.flush()
        return scored

    def resolve(self, event: Event, label: int, p: float) -> LabelDecision:
        """An exposure's label is known: keep or drop it as a training example (``p``:
        the learner's probability when it was scored, before it learned this label),
        then learn from it."""
        decision = self.begin_resolve(event, label, p)
        self.flush()
        return decision

    def learn(self, event: Event, label: int) -> None:
        """Learn from an event whose label resolved after it was scored (no decision)."""
        self.begin_learn(event, label)
        self.flush()

    # -- in batches -------------------------------------------------------------------
    def score_many(self, events: Sequence[Event]) -> list[ScoredEvent]:
        """:meth:`score` of each event in turn, computed together: the same results."""
        scored = [self.begin(event) for event in events]
        self.flush()
        return scored

    def resolve_many(self, items: Sequence[tuple[Event, int, float]]) -> list[LabelDecision]:
        """:meth:`resolve` of each ``(event, label, p)`` in turn, computed together."""
        decisions = [self.begin_resolve(event, label, p) for event, label, p in items]
        self.flush()
        return decisions

    def begin(self, event: Event) -> ScoredEvent:
        """The first half of :meth:`score`: everything but the nearest-neighbour score and
        what depends on it (``importance``, ``scores["knn"]``), which :meth:`flush` fills
        in. Every step but those is done now, in order, so calls to :meth:`begin`,
        :meth:`begin_resolve` and :meth:`begin_learn` followed by one :meth:`flush` give
        what the one-event methods give in the same order."""
        self.seen += 1
        self.clock.observe(event.user_id, event.ts)
        feats = self.features(event)
        p = self.logistic.proba(feats)
        scores = {
            "behavior": self.behavior.score(event, feats),
            "logistic": self.logistic.score(event, feats, p),
            "knn": 0.0,
        }
        self.behavior.observe(event)
        scored = ScoredEvent(event=event, importance=0.0, scores=scores, p=p, x=feats.sparse)
        self._knn_ops.append((feats.dense, -1))
        self._pending.append(scored)
        if event.label is not None:
            scored.decision = self.sampler.decide_event(event, event.label, p, feats.sparse)
            self._learn(event, feats, event.label)
        return scored

    def begin_resolve(self, event: Event, label: int, p: float) -> LabelDecision:
        """:meth:`resolve` up to :meth:`flush` (the decision is final)."""
        feats = self.features(event)
        decision = self.sampler.decide_event(event, label, p, feats.sparse)
        self._learn(event, feats, label)
        return decision

    def begin_learn(self, event: Event, label: int) -> None:
        """:meth:`learn` up to :meth:`flush`."""
        self._learn(event, self.features(event), label)

    def flush(self) -> None:
        """Run the nearest-neighbour operations queued since the last flush (one batch,
        :meth:`models.scorers.knn.KNNImportance.run`), then blend and rank the events
        begun since, in order."""
        ops, pending = self._knn_ops, self._pending
        if not ops:
            return
        self._knn_ops, self._pending = [], []
        knn = self.knn
        if len(ops) < _BATCH_MIN:  # one by one: the same results, less overhead
            knn_scores = []
            for vec, y in ops:
                if y < 0:
                    knn_scores.append(knn.score(vec))
                else:
                    knn.learn(vec, y)
        else:
            ran = knn.run(np.stack([vec for vec, _ in ops]), [y for _, y in ops])
            knn_scores = [s for s in ran if s is not None]
        weights, rank = self.weights, self.rank
        for scored, value in zip(pending, knn_scores, strict=True):
            scored.scores["knn"] = value
            scored.importance = rank.update(blend(scored.scores, weights))

    def _learn(self, event: Event, feats: EventFeatures, label: int) -> None:
        if self.sharing is not None:
            self.sharing.touch(feats.sparse)
        self.logistic.learn(event, feats, label)
        self._knn_ops.append((feats.dense, label))

    # -- state ------------------------------------------------------------------------
    def to_state(self) -> dict[str, dict[str, Any]]:
        """Plain-data state in parts, each small enough for one Kafka message (the
        label-time sampler's in its own part, ``sampler``: its statistics may grow with
        the features it saw, up to the hash size)."""
        self.flush()
        self.version += 1
        return {
            "meta": {
                "schema": STATE_SCHEMA,
                "version": self.version,
                "seen": self.seen,
                "watermark": self.watermark,  # read by earlier versions
                "hash_bits": self.hash_bits,
                "rank": self.rank.to_state(),
                "clock": self.clock.to_state(),
            },
            "logistic": self.logistic.to_state(),
            "knn": self.knn.to_state(),
            "behavior": self.behavior.to_state(),
            "sampler": self.sampler.to_state(),
        }

    def load_state(self, parts: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore what :meth:`to_state` produced; raises :class:`StateError` if unusable.

        State read from Kafka is untrusted: besides its structure, numbers must be below
        2**53 in magnitude (exact in JSON; counters cannot overflow later) and the KNN window
        must have this engine's size and embedding dimension, so saved state cannot make
        the engine allocate more memory than it was configured with.
        """
        self.flush()
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
            # a snapshot of an earlier version has no label-time sampler: a fresh one
            # (its "sampler" in meta was the pre-label rule's); another sampler's state
            # is ignored by load_state
            if "sampler" in parts:
                self.sampler.load_state(parts["sampler"])
            if "clock" in meta:
                self.clock.load_state(meta["clock"])
            else:
                # saved by an earlier version, whose watermark was the latest timestamp
                # seen (possibly one far in the future): start the clock afresh
                self.clock.load_state({"time": 0.0, "capped": 0, "users": []})
            self.version = int(meta["version"])
            self.seen = int(meta["seen"])
            if self.sharing is not None:
                self.sharing.rebase()
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
