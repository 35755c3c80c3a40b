"""The per-event path of one partition, without Kafka: what the worker, offline scoring
and the ``ceiling`` benchmark all run, so that they make the same decisions.

For each validated event, :meth:`PartitionPipeline.process`:

1. scores it (:class:`~models.engine.ImportanceEngine`; this also advances the
   partition's event-time clock, :mod:`models.clock`);
2. closes windows: of the partition's exposures whose deadline the partition's clock
   passed, and of the same user's exposures whose deadline the user's own (capped) time
   passed; converts the user's exposures of the item if the event is a conversion;
3. tracks the event as a pending exposure (views, clicks, impressions without a label);
4. learns from every label that resolved, in order;
5. counts the event towards the snapshot cadence;

and returns an :class:`Outcome`: the score record and the training records to publish,
the resolved labels, and figures for counters. Publishing, counting and snapshotting
through Kafka are the caller's.

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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any

from models.clock import EventClock
from models.engine import ImportanceEngine
from models.events import CONVERSION_TYPES, EXPOSURE_TYPES, Event
from models.labels import LabelAttribution, Resolved

__all__ = ["Outcome", "PartitionPipeline", "PipelineConfig", "training_record"]


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The settings the per-event path depends on (names as in ``stream_app.config``)."""

    target_keep_rate: float = 0.2
    attribution_window_s: float = 1800.0
    max_pending_per_user: int = 64
    max_pending_per_partition: int = 200_000
    snapshot_every: int = 5000
    snapshot_interval_s: float = 10.0
    clock_max_skew_s: float = 300.0
    clock_users: int = 32
    clock_recent_users: int = 128

    def __post_init__(self) -> None:
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

    def new_engine(self, now: Callable[[], float] = time.time) -> ImportanceEngine:
        """A fresh engine with its clock (``now``: the wall clock, for the clock's cap)."""
        return ImportanceEngine(target_rate=self.target_keep_rate, clock=self.new_clock(now))

    def new_labels(self, store: MutableMapping[str, dict[str, Any]]) -> LabelAttribution:
        return LabelAttribution(
            store,
            window_s=self.attribution_window_s,
            max_per_user=self.max_pending_per_user,
            max_pending=self.max_pending_per_partition,
        )


def training_record(scored: dict[str, Any], label: int | None, source: str) -> dict[str, Any]:
    """A record of ``training-samples``: the score record with its label and its source."""
    return {**scored, "label": label, "label_source": source}


@dataclass(slots=True)
class Outcome:
    """What processing one event produced."""

    #: the score record (``importance-scores``, keyed by its ``user_id``)
    record: dict[str, Any]
    #: ``(user_id, record)`` for ``training-samples``, in publishing order
    training: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: labels known now, in the order they were learned
    resolved: list[Resolved] = field(default_factory=list)
    #: ``(p before learning, label)`` per label learned, for progressive metrics
    labelled: list[tuple[float, int]] = field(default_factory=list)
    kept: bool = False
    #: the event's time was beyond the wall clock plus the allowed skew
    capped: bool = False
    #: the partition's event-time clock after the event
    clock: float = 0.0


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
        engine, labels, partition = self.engine, self.labels, self.partition
        clock = engine.clock
        capped_before = clock.capped
        scored = engine.score(ev)  # advances the clock; learns an explicit label at once
        resolved = labels.expire(partition, clock.time)
        resolved.extend(labels.expire_user(partition, ev.user_id, clock.last))
        if ev.type in CONVERSION_TYPES:
            resolved.extend(labels.convert(partition, ev))
        record = scored.record(
            updates=engine.updates, version=engine.version, scored_at=self.wall()
        )
        record["partition"] = partition
        out = Outcome(record, kept=scored.keep, capped=clock.capped > capped_before)
        user = ev.user_id
        if ev.label is not None:
            out.labelled.append((scored.p, ev.label))  # scored before score() learned it
            if scored.keep:
                out.training.append((user, training_record(record, ev.label, "explicit")))
        elif ev.type in EXPOSURE_TYPES:
            # what resolving it needs: the whole record only when it becomes a training sample
            info = record if scored.keep else {"p": record["p"], "keep": False}
            resolved.extend(labels.track(partition, ev, info))
        elif scored.keep:
            out.training.append((user, training_record(record, None, "none")))
        for item in resolved:
            out.labelled.append((item.info.get("p", -1.0), item.label))  # p from before
            engine.learn(item.event, item.label)
            if item.info.get("keep"):
                out.training.append(
                    (item.event.user_id, training_record(item.info, item.label, item.reason))
                )
        out.resolved = resolved
        out.clock = clock.time
        self.since_snapshot += 1
        return out

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
