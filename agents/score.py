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
from models.engine import HASH_BITS, ImportanceEngine
from models.events import Event, validate_event
from models.model_sync import SharedLearners
from models.pipeline import PartitionPipeline, PipelineConfig
from models.state import StateError
from stream_app.app import (
    app,
    by_user_topic,
    client_config,
    model_topic,
    output,
    pending_table,
    resolve_bootstrap,
    settings,
)
from stream_app.failures import set_path
from stream_app.metrics import counters, progressive
from stream_app.model_store import encode_parts, read_snapshot
from stream_app.model_sync import RemoteSync
from stream_app.offset_guard import guard_topic
from stream_app.output import ChangelogStore
from stream_app.topics import model_sync_topic

__all__ = ["process", "score"]

log = logging.getLogger(__name__)

SCORES = settings.topic_scores
TRAINING = settings.topic_training
#: IMPORTANCE_ROLLING=false: no rolling importance (about a fifth of the worker's CPU)
ROLLING = settings.rolling_enabled

#: the per-event path's settings (checked here, before the worker joins the group)
CONFIG = PipelineConfig.from_settings(settings)
#: the wall clock: the event-time clocks' cap and the records' ``scored_at``
WALL = time.time
#: at most one warning per this many seconds about events ahead of the wall clock
CAPPED_WARN_EVERY_S = 60.0

#: pending exposures, one table entry each; an entry records its partition ("p"), which
#: is the changelog partition it is written to
labels = CONFIG.new_labels(ChangelogStore(pending_table, output, lambda _user, entry: entry["p"]))


class PartitionModel:
    """The per-event pipeline of one partition of the by-user topic, and its snapshots."""

    def __init__(self, partition: int, engine: ImportanceEngine) -> None:
        self.partition = partition
        self.pipeline = PartitionPipeline(
            partition, CONFIG, labels=labels, engine=engine, wall=WALL
        )
        self.engine = engine

    @property
    def since_snapshot(self) -> int:
        return self.pipeline.since_snapshot

    def due(self) -> bool:
        return self.pipeline.due()

    def snapshot(self) -> None:
        """Write the model's state to its partition of the model-state topic (delivered
        before the next offset commit, or in its transaction)."""
        topic = model_topic.get_topic_name()
        for key, value in encode_parts(self.partition, self.pipeline.snapshot_state()):
            output.send_state(topic, value, key, self.partition)
        counters.snapshots += 1


#: the models of this worker's partitions, by partition
partition_models: dict[int, PartitionModel] = {}

#: the partitions' learners made one (IMPORTANCE_MODEL_SYNC_EVERY; models/model_sync.py)
learners = SharedLearners(settings.model_sync_every)
#: ... and shared with the other workers through the model-sync topic
remote_sync = RemoteSync(
    learners, model_sync_topic(settings), client_config(settings), 1 << HASH_BITS
)
if settings.model_sync_every:
    learners.publish = remote_sync.publish


@app.task
async def model_sync() -> None:
    """Apply the learner updates other workers publish (while the worker runs)."""
    if settings.model_sync_every:
        await remote_sync.run()


@app.timer(interval=1.0)
async def model_sync_counters() -> None:
    """The sharing's counters into /metrics and /api/stats."""
    counters.model_sync_exported = learners.exported
    counters.model_sync_received = remote_sync.received
    counters.model_sync_skipped = remote_sync.skipped


def new_engine() -> ImportanceEngine:
    return CONFIG.new_engine(WALL)


async def model_for(partition: int) -> PartitionModel:
    """The partition's model: in memory, else restored from its latest snapshot."""
    model = partition_models.get(partition)
    if model is not None:
        return model
    engine = new_engine()
    try:
        parts = await read_snapshot_retrying(partition)
        model = partition_models.get(partition)
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
    model = partition_models[partition] = PartitionModel(partition, engine)
    learners.join(partition, engine)
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


_last_capped_warning = -math.inf


def warn_capped(partition: int, ev: Event) -> None:
    """Count an event whose time the partition's clock capped; warn at most once a minute."""
    global _last_capped_warning
    counters.clock_capped += 1
    now = time.monotonic()
    if now - _last_capped_warning >= CAPPED_WARN_EVERY_S:
        _last_capped_warning = now
        log.warning(
            "partition %d: event %r has ts %.0f, %.0f s ahead of this worker's clock "
            "(allowed: %g s); scored with its ts, counted as now + %g s by the event-time "
            "clock (%d such events so far; a wrong producer clock, or this worker's)",
            partition,
            ev.event_id[:64],
            ev.ts,
            ev.ts - WALL(),
            CONFIG.clock_max_skew_s,
            CONFIG.clock_max_skew_s,
            counters.clock_capped,
        )


async def process(partition: int, ev: Event) -> dict[str, Any]:
    """The whole per-event path after decoding (:class:`models.pipeline.PartitionPipeline`)
    plus publishing; returns the published score record."""
    model = await model_for(partition)
    out = model.pipeline.process(ev)
    record = out.record
    output.send(SCORES, orjson.dumps(record), ev.user_id.encode())
    if ROLLING:
        rolling.observe(partition, record, out.clock)
    counters.scored += 1
    if out.capped:
        warn_capped(partition, ev)
    for user, sample in out.training:
        output.send(TRAINING, orjson.dumps(sample), user.encode())
        if ROLLING:
            rolling.observe(partition, sample, out.clock)  # counts as kept in its pane
    counters.training_samples += len(out.training)
    counters.kept += out.kept
    counters.decided += len(out.decided)
    counters.decided_positive += sum(label for _, label, _ in out.decided)
    for p, label in out.labelled:
        progressive.update(p, label)
    for item in out.resolved:
        counters.labels_resolved += 1
        if item.reason == "evicted":
            counters.labels_evicted += 1
    learners.after_event(partition)
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
    for model in list(partition_models.values()):
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
        model = partition_models.pop(tp.partition, None)
        learners.leave(tp.partition)
        if model is not None and model.since_snapshot:
            try:
                model.snapshot()
            except Exception:
                log.exception("could not snapshot partition %d on revoke", tp.partition)
        labels.forget_partition(tp.partition)
    # the next owner reads the snapshots: make them visible (committed) now
    await output.checkpoint()
