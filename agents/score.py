"""Score events (already validated and keyed by user), resolve delayed labels, learn,
publish scores and training samples, and snapshot each partition's model."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from typing import Any

import orjson
from faust.types import TP

from agents import rolling
from agents.failures import agent_failed, handle
from models.engine import ImportanceEngine, ScoredEvent
from models.events import CONVERSION_TYPES, EXPOSURE_TYPES, Event, validate_event
from models.labels import LabelAttribution, Resolved
from models.state import StateError
from stream_app.app import (
    app,
    by_user_topic,
    model_topic,
    output,
    pending_table,
    resolve_bootstrap,
    settings,
)
from stream_app.failures import set_path
from stream_app.metrics import counters, progressive
from stream_app.model_store import encode_parts, read_snapshot
from stream_app.offset_guard import guard_topic
from stream_app.output import ChangelogStore

__all__ = ["process", "score"]

log = logging.getLogger(__name__)

SCORES = settings.topic_scores
TRAINING = settings.topic_training
#: IMPORTANCE_ROLLING=false: no rolling importance (about a fifth of the worker's CPU)
ROLLING = settings.rolling_enabled

#: pending exposures, one table entry each; an entry records its partition ("p"), which
#: is the changelog partition it is written to
labels = LabelAttribution(
    ChangelogStore(pending_table, output, lambda _user, entry: entry["p"]),
    window_s=settings.attribution_window_s,
    max_per_user=settings.max_pending_per_user,
    max_pending=settings.max_pending_per_partition,
)


class PartitionModel:
    """The engine of one partition of the by-user topic, with its snapshot cadence."""

    def __init__(self, partition: int, engine: ImportanceEngine) -> None:
        self.partition = partition
        self.engine = engine
        self.since_snapshot = 0
        self.last_snapshot = time.monotonic()

    def due(self) -> bool:
        return self.since_snapshot >= settings.snapshot_every or (
            self.since_snapshot > 0
            and time.monotonic() - self.last_snapshot >= settings.snapshot_interval_s
        )

    def snapshot(self) -> None:
        """Write the model's state to its partition of the model-state topic (delivered
        before the next offset commit, or in its transaction)."""
        topic = model_topic.get_topic_name()
        for key, value in encode_parts(self.partition, self.engine.to_state()):
            output.send(topic, value, key, self.partition)
        self.since_snapshot = 0
        self.last_snapshot = time.monotonic()
        counters.snapshots += 1


models: dict[int, PartitionModel] = {}


def new_engine() -> ImportanceEngine:
    return ImportanceEngine(target_rate=settings.target_keep_rate)


async def model_for(partition: int) -> PartitionModel:
    """The partition's model: in memory, else restored from its latest snapshot."""
    model = models.get(partition)
    if model is not None:
        return model
    engine = new_engine()
    try:
        parts = await read_snapshot_retrying(partition)
        model = models.get(partition)
        if model is not None:  # restored meanwhile by another agent (in place / by-user)
            return model
        if parts is not None:
            engine.load_state(parts)
            counters.snapshots_restored += 1
            log.info(
                "partition %d: restored model version %d with %d updates",
                partition,
                engine.version,
                engine.updates,
            )
    except StateError as exc:
        log.error("partition %d: saved model state unusable, starting fresh: %s", partition, exc)
        engine = new_engine()
    model = models[partition] = PartitionModel(partition, engine)
    return model


#: longest wait between two attempts to read a partition's snapshot
SNAPSHOT_RETRY_MAX_S = 10.0


async def read_snapshot_retrying(partition: int) -> dict[str, dict[str, Any]] | None:
    """The partition's latest snapshot parts (None: no snapshot yet).

    Right after a broker restart or a leader change the read can fail for a while
    ("Unknown partition", timeouts): it is retried, with a growing pause, until it works.
    Failing instead would crash the agent and lose the event in hand; starting fresh
    would throw away what the partition learned. Unreadable content (``StateError``) is
    not retried."""
    loop = asyncio.get_running_loop()
    delay = 0.5
    while True:
        try:
            return await loop.run_in_executor(
                None,
                functools.partial(read_snapshot, **settings.kafka_client_config()),
                resolve_bootstrap(settings),
                model_topic.get_topic_name(),
                partition,
            )
        except StateError:
            raise
        except Exception as exc:
            log.warning(
                "partition %d: cannot read the model snapshot yet (%s); retrying in %.1f s",
                partition,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, SNAPSHOT_RETRY_MAX_S)


def training_record(scored: dict[str, Any], label: int | None, source: str) -> bytes:
    return orjson.dumps({**scored, "label": label, "label_source": source})


def learn_resolved(model: PartitionModel, resolved: list[Resolved]) -> None:
    """Learn from exposures whose label is now known; publish the kept ones for training."""
    for item in resolved:
        progressive.update(item.info.get("p", -1.0), item.label)  # p from before learning
        model.engine.learn(item.event, item.label)
        counters.labels_resolved += 1
        if item.reason == "evicted":
            counters.labels_evicted += 1
        if item.info.get("keep"):
            output.send(
                TRAINING,
                training_record(item.info, item.label, item.reason),
                item.event.user_id.encode(),
            )
            counters.training_samples += 1


async def process(partition: int, ev: Event) -> dict[str, Any]:
    """The whole per-event path after decoding; returns the published score record."""
    model = await model_for(partition)
    engine = model.engine
    resolved = labels.expire(partition, max(engine.watermark, ev.ts))
    if ev.type in CONVERSION_TYPES:
        resolved.extend(labels.convert(partition, ev))
    scored: ScoredEvent = engine.score(ev)
    record = scored.record(updates=engine.updates, version=engine.version)
    record["partition"] = partition
    key = ev.user_id.encode()
    output.send(SCORES, orjson.dumps(record), key)
    if ROLLING:
        rolling.observe(partition, record)
    counters.scored += 1
    if scored.keep:
        counters.kept += 1
    if ev.label is not None:
        progressive.update(scored.p, ev.label)  # scored before score() learned the label
        if scored.keep:
            output.send(TRAINING, training_record(record, ev.label, "explicit"), key)
            counters.training_samples += 1
    elif ev.type in EXPOSURE_TYPES:
        # what resolving it needs: the whole record only when it becomes a training sample
        info = record if scored.keep else {"p": record["p"], "keep": False}
        resolved.extend(labels.track(partition, ev, info))
    elif scored.keep:
        output.send(TRAINING, training_record(record, None, "none"), key)
        counters.training_samples += 1
    learn_resolved(model, resolved)
    model.since_snapshot += 1
    if model.due():
        model.snapshot()
    return record


#: re-reads by-user messages Faust skips after a rebalance (see stream_app/offset_guard.py)
by_user_guard = guard_topic(app, by_user_topic.get_topic_name(), settings)


@app.agent(by_user_topic)
async def score(stream):
    """events-by-user → importance-scores (+ training-samples, model-state)."""
    try:
        async for event in stream.events():
            partition = event.message.partition
            missed = await by_user_guard.missed(partition, event.message.offset)
            if missed is None:
                continue  # handled already (delivered twice)
            await handle(event, missed, lambda p=partition: by_user_guard.handled(p), score_one)
    except Exception as exc:  # outside the handling of one event: stop, commit nothing
        agent_failed("score", exc)
        raise
    finally:
        await snapshot_all()


async def score_one(message: Any, value: bytes) -> None:
    """Score one by-user message (a Faust message, or one the offset guard read back)."""
    set_path(("score", message.partition))  # its failures count with the scoring's
    await score_value(message.partition, value, message)


async def score_value(partition: int, value: bytes, where: object) -> None:
    try:
        ev = validate_event(orjson.loads(value), now=math.inf)
    except Exception:  # written by our own decode agent: should never happen
        log.exception("skipping undecodable internal message at %s", where)
        return
    await process(partition, ev)


@app.timer(interval=settings.snapshot_interval_s)
async def snapshot_timer() -> None:
    """Save models that learned since their last snapshot, even when input is idle."""
    await snapshot_all()


async def snapshot_all() -> None:
    """Save every partition's model (on shutdown and rebalance)."""
    for model in list(models.values()):
        if model.since_snapshot:
            try:
                model.snapshot()
            except Exception:
                log.exception("could not snapshot partition %d", model.partition)


@app.on_before_shutdown.connect
async def on_shutdown(app, **kwargs) -> None:
    """Graceful stop: save every model once the streams have drained and before the
    producer's final flush (the agent's own ``finally`` may run after the producer
    stopped, and a departing worker gets no revoke callback)."""
    await snapshot_all()
    await output.checkpoint()


@app.on_partitions_revoked.connect
async def on_revoked(app, revoked: set[TP], **kwargs) -> None:
    """Save and forget the models of partitions this worker gives up."""
    topic = by_user_topic.get_topic_name()
    for tp in revoked:
        if tp.topic != topic:
            continue
        model = models.pop(tp.partition, None)
        if model is not None and model.since_snapshot:
            try:
                model.snapshot()
            except Exception:
                log.exception("could not snapshot partition %d on revoke", tp.partition)
        labels.forget_partition(tp.partition)
    # the next owner reads the snapshots: make them visible (committed) now
    await output.checkpoint()
