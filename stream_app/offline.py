"""Offline scoring: the worker's per-event pipeline (:class:`models.pipeline.PartitionPipeline`)
over a file, as one partition, without Kafka (``importance score FILE -o OUT.jsonl
[--training TRAIN.jsonl]``): the same score records and the same label-time decisions,
so the training records are exactly those a one-partition worker publishes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from models.engine import ImportanceEngine
from models.events import Event, InvalidEvent, decode_event, validate_event
from models.pipeline import Outcome, PartitionPipeline, PipelineConfig

__all__ = ["process_events", "score_events", "score_record", "training_events"]


def process_events(
    events: Iterable[dict[str, Any] | bytes],
    config: PipelineConfig | None = None,
    *,
    engine: ImportanceEngine | None = None,
    wall: Callable[[], float] = time.time,
) -> Iterator[Outcome | dict[str, Any]]:
    """One :class:`~models.pipeline.Outcome` per valid event (score record, training
    records, resolved labels: what a one-partition worker publishes for it), and an
    ``{"error": ...}`` record per invalid one, in input order. Events are validated as
    the worker validates them (bytes as message payloads; timestamps up to a day ahead of
    ``wall``).

    No model snapshots are taken, so ``model.version`` stays at the engine's.
    """
    config = config or PipelineConfig()
    pipeline = PartitionPipeline(0, config, labels={}, engine=engine, wall=wall)
    # events are scored BATCH at a time (PartitionPipeline.process_batch: the same
    # outcomes as one at a time)
    results: list[Any] = []
    valid: list[Event] = []
    for raw in events:
        try:
            # validated as the worker's decode agent does, against the same wall clock
            if isinstance(raw, (bytes, str)):
                ev = decode_event(raw.encode() if isinstance(raw, str) else raw, now=wall())
            else:
                ev = validate_event(raw, now=wall())
        except InvalidEvent as exc:
            results.append({"error": exc.code, "detail": str(exc)})
        else:
            results.append(None)
            valid.append(ev)
            if len(valid) >= BATCH:
                yield from _scored(pipeline, valid, results)
    yield from _scored(pipeline, valid, results)


#: events scored together by :func:`process_events`
BATCH = 512


def _scored(
    pipeline: PartitionPipeline, valid: list[Event], results: list[Any]
) -> Iterator[Outcome | dict[str, Any]]:
    """The outcomes of ``valid`` put in the places (None) ``results`` keeps for them, in
    input order; both lists are emptied."""
    outcomes = iter(pipeline.process_batch(valid))
    for item in results:
        yield next(outcomes) if item is None else item
    valid.clear()
    results.clear()


def score_events(
    events: Iterable[dict[str, Any] | bytes],
    *,
    target_rate: float = 0.2,
    window_s: float = 1800.0,
    engine: ImportanceEngine | None = None,
    config: PipelineConfig | None = None,
    wall: Callable[[], float] = time.time,
) -> Iterator[dict[str, Any]]:
    """Yield one score record per valid event (and an ``{"error": ...}`` record per
    invalid one), learning from labels as they resolve, exactly as one worker partition.

    ``config`` gives every setting of the path; without it, ``target_rate`` and
    ``window_s`` with the other defaults. The records are the worker's without its
    ``partition`` field.
    """
    if config is None:
        config = PipelineConfig(target_keep_rate=target_rate, attribution_window_s=window_s)
    for out in process_events(events, config, engine=engine, wall=wall):
        yield score_record(out) if isinstance(out, Outcome) else out


def score_record(out: Outcome) -> dict[str, Any]:
    """The offline score record of an outcome: the worker's without its ``partition``."""
    return {k: v for k, v in out.record.items() if k != "partition"}


def training_events(
    events: Iterable[dict[str, Any] | bytes],
    config: PipelineConfig | None = None,
    *,
    wall: Callable[[], float] = time.time,
) -> Iterator[dict[str, Any]]:
    """The training records a one-partition worker publishes for ``events`` (partition
    0), in its publishing order: the kept examples, each once its label is known.

    Exposures still waiting for their label at the end of the input are not decided
    (a worker would decide them when their window closes, on later events).
    """
    for out in process_events(events, config, wall=wall):
        if isinstance(out, Outcome):
            for _user, record in out.training:
                yield record
