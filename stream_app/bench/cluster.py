"""Harness for fault and scale-out experiments on a real broker: worker processes, a
topic collector, consumer-group lag, labelled synthetic events and progressive AUC.

Used by the fault tests (``tests/integration/test_faults.py``, ``test_scaling.py``) and by
the scripts ``python -m stream_app.bench.scaling`` and ``python -m stream_app.bench.burst``.
Nothing here asserts anything; it measures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from models.progressive import auc as roc_auc
from stream_app.broker import free_port
from stream_app.clients import produce as produce_one

__all__ = [
    "Collector",
    "Worker",
    "auc",
    "group_lag",
    "isolated_env",
    "isolation_for",
    "iter_labelled_events",
    "labelled_events",
    "produce",
    "progressive_auc",
]

BASE_TS = 1_700_000_000

#: librdkafka's own log lines (e.g. "Connect ... failed" while a test restarts the
#: broker) go here instead of stderr; errors surface through the clients' APIs anyway.
_librdkafka_log = logging.getLogger("stream_app.bench.librdkafka")
_librdkafka_log.setLevel(logging.CRITICAL)


def isolated_env(
    bootstrap: str, workdir: Path, *, prefix: str = "fs", **overrides: str
) -> dict[str, str]:
    """Environment for a worker with its own app id and topics (``<prefix>-<hex>``).

    Workers that should form one consumer group get the same app id and topics: build
    the environment once and give each worker :meth:`Worker.for_group` of it.
    """
    suffix = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "IMPORTANCE_APP_ID": suffix,
        "IMPORTANCE_TOPIC_EVENTS": f"events-{suffix}",
        "IMPORTANCE_TOPIC_SCORES": f"scores-{suffix}",
        "IMPORTANCE_TOPIC_DLQ": f"dlq-{suffix}",
        "IMPORTANCE_TOPIC_TRAINING": f"training-{suffix}",
        "IMPORTANCE_DATA_DIR": str(workdir / suffix),
        **overrides,
    }


def ensure_topics_for(env: Mapping[str, str]) -> None:
    """Create the topics of the worker environment ``env`` (as the worker would)."""
    from stream_app.config import Settings
    from stream_app.topics import ensure_topics

    old = os.environ.copy()
    try:
        os.environ.clear()
        os.environ.update(env)
        settings = Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(old)
    ensure_topics(settings, env["KAFKA_BOOTSTRAP_SERVERS"])


@dataclass
class Worker:
    """One ``python -m stream_app.worker worker`` process with a log file."""

    env: dict[str, str]
    log_path: Path
    name: str = "worker"
    proc: subprocess.Popen | None = None
    starts: int = 0
    _ps: Any = field(default=None, repr=False)

    @classmethod
    def for_group(cls, env: Mapping[str, str], workdir: Path, name: str) -> Worker:
        """A worker of the group ``env`` describes, with its own web port and data dir."""
        own = {
            **env,
            "IMPORTANCE_WEB_PORT": str(free_port()),
            "IMPORTANCE_DATA_DIR": str(workdir / f"{env['IMPORTANCE_APP_ID']}-{name}"),
        }
        return cls(own, workdir / f"{env['IMPORTANCE_APP_ID']}-{name}.log", name)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def web_port(self) -> int:
        return int(self.env["IMPORTANCE_WEB_PORT"])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, timeout: float = 120.0) -> None:
        """Start the process; with ``wait``, until Faust logs ``Worker ready``."""
        self.starts += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream_app.worker", "worker", "--loglevel", "info"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._ps = None
        if wait:
            self.wait_ready(offset, timeout)

    def wait_ready(self, offset: int = 0, timeout: float = 120.0) -> None:
        wait_worker_ready(self.proc, self.log_path, offset, timeout, self.name)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (Faust's graceful shutdown), SIGKILL after ``timeout`` seconds."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def _process(self):
        import psutil

        if self._ps is None or self._ps.pid != self.pid:
            self._ps = psutil.Process(self.pid)
        return self._ps

    def rss(self) -> int | None:
        """Resident set size in bytes (None when not running)."""
        if not self.alive():
            return None
        with contextlib.suppress(Exception):
            return self._process().memory_info().rss
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds the process has used."""
        if not self.alive():
            return None
        with contextlib.suppress(Exception):
            times = self._process().cpu_times()
            return times.user + times.system
        return None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def wait_worker_ready(
    proc: subprocess.Popen | None,
    log_path: Path,
    offset: int = 0,
    timeout: float = 120.0,
    name: str = "worker",
) -> None:
    """Wait until a worker process logs Faust's "Worker ready" after byte ``offset`` of its
    log; raise with the log's tail if it exits first or takes longer than ``timeout``."""

    def tail() -> str:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        return "\n".join(text.splitlines()[-60:])

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is None or proc.poll() is not None:
            code = proc.returncode if proc else None
            raise RuntimeError(f"{name} exited with {code}:\n{tail()}")
        with log_path.open("rb") as log:
            log.seek(offset)
            if b"Worker ready" in log.read():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{name} not ready after {timeout} s:\n{tail()}")


def produce(
    bootstrap: str,
    topic: str,
    events: Iterable[dict[str, Any]],
    *,
    rate: float | None = None,
    config: Mapping[str, Any] | None = None,
) -> int:
    """Produce JSON events keyed by ``user_id`` (optionally at ``rate`` events/s); waits
    for every delivery and returns how many were delivered."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            # the Java client's partitioner, as `importance replay` uses: the worker
            # scores such events in place
            "partitioner": "murmur2_random",
            **(config or {}),
        }
    )
    failed: list[Any] = []
    sent = 0
    start = time.perf_counter()

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    for i, event in enumerate(events):
        if rate:
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        produce_one(
            producer, topic, orjson.dumps(event), str(event["user_id"]).encode(), on_delivery=report
        )
        sent += 1
        if sent % 256 == 0:
            producer.poll(0)
    if producer.flush(120) != 0 or failed:
        raise RuntimeError(f"{len(failed)} deliveries failed: {failed[:3]}")
    return sent


def isolation_for(guarantee: str) -> str:
    """How a reader of the worker's outputs reads them under ``guarantee``:
    ``read_committed`` with ``exactly_once`` (as its readers would), else everything."""
    return "read_committed" if guarantee == "exactly_once" else "read_uncommitted"


class Collector(threading.Thread):
    """Reads a JSON topic from the beginning in the background and keeps every record
    (with ``_partition``, ``_offset`` and ``_arrived``, the wall time it was read)."""

    def __init__(self, bootstrap: str, topic: str, *, isolation: str = "read_uncommitted") -> None:
        super().__init__(daemon=True, name=f"collect-{topic}")
        self.bootstrap = bootstrap
        self.topic = topic
        self.isolation = isolation
        self.records: list[dict[str, Any]] = []
        self.ids: set[str] = set()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"collector-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": self.isolation,
                "logger": _librdkafka_log,
            }
        )
        try:
            meta = consumer.list_topics(self.topic, timeout=30).topics[self.topic]
            consumer.assign([TopicPartition(self.topic, p, 0) for p in meta.partitions])
            while not self._halt.is_set():
                batch = consumer.consume(num_messages=10_000, timeout=0.2)
                now = time.time()
                parsed = []
                for msg in batch:
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            continue  # transient (e.g. broker restarting): keep reading
                        continue
                    record = orjson.loads(msg.value())
                    record["_partition"] = msg.partition()
                    record["_offset"] = msg.offset()
                    record["_arrived"] = now
                    parsed.append(record)
                if parsed:
                    with self._lock:
                        self.records.extend(parsed)
                        self.ids.update(r.get("event_id") for r in parsed)
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def distinct(self) -> int:
        with self._lock:
            return len(self.ids)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)

    def wait(self, until: Callable[[Collector], bool], timeout: float, poll: float = 0.1) -> bool:
        """Wait until ``until(self)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError(f"collector of {self.topic} failed") from self.error
            if until(self):
                return True
            time.sleep(poll)
        return until(self)


def group_lag(bootstrap: str, group: str, topics: Iterable[str]) -> dict[str, int]:
    """Messages not yet committed by consumer group ``group``, per topic (end offset −
    committed offset, summed over partitions; a partition never committed counts from
    its low watermark)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    out: dict[str, int] = {}
    try:
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            tps = [TopicPartition(topic, p) for p in meta.partitions]
            committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
            total = 0
            for tp in tps:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                done = committed.get(tp.partition, -1)
                total += high - (done if done is not None and done >= 0 else low)
            out[topic] = total
    finally:
        consumer.close()
    return out


def iter_labelled_events(
    n: int,
    *,
    seed: int = 11,
    prefix: str = "lab",
    users: int = 2000,
    items: int = 300,
    start_ts: int = BASE_TS,
) -> Iterator[dict[str, Any]]:
    """``n`` impressions with an explicit click ``label`` that the logistic learner can
    learn: 15 % of the items are good (P(click) 0.45, else 0.03), top-2 positions click
    1.6× more. A fresh model scores them with a progressive AUC near 0.55–0.6, a trained
    one near 0.8 (``models.engine`` offline), so a model that lost its state shows.
    Labels are explicit, so no exposure waits in the pending-labels table: the worker's
    state stops growing once users, items and feature buckets have all been seen."""
    rng = random.Random(seed)
    quality = [0.45 if rng.random() < 0.15 else 0.03 for _ in range(items)]
    ts = start_ts
    for i in range(n):
        ts += rng.randint(0, 2)
        item = rng.randrange(items)
        position = rng.randint(1, 10)
        p_click = min(1.0, quality[item] * (1.6 if position <= 2 else 1.0))
        yield {
            "event_id": f"{prefix}-{i}",
            "user_id": f"u{rng.randrange(users)}",
            "item_id": f"i{item}",
            "category_id": f"c{item % 25}",
            "type": "impression",
            "ts": ts,
            "position": position,
            "label": int(rng.random() < p_click),
        }


def labelled_events(n: int, **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`iter_labelled_events` as a list."""
    return list(iter_labelled_events(n, **kwargs))


def auc(scores: Iterable[float], labels: Iterable[int]) -> float:
    """:func:`models.progressive.auc` (Mann–Whitney, ties averaged); nan without both
    classes."""
    value = roc_auc(scores, labels)
    return float("nan") if value is None else value


def progressive_auc(
    records: list[dict[str, Any]], labels: Mapping[str, int], window: int
) -> list[tuple[int, float]]:
    """AUC of the records' ``p`` against ``labels[event_id]`` over consecutive windows of
    ``window`` records, in the given order: [(index of the window's first record, AUC)]."""
    out = []
    for start in range(0, len(records) - window + 1, window):
        chunk = records[start : start + window]
        out.append((start, auc([r["p"] for r in chunk], [labels[r["event_id"]] for r in chunk])))
    return out
