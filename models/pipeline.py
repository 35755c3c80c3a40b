"""The per-event path of one partition, without Kafka: what the worker, offline scoring
and the ``ceiling`` benchmark all run, so that they make the same decisions.

For each validated event, :meth:`PartitionPipeline.process`:

1. scores it (:class:`~models.engine.ImportanceEngine`; this also advances the
   partition's event-time clock, :mod:`models.clock`); an event that carries its
   ``label`` is a training example decided at once (kept or dropped by the engine's
   label-time sampler, :mod:`models.label_sampling`) and learned from;
2. closes windows: of the partition's exposures whose deadline the partition's clock
   passed, and of the same user's exposures whose deadline the user's own (capped) time
   passed; converts the user's exposures of the item if the event is a conversion;
3. tracks the event as a pending exposure (views, clicks, impressions without a label),
   with what its decision will need: ``p`` before learning and its ``importance`` (the
   features are the event's own, hashed again when it resolves);
4. decides every exposure whose label resolved (converted, window closed, evicted),
   then learns from it, in order;
5. counts the event towards the snapshot cadence;

and returns an :class:`Outcome`: the score record and the training records to publish
(the kept examples only), every decision, the resolved labels, and figures for counters.
Publishing, counting and snapshotting through Kafka are the caller's.

>>> from models.events import decode_event
>>> pipe = PartitionPipeline(0, PipelineConfig(target_keep_rate=1.0), labels={})
>>> view = decode_event(b'{"user_id": 1, "item_id": 9, "type": "pv", "ts": 1511658000}')
>>> out = pipe.process(view)
>>> out.record["partition"], out.resolved, pipe.labels.pending(0)
(0, [], 1)
>>> cart = decode_event(b'{"user_id": 1, "item_id": 9, "type": "cart", "ts": 1511658060}')
>>> out = pipe.process(cart)
>>> [(r.reason, r.label) for r in out.resolved], pipe.engine.updates
([('converted', 1)], 1)
>>> [(t["label"], t["label_source"], t["pi"], t["sampler"]) for _, t in out.training]
[(1, 'converted', 1.0, 'fisher-mix')]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from models.clock import EventClock
from models.engine import ImportanceEngine
from models.events import CONVERSION_TYPES, EXPOSURE_TYPES, Event
from models.label_sampling import LabelDecision, LabelSampler, make_sampler
from models.labels import LabelAttribution, Resolved

__all__ = ["Outcome", "PartitionPipeline", "PipelineConfig", "training_record"]


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The settings the per-event path depends on (names as in ``stream_app.config``)."""

    target_keep_rate: float = 0.2
    importance_sampler: str = "fisher-mix"
    importance_sampler_salt: int = 0
    importance_sampler_features: str | None = None
    attribution_window_s: float = 1800.0
    max_pending_per_user: int = 64
    max_pending_per_partition: int = 200_000
    snapshot_every: int = 5000
    snapshot_interval_s: float = 10.0
    clock_max_skew_s: float = 300.0
    clock_users: int = 32
    clock_recent_users: int = 128

    def __post_init__(self) -> None:
        self.new_sampler()  # raises ValueError on an unknown sampler or a bad rate or salt
        EventClock(  # raises ValueError on clock settings out of range
            users=self.clock_users,
            recent_users=self.clock_recent_users,
            max_skew_s=self.clock_max_skew_s,
        )

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> PipelineConfig:
        """The fields of any settings object that has them (``stream_app.config.Settings``)."""
        values = {f.name: getattr(settings, f.name) for f in fields(cls)}
        return cls(**{**values, **overrides})

    def new_clock(self, now: Callable[[], float] = time.time) -> EventClock:
        return EventClock(
            users=self.clock_users,
            recent_users=self.clock_recent_users,
            max_skew_s=self.clock_max_skew_s,
            now=now,
        )

    def new_sampler(self) -> LabelSampler:
        """A fresh label-time sampler (``importance_sampler`` tuned to the target rate)."""
        return make_sampler(
            self.importance_sampler,
            self.target_keep_rate,
            self.importance_sampler_salt,
            features=self.importance_sampler_features,
        )

    def new_engine(self, now: Callable[[], float] = time.time) -> ImportanceEngine:
        """A fresh engine with its clock (``now``: the wall clock, for the clock's cap)
        and its label-time sampler."""
        return ImportanceEngine(
            target_rate=self.target_keep_rate,
            sampler=self.new_sampler(),
            clock=self.new_clock(now),
        )

    def new_labels(self, store: MutableMapping[str, dict[str, Any]]) -> LabelAttribution:
        return LabelAttribution(
            store,
            window_s=self.attribution_window_s,
            max_per_user=self.max_pending_per_user,
            max_pending=self.max_pending_per_partition,
        )


def training_record(
    event: Event,
    partition: int,
    info: dict[str, Any],
    label: int,
    source: str,
    decision: LabelDecision,
) -> dict[str, Any]:
    """A record of ``training-samples`` (contract: docs/contracts.md): the example's ids, its
    ``importance`` when scored, its label and where it came from, ``p`` (the learner's
    probability before it learned this label) and how to correct for the sampling."""
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "category_id": event.category_id,
        "type": event.type,
        "ts": event.ts,
        "partition": partition,
        # (None for an exposure that an earlier version tracked without it)
        "importance": round(info["importance"], 6) if "importance" in info else None,
        "label": label,
        "label_source": source,
        "p": round(info["p"], 9),
        **decision.fields(),
    }


@dataclass(slots=True)
class Outcome:
    """What processing one event produced."""

    #: the score record (``importance-scores``, keyed by its ``user_id``)
    record: dict[str, Any]
    #: ``(user_id, record)`` for ``training-samples``: the kept examples, in publishing
    #: order
    training: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: labels known now, in the order they were learned (exposures; the event's own
    #: explicit label is not among them)
    resolved: list[Resolved] = field(default_factory=list)
    #: ``(p before learning, label)`` per label learned, for progressive metrics
    labelled: list[tuple[float, int]] = field(default_factory=list)
    #: ``(event_id, label, decision)`` per example decided now, kept or not, in order
    decided: list[tuple[str, int, LabelDecision]] = field(default_factory=list)
    #: the event's time was beyond the wall clock plus the allowed skew
    capped: bool = False
    #: the partition's event-time clock after the event
    clock: float = 0.0

    @property
    def kept(self) -> int:
        """How many examples were kept now (published on ``training-samples``)."""
        return len(self.training)


class PartitionPipeline:
    """The per-event path of one partition: engine, clock and delayed labels.

    ``labels`` is the label store (any ``MutableMapping``: a dict, or a changelog-backed
    table), or a :class:`~models.labels.LabelAttribution` shared by the partitions of one
    host. ``wall`` is the wall clock (the clock's cap and the records' ``scored_at``) and
    ``monotonic`` the timer of the snapshot cadence; both are injectable.
    """

    def __init__(
        self,
        partition: int,
        config: PipelineConfig | None = None,
        *,
        labels: LabelAttribution | MutableMapping[str, dict[str, Any]],
        engine: ImportanceEngine | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.partition = partition
        self.config = config or PipelineConfig()
        self.labels = (
            labels if isinstance(labels, LabelAttribution) else self.config.new_labels(labels)
        )
        self.engine = engine if engine is not None else self.config.new_engine(wall)
        self.wall = wall
        self.monotonic = monotonic
        self.since_snapshot = 0
        self.last_snapshot = monotonic()

    def process(self, ev: Event) -> Outcome:
        """The whole per-event path after decoding (see the module docstring)."""
        return self.process_batch([ev])[0]

    def process_batch(
        self, events: Sequence[Event], on_due: Callable[[], Any] | None = None
    ) -> list[Outcome]:
        """:meth:`process` of each event in turn, computed together: the same outcomes,
        the same label store writes in the same order, the same model.

        Events are taken in chunks that end where the snapshot cadence (by count) falls
        due; ``on_due()`` is called after a chunk when :meth:`due` (the caller snapshots
        there, as it would after that event on the one-event path).
        """
        outcomes: list[Outcome] = []
        i = 0
        while i < len(events):
            room = max(1, self.config.snapshot_every - self.since_snapshot)
            chunk = events[i : i + room]
            outcomes.extend(self._process_chunk(chunk))
            i += len(chunk)
            if on_due is not None and self.due():
                on_due()
        return outcomes

    def _process_chunk(self, events: Sequence[Event]) -> list[Outcome]:
        """Two passes: every step of every event but the nearest-neighbour scores (the
        engine queues them, :meth:`ImportanceEngine.begin`), with the label store's writes
        held back; then the scores, the importances, the records, and the writes in their
        order (what a held-back write holds is complete by then)."""
        engine, labels, partition = self.engine, self.labels, self.partition
        clock = engine.clock
        store = labels.store
        # one event: its score is known before it is tracked, nothing to hold back
        single = len(events) == 1
        held = _HeldWrites(store)
        if not single:
            labels.store = held
        steps = []
        try:
            for ev in events:
                capped_before = clock.capped
                scored = engine.begin(ev)  # advances the clock; learns an explicit label
                if single:
                    engine.flush()
                resolved = labels.expire(partition, clock.time)
                resolved.extend(labels.expire_user(partition, ev.user_id, clock.last))
                if ev.type in CONVERSION_TYPES:
                    resolved.extend(labels.convert(partition, ev))
                out = Outcome({}, capped=clock.capped > capped_before)
                # the score record's figures as of now (the records are made below)
                figures = (engine.updates, engine.version, self.wall())
                # (importance: known after the flush)
                info = {"p": scored.p, "importance": scored.importance if single else None}
                decided = []
                if ev.label is not None:
                    out.labelled.append((scored.p, ev.label))  # scored before it learned
                    assert scored.decision is not None  # begin() decides explicit labels
                    decided.append((ev, info, ev.label, "explicit", scored.decision))
                elif ev.type in EXPOSURE_TYPES:
                    # what deciding it needs (its features are hashed again from the event)
                    resolved.extend(labels.track(partition, ev, info))
                for item in resolved:
                    p = item.info.get("p", -1.0)  # p from before it learned this label
                    out.labelled.append((p, item.label))
                    if p < 0.0:  # tracked by an earlier version without p: learn only
                        engine.begin_learn(item.event, item.label)
                        continue
                    decision = engine.begin_resolve(item.event, item.label, p)
                    decided.append((item.event, item.info, item.label, item.reason, decision))
                out.resolved = resolved
                out.clock = clock.time
                self.since_snapshot += 1
                steps.append((out, scored, info, figures, decided))
        finally:
            engine.flush()
            for _out, scored, info, _figures, _decided in steps:
                info["importance"] = scored.importance
            labels.store = store
            held.apply()
        outcomes = []
        for out, scored, _info, (updates, version, scored_at), decided in steps:
            record = scored.record(updates=updates, version=version, scored_at=scored_at)
            record["partition"] = partition
            out.record = record
            for ev, info, label, source, decision in decided:
                self._decided(out, ev, info, label, source, decision)
            outcomes.append(out)
        return outcomes

    def _decided(
        self,
        out: Outcome,
        ev: Event,
        info: dict[str, Any],
        label: int,
        source: str,
        decision: LabelDecision,
    ) -> None:
        out.decided.append((ev.event_id, label, decision))
        if decision.keep:
            record = training_record(ev, self.partition, info, label, source, decision)
            out.training.append((ev.user_id, record))

    # -- snapshots --------------------------------------------------------------------
    def due(self) -> bool:
        """Whether the model should be saved now: ``snapshot_every`` events, or
        ``snapshot_interval_s`` seconds with at least one event, since the last save."""
        config = self.config
        return self.since_snapshot >= config.snapshot_every or (
            self.since_snapshot > 0
            and math.isfinite(config.snapshot_interval_s)
            and self.monotonic() - self.last_snapshot >= config.snapshot_interval_s
        )

    def snapshot_state(self) -> dict[str, dict[str, Any]]:
        """The engine's state to save (bumps its version) and a restart of the cadence."""
        state = self.engine.to_state()
        self.since_snapshot = 0
        self.last_snapshot = self.monotonic()
        return state


_DELETED = object()


class _HeldWrites(MutableMapping[str, Any]):
    """A view of a label store whose writes are held back and applied, in their order,
    by :meth:`apply` (reads see them at once)."""

    def __init__(self, base: MutableMapping[str, Any]) -> None:
        self.base = base
        self._overlay: dict[str, Any] = {}
        self._writes: list[tuple[str, Any]] = []

    def __getitem__(self, key: str) -> Any:
        value = self._overlay.get(key, self)
        if value is self:
            return self.base[key]
        if value is _DELETED:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        value = self._overlay.get(key, self)  # type: ignore[call-overload]
        if value is self:
            return key in self.base
        return value is not _DELETED

    def __setitem__(self, key: str, value: Any) -> None:
        self._overlay[key] = value
        self._writes.append((key, value))

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._overlay[key] = _DELETED
        self._writes.append((key, _DELETED))

    def __iter__(self) -> Iterator[str]:
        overlay = self._overlay
        for key in list(self.base):
            if key not in overlay:
                yield key
        for key, value in list(overlay.items()):
            if value is not _DELETED:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def apply(self) -> None:
        """Make the held writes in the base store, in order."""
        base = self.base
        for key, value in self._writes:
            if value is _DELETED:
                del base[key]
            else:
                base[key] = value
        self._writes.clear()
        self._overlay.clear()
