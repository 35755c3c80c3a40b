"""The two comparison loops of ``importance bench speed``, and the service's per-event path
without Faust.

``textbook``
    A plain confluent-kafka loop as a tutorial would write it: ``poll()`` one message,
    ``orjson.loads``, river's usual pipelines (``compose.Select | OneHotEncoder`` plus
    ``compose.Select | StandardScaler`` into ``LogisticRegression``, and river's default
    ``neighbors.KNNClassifier`` behind a ``StandardScaler``), a counter-based behaviour prior,
    ``learn_one`` on every event (label: the event is a conversion), ``produce()`` one record.
``faust-floor``
    :func:`run_faust_floor`: the worker's two Faust hops with the same app settings but
    nothing in them (no engine, table or training samples): the cost of the framework.
``ceiling``
    A hand-tuned loop over this project's own ``models/``: batched ``consume(num_messages=…)``,
    :class:`PlainPipeline` (the worker's own per-event path, ``models/pipeline.py``, after
    decode/validate: engine scoring, the event-time clock, label expiry and attribution,
    learning from resolved labels, training samples, periodic model snapshots) and batched
    produce (``linger.ms``), committing offsets only after the producer flushed (at least
    once). It skips the repartition hop the worker
    needs (the input is keyed by user already), so it is the practical ceiling for Python
    doing this work on this machine.

Both run until SIGTERM/SIGINT (or ``--max-events``) and are started as subprocesses by
:mod:`stream_app.bench.speed`:
``python -m stream_app.bench.baselines {textbook,faust-floor,ceiling} …``.
"""

from __future__ import annotations

import math
import signal
import sys
import time
import zlib
from collections import Counter
from typing import Any

import click
import orjson

from models.engine import ImportanceEngine
from models.events import Event, InvalidEvent, decode_event
from models.pipeline import PartitionPipeline, PipelineConfig
from stream_app.config import Settings
from stream_app.model_store import encode_parts

__all__ = ["PlainPipeline", "run_ceiling", "run_textbook"]


class PlainPipeline:
    """The worker's per-event path after decoding (:class:`models.pipeline.PartitionPipeline`,
    as ``agents/score.py`` runs it) without Kafka, for several partitions: one pipeline per
    partition, delayed labels shared in a plain dict store.

    ``process`` returns the score record and appends ``(key, value)`` training samples to
    :attr:`training`; ``snapshots`` counts model snapshots taken every
    ``snapshot_every`` events of a partition (state encoded as the worker does), whose
    encoded parts go to :attr:`snapshot_parts` when ``keep_snapshots`` is set.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        store: dict[str, Any] | None = None,
        keep_snapshots: bool = False,
    ) -> None:
        self.settings = settings or Settings()
        # snapshots by count only, as this loop always took them
        self.config = PipelineConfig.from_settings(self.settings, snapshot_interval_s=math.inf)
        self.labels = self.config.new_labels({} if store is None else store)
        self.pipelines: dict[int, PartitionPipeline] = {}
        self.training: list[tuple[bytes, bytes]] = []
        self.snapshot_parts: list[tuple[int, bytes, bytes]] = []
        self.keep_snapshots = keep_snapshots
        self.snapshots = 0
        self.scored = 0

    @property
    def engines(self) -> dict[int, ImportanceEngine]:
        return {p: pipeline.engine for p, pipeline in self.pipelines.items()}

    def pipeline(self, partition: int) -> PartitionPipeline:
        pipeline = self.pipelines.get(partition)
        if pipeline is None:
            pipeline = self.pipelines[partition] = PartitionPipeline(
                partition, self.config, labels=self.labels
            )
        return pipeline

    def engine(self, partition: int) -> ImportanceEngine:
        return self.pipeline(partition).engine

    def process(self, partition: int, ev: Event) -> dict[str, Any]:
        pipeline = self.pipeline(partition)
        out = pipeline.process(ev)
        dumps = orjson.dumps
        self.training.extend((user.encode(), dumps(sample)) for user, sample in out.training)
        self.scored += 1
        if pipeline.due():
            self.snapshot(partition)
        return out.record

    def process_batch(self, partition: int, events: list[Event]) -> list[dict[str, Any]]:
        """:meth:`process` of each event of one partition in turn, computed together
        (:meth:`models.pipeline.PartitionPipeline.process_batch`): the same records."""
        pipeline = self.pipeline(partition)
        outs = pipeline.process_batch(events, on_due=lambda: self.snapshot(partition))
        dumps = orjson.dumps
        training = self.training
        for out in outs:
            training.extend((user.encode(), dumps(sample)) for user, sample in out.training)
        self.scored += len(outs)
        return [out.record for out in outs]

    def snapshot(self, partition: int) -> None:
        parts = encode_parts(partition, self.pipeline(partition).snapshot_state())
        if self.keep_snapshots:
            self.snapshot_parts.extend((partition, k, v) for k, v in parts)
        self.snapshots += 1


# --------------------------------------------------------------------------- helpers


class _Stop:
    """Set by SIGTERM/SIGINT; the loops check it between messages."""

    def __init__(self) -> None:
        self.stop = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_: Any) -> None:
        self.stop = True


def _consumer(bootstrap: str, group: str, topic: str, **extra: Any):
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            **extra,
        }
    )
    consumer.subscribe([topic])
    return consumer


# --------------------------------------------------------------------------- textbook

_LEVEL = {"view": 0.2, "pv": 0.2, "click": 0.4, "impression": 0.0, "fav": 0.6, "cart": 0.8}
_LEVEL |= {"addtocart": 0.8, "buy": 1.0, "purchase": 1.0, "transaction": 1.0}
_TEXTBOOK_CONVERSIONS = {"cart", "fav", "buy", "purchase", "addtocart", "transaction"}


def textbook_models():
    """river's usual pipelines: one-hot + scaled numbers into logistic regression, and the
    default KNN classifier on scaled numbers."""
    from river import compose, linear_model, neighbors, preprocessing

    categorical = compose.Select("type", "category_id", "item_id", "user_id") | (
        preprocessing.OneHotEncoder()
    )
    numeric = compose.Select("hour", "level", "position") | preprocessing.StandardScaler()
    logistic = (categorical + numeric) | linear_model.LogisticRegression()
    knn = (
        compose.Select("hour_sin", "hour_cos", "level", "position")
        | preprocessing.StandardScaler()
        | neighbors.KNNClassifier()
    )
    return logistic, knn


def textbook_features(event: dict[str, Any]) -> dict[str, Any]:
    ts = float(event["ts"])
    if ts > 1e10:
        ts /= 1000.0
    day = ts % 86400.0
    angle = day / 86400.0 * 2.0 * math.pi
    return {
        "type": str(event["type"]),
        "category_id": str(event.get("category_id")),
        "item_id": str(event["item_id"]),
        "user_id": str(event["user_id"]),
        "hour": day / 3600.0,
        "level": _LEVEL.get(str(event["type"]).lower(), 0.0),
        "position": float(event.get("position") or 0),
        "hour_sin": math.sin(angle),
        "hour_cos": math.cos(angle),
    }


def run_textbook(
    bootstrap: str, topic: str, output: str, group: str, max_events: int | None = None
) -> int:
    """consume → orjson → river → produce, one event at a time. Returns events processed."""
    from confluent_kafka import Producer

    stopper = _Stop()
    consumer = _consumer(bootstrap, group, topic)
    producer = Producer({"bootstrap.servers": bootstrap})
    logistic, knn = textbook_models()
    item_counts: Counter[str] = Counter()
    n = 0
    try:
        while not stopper.stop and (max_events is None or n < max_events):
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            try:
                event = orjson.loads(msg.value())
                x = textbook_features(event)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue
            p_lr = logistic.predict_proba_one(x).get(True, 0.5)
            p_knn = knn.predict_proba_one(x).get(True, 0.5)
            item_counts[x["item_id"]] += 1
            behavior = 0.5 * x["level"] + 0.5 / math.sqrt(item_counts[x["item_id"]])
            importance = (
                0.5 * 4 * p_lr * (1 - p_lr) + 0.3 * 4 * p_knn * (1 - p_knn) + 0.2 * behavior
            )
            label = x["type"].lower() in _TEXTBOOK_CONVERSIONS
            logistic.learn_one(x, label)
            knn.learn_one(x, label)
            record = {
                "event_id": event.get("event_id"),
                "user_id": x["user_id"],
                "item_id": x["item_id"],
                "importance": importance,
                "scores": {"logistic": p_lr, "knn": p_knn, "behavior": behavior},
                "keep": importance > 0.5,
                "scored_at": time.time(),
            }
            producer.produce(output, orjson.dumps(record), x["user_id"])
            producer.poll(0)
            n += 1
    finally:
        producer.flush(30)
        consumer.close()
    return n


# --------------------------------------------------------------------------- ceiling


def run_ceiling(
    bootstrap: str,
    topic: str,
    output: str,
    group: str,
    training_topic: str,
    dlq_topic: str,
    model_topic: str,
    max_events: int | None = None,
    batch: int = 2000,
    commit_interval_s: float = 1.0,
) -> int:
    """Batched consume → models/ (each partition's events of a batch scored together) →
    batched produce; offsets committed after a flush."""
    from confluent_kafka import Producer

    stopper = _Stop()
    settings = Settings.from_env()
    consumer = _consumer(
        bootstrap,
        group,
        topic,
        **{"enable.auto.commit": False, "fetch.min.bytes": 1, "queued.min.messages": 200_000},
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "lz4",
            "acks": "all",
            "message.max.bytes": 32 * 1024 * 1024,
        }
    )
    pipeline = PlainPipeline(settings, keep_snapshots=True)
    produce = producer.produce
    n = 0
    last_commit = time.monotonic()
    dirty = False
    try:
        while not stopper.stop and (max_events is None or n < max_events):
            # Block for the first message only, then take what is already there: big
            # batches under load, no added wait when the input trickles in.
            first = consumer.poll(0.05)
            msgs = [] if first is None else [first, *consumer.consume(batch - 1, 0)]
            # the batch's events per partition, in order, scored together
            by_partition: dict[int, list[Event]] = {}
            for msg in msgs:
                if msg.error():
                    continue
                raw = msg.value()
                try:
                    ev = decode_event(raw)
                except InvalidEvent as exc:
                    value = {"error": exc.code, "detail": exc.detail, "offset": msg.offset()}
                    produce(dlq_topic, orjson.dumps(value), msg.key())
                    continue
                by_partition.setdefault(msg.partition(), []).append(ev)
            for partition, events in by_partition.items():
                for ev, record in zip(
                    events, pipeline.process_batch(partition, events), strict=True
                ):
                    produce(output, orjson.dumps(record), ev.user_id.encode())
                n += len(events)
            if pipeline.training:
                for key, value in pipeline.training:
                    produce(training_topic, value, key)
                pipeline.training.clear()
            if pipeline.snapshot_parts:
                for partition, key, value in pipeline.snapshot_parts:
                    produce(model_topic, value, key, partition=partition)
                pipeline.snapshot_parts.clear()
            producer.poll(0)
            dirty = dirty or bool(msgs)
            if dirty and time.monotonic() - last_commit >= commit_interval_s:
                producer.flush(30)  # outputs are durable before their offsets are committed
                consumer.commit(asynchronous=False)
                last_commit = time.monotonic()
                dirty = False
    finally:
        producer.flush(30)
        if dirty:
            consumer.commit(asynchronous=False)
        consumer.close()
    return n


# --------------------------------------------------------------------------- Faust floor


def run_faust_floor(argv: list[str] | None = None) -> None:
    """The worker's Faust plumbing with nothing in it: one agent on ``events`` decodes the
    JSON and publishes a small record on the scores topic through the worker's
    librdkafka :class:`~stream_app.output.Output`, behind the same commit barrier.

    Same app settings and event loop as the worker (:func:`stream_app.app.create_app`,
    configured from the same environment variables; uvloop), no engine, no tables, no
    training samples: what Faust costs per event on its own.
    """
    from stream_app.app import create_app, resolve_bootstrap
    from stream_app.output import Output
    from stream_app.worker import use_uvloop

    use_uvloop()
    settings = Settings.from_env()
    app = create_app(settings)
    output = Output(resolve_bootstrap(settings), settings.kafka_client_config())
    source = app.topic(settings.topic_events, value_serializer="raw", key_serializer="raw")

    @app.agent(source)
    async def hop(stream):
        async for event in stream.events():
            obj = orjson.loads(event.value)
            user = str(obj["user_id"])
            record = {"event_id": obj.get("event_id"), "user_id": user}
            output.send(settings.topic_scores, orjson.dumps(record), user.encode())

    output.install_barrier(app)
    sys.argv = [sys.argv[0], *(argv or ["worker", "--loglevel", "info"])]
    app.main()


# --------------------------------------------------------------------------- CLI


@click.group()
def cli() -> None:
    """Baseline loops for ``importance bench speed`` (run as subprocesses)."""


@cli.command()
@click.option("--bootstrap", required=True)
@click.option("--topic", required=True)
@click.option("--output", required=True)
@click.option("--group", required=True)
@click.option("--max-events", type=int, default=None)
def textbook(bootstrap: str, topic: str, output: str, group: str, max_events: int | None) -> None:
    """The textbook loop."""
    n = run_textbook(bootstrap, topic, output, group, max_events)
    click.echo(f"textbook: {n} events", err=True)


@cli.command()
@click.option("--bootstrap", required=True)
@click.option("--topic", required=True)
@click.option("--output", required=True)
@click.option("--group", required=True)
@click.option("--training", "training_topic", required=True)
@click.option("--dlq", "dlq_topic", required=True)
@click.option("--model", "model_topic", required=True)
@click.option("--max-events", type=int, default=None)
def ceiling(
    bootstrap: str,
    topic: str,
    output: str,
    group: str,
    training_topic: str,
    dlq_topic: str,
    model_topic: str,
    max_events: int | None,
) -> None:
    """The hand-tuned loop over models/."""
    n = run_ceiling(
        bootstrap, topic, output, group, training_topic, dlq_topic, model_topic, max_events
    )
    click.echo(f"ceiling: {n} events", err=True)


@cli.command("faust-floor")
def faust_floor() -> None:
    """The worker's Faust plumbing without the engine (settings from the environment)."""
    run_faust_floor()


def partition_of(user_id: str, partitions: int) -> int:
    """A stable partition for a user id (CRC-32), for in-process runs."""
    return zlib.crc32(user_id.encode()) % partitions


if __name__ == "__main__":
    cli(sys.argv[1:])
