"""Replay a dataset into Kafka, optionally paced to a fixed event rate.

:func:`replay` produces events (dicts serialised with orjson, ``bytes`` sent verbatim) with a
confluent-kafka producer; :data:`replay_cmd` is the ``importance replay`` click command.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

from stream_app.clients import produce

__all__ = [
    "PRODUCER_DEFAULTS",
    "BrokerUnreachableError",
    "ReplayError",
    "ReplayStats",
    "TokenBucket",
    "infer_format",
    "replay",
    "replay_cmd",
]

#: Producer settings used by :func:`replay` (overridable through ``producer_config``).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 5,
    "batch.num.messages": 100_000,
    "queue.buffering.max.messages": 1_000_000,
    "compression.type": "lz4",
    "acks": "all",
    "enable.idempotence": True,
    # the Java client's partitioner: a user's events land in the partition the worker's
    # by-user topic would give them, so the worker scores them without re-keying
    "partitioner": "murmur2_random",
}

_PROGRESS_EVERY = 1024  # messages between progress-bar updates
_POLL_EVERY = 256  # messages between producer.poll(0) calls that serve delivery callbacks


@dataclass(frozen=True)
class ReplayStats:
    """Outcome of a replay: messages delivered, delivery failures, wall seconds, events/s."""

    sent: int
    failed: int
    seconds: float
    rate: float


class ReplayError(RuntimeError):
    """Some messages could not be delivered; ``stats`` and ``first_error`` tell more."""

    def __init__(self, stats: ReplayStats, first_error: object) -> None:
        super().__init__(
            f"{stats.failed} of {stats.sent + stats.failed} messages were not delivered "
            f"(first error: {first_error})"
        )
        self.stats = stats
        self.first_error = first_error


class BrokerUnreachableError(ConnectionError):
    """No Kafka broker answered at the bootstrap address before anything was produced."""


class TokenBucket:
    """Token-bucket pacer: on average ``rate`` acquisitions per second, bursts of ``burst``.

    Sleeps only when the bucket is empty and then for at least ``min_sleep`` seconds, so the
    pacing costs one clock read per event and stays accurate at tens of thousands of events
    per second (sleep granularity is absorbed by the bucket, not lost).
    """

    def __init__(self, rate: float, burst: float | None = None, min_sleep: float = 0.001) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        # Default burst: 50 ms worth of events, enough to absorb sleep overshoot.
        self.capacity = max(1.0, burst if burst is not None else self.rate * 0.05)
        self.min_sleep = min_sleep
        self.tokens = 1.0
        self.last = time.perf_counter()

    def acquire(self) -> None:
        """Take one token, sleeping until one is available."""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return
        while True:
            now = time.perf_counter()
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            time.sleep(max(self.min_sleep, (1.0 - self.tokens) / self.rate))


def replay(
    source: Iterable[dict[str, Any] | bytes],
    bootstrap: str,
    topic: str = "events",
    rate: float | None = None,
    limit: int | None = None,
    key_by: str | None = "user_id",
    progress: bool = True,
    producer_config: Mapping[str, Any] | None = None,
    connect_timeout: float = 15.0,
) -> ReplayStats:
    """Produce ``source`` to ``topic`` and wait until every message is acknowledged.

    Dict events are serialised with orjson and keyed by ``str(event[key_by])`` (no key when
    ``key_by`` is None or the field is missing/null); ``bytes`` are sent verbatim without key.
    ``rate`` caps the events per second (token bucket), ``limit`` the number of events.
    ``producer_config`` adds confluent-kafka settings, e.g. security from
    ``Settings.kafka_client_config()``.
    Raises :class:`BrokerUnreachableError` when no broker answers a metadata request within
    ``connect_timeout`` seconds (checked before producing), :class:`ReplayError` when any
    delivery failed.
    """
    from confluent_kafka import KafkaException, Producer
    from tqdm import tqdm

    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS}
    if producer_config:
        config.update(producer_config)
    producer = Producer(config)
    try:
        producer.list_topics(timeout=connect_timeout)
    except KafkaException as exc:
        raise BrokerUnreachableError(
            f"no Kafka broker answered at {bootstrap} within {connect_timeout:g} s: {exc}"
        ) from exc

    delivered = 0
    failed = 0
    first_error: object = None

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal delivered, failed, first_error
        if err is None:
            delivered += 1
        else:
            failed += 1
            if first_error is None:
                first_error = err

    total: int | None = limit
    if hasattr(source, "__len__"):
        n = len(source)  # type: ignore[arg-type]
        total = n if limit is None else min(n, limit)
    bar = tqdm(
        total=total,
        unit="ev",
        unit_scale=True,
        file=sys.stderr,
        disable=not progress,
        desc=f"replay -> {topic}",
        dynamic_ncols=True,
    )
    bucket = TokenBucket(rate) if rate else None
    dumps = orjson.dumps
    poll = producer.poll
    produced = 0
    pending_bar = 0
    start = time.perf_counter()
    try:
        for event in source:
            if limit is not None and produced >= limit:
                break
            if isinstance(event, (bytes, bytearray, memoryview)):
                value: bytes = bytes(event)
                key: str | None = None
            else:
                value = dumps(event)
                k = event.get(key_by) if key_by is not None else None
                key = None if k is None else str(k)
            if bucket is not None:
                bucket.acquire()
            produce(producer, topic, value, key, on_delivery=on_delivery)
            produced += 1
            if produced % _POLL_EVERY == 0:
                poll(0)
            pending_bar += 1
            if pending_bar >= _PROGRESS_EVERY:
                bar.update(pending_bar)
                pending_bar = 0
    except BaseException:
        # The source (or a signal) broke off the replay: still hand over what was produced.
        producer.flush(10.0)
        raise
    finally:
        bar.update(pending_bar)
        bar.close()
    while producer.flush(1.0) > 0:
        pass
    poll(0)
    seconds = time.perf_counter() - start
    stats = ReplayStats(
        sent=delivered,
        failed=failed,
        seconds=seconds,
        rate=delivered / seconds if seconds > 0 else 0.0,
    )
    if failed:
        raise ReplayError(stats, first_error)
    return stats


# --------------------------------------------------------------------------- CLI

_FORMATS = ("jsonl", "taobao", "open-bandit")
_TAOBAO_BEHAVIORS = {"pv", "cart", "fav", "buy"}


def infer_format(path: str | os.PathLike[str]) -> str:
    """Guess the dataset format of ``path`` from its extension and first line.

    ``.jsonl``/``.ndjson``/``.json`` -> jsonl; a directory with ``all.csv`` or a CSV whose
    header has ``propensity_score`` and ``user_feature_0`` -> open-bandit; a header-less
    five-column CSV ``user,item,category,behavior,unix_ts`` -> taobao. Raises ValueError otherwise.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "all.csv").is_file():
            return "open-bandit"
        raise ValueError(f"{p} is a directory without all.csv; pass --format")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    with p.open("r", encoding="utf-8", errors="replace", newline="") as f:
        first = f.readline().strip()
    if first.startswith("{"):
        return "jsonl"
    cols = [c.strip() for c in first.split(",")]
    if "propensity_score" in cols and "user_feature_0" in cols:
        return "open-bandit"
    if len(cols) == 5 and cols[3] in _TAOBAO_BEHAVIORS and cols[4].isdigit():
        return "taobao"
    if "taobao" in p.name.lower() or "userbehavior" in p.name.lower():
        return "taobao"
    raise ValueError(f"cannot infer the format of {p}; pass --format {'|'.join(_FORMATS)}")


def _resolve_bootstrap(explicit: str | None) -> str:
    from stream_app import broker

    try:
        return broker.bootstrap_servers(explicit)
    except Exception as exc:
        raise click.ClickException(
            "no broker given and none found running: pass --bootstrap, set "
            f"KAFKA_BOOTSTRAP_SERVERS or start one with `importance broker` ({exc})"
        ) from exc


@click.command("replay")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_FORMATS),
    default=None,
    help="Dataset format (default: inferred from the file name and first line).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Maximum events per second (default: as fast as possible).",
)
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Replay at most N events.")
@click.option(
    "--topic", default=None, help="Target topic (default: $IMPORTANCE_TOPIC_EVENTS or 'events')."
)
@click.option(
    "--bootstrap",
    default=None,
    help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS, else the local "
    "broker started by `importance broker`).",
)
@click.option(
    "--key-by",
    default="user_id",
    show_default=True,
    help="Event field used as message key; empty for no key.",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show a progress bar on stderr.",
)
def replay_cmd(
    file: Path,
    fmt: str | None,
    rate: float | None,
    limit: int | None,
    topic: str | None,
    bootstrap: str | None,
    key_by: str,
    progress: bool,
) -> None:
    """Replay FILE (jsonl, Taobao UserBehavior CSV or Open Bandit CSV) into Kafka."""
    from stream_app.datasets import read_events

    if fmt is None:
        try:
            fmt = infer_format(file)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    from stream_app.config import Settings

    topic = topic or os.environ.get("IMPORTANCE_TOPIC_EVENTS") or "events"
    servers = _resolve_bootstrap(bootstrap)
    try:
        security = Settings.from_env().kafka_client_config()  # KAFKA_SECURITY_PROTOCOL, ...
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    events = read_events(file, fmt, limit=limit)  # type: ignore[arg-type]
    try:
        stats = replay(
            events,
            servers,
            topic=topic,
            rate=rate,
            limit=limit,
            key_by=key_by or None,
            progress=progress,
            producer_config=security,
        )
    except BrokerUnreachableError as exc:
        raise click.ClickException(
            f"{exc}. Pass --bootstrap, set KAFKA_BOOTSTRAP_SERVERS or start the local broker "
            "with `importance broker`."
        ) from exc
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from exc
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    click.echo(
        f"replayed {stats.sent} {fmt} events from {file} to {topic!r} at {servers} "
        f"in {stats.seconds:.2f} s ({stats.rate:,.0f} events/s)"
    )
