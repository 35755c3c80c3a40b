"""Fixtures for tests against a real Kafka broker and real worker processes.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` when set (``.ci/run`` starts the local one and
sets it); otherwise the session starts the project's local broker and stops it at the end.
Every test gets its own app id and topic names, so tests never see each other's data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from stream_app.bench.cluster import wait_worker_ready
from stream_app.broker import free_port
from stream_app.config import Settings
from stream_app.topics import ensure_topics


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """Address of a running Kafka broker."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    from stream_app import broker

    was_running = broker.status()["running"]
    address = broker.start()
    yield address
    if not was_running:
        broker.stop()


@dataclass
class WorkerHandle:
    """A worker subprocess and the settings it runs with."""

    settings: Settings
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    starts: int = field(default=0)
    #: the module run as the worker (tests.integration.failing_worker injects failures)
    module: str = "stream_app.worker"

    def start(self, timeout: float = 90.0, module: str | None = None) -> None:
        """Start the worker and wait until Faust says it is ready."""
        self.starts += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module or self.module, "worker", "--loglevel", "info"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_worker_ready(self.proc, self.log_path, offset, timeout)

    def kill(self) -> None:
        """SIGKILL the worker: no shutdown hooks run."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL after 30 s."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def worker_factory(bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., WorkerHandle]]:
    """Build workers with a unique app id and unique topics; stopped after the test."""
    handles: list[WorkerHandle] = []

    def make(**overrides: str) -> WorkerHandle:
        suffix = uuid.uuid4().hex[:8]
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "IMPORTANCE_APP_ID": f"it-{suffix}",
            "IMPORTANCE_TOPIC_EVENTS": f"events-{suffix}",
            "IMPORTANCE_TOPIC_SCORES": f"scores-{suffix}",
            "IMPORTANCE_TOPIC_DLQ": f"dlq-{suffix}",
            "IMPORTANCE_TOPIC_TRAINING": f"training-{suffix}",
            "IMPORTANCE_TOPIC_ROLLING": f"rolling-{suffix}",
            "IMPORTANCE_PARTITIONS": "4",
            "IMPORTANCE_DATA_DIR": str(tmp_path / f"worker-{suffix}"),
            "IMPORTANCE_WEB_PORT": str(free_port()),
            "IMPORTANCE_SNAPSHOT_INTERVAL_S": "2",
            "IMPORTANCE_SNAPSHOT_EVERY": "2000",
            **overrides,
        }
        old = os.environ.copy()
        try:
            os.environ.clear()
            os.environ.update(env)
            settings = Settings.from_env()
        finally:
            os.environ.clear()
            os.environ.update(old)
        # overrides may point the worker at another (e.g. secured) broker
        ensure_topics(settings, settings.bootstrap_servers or bootstrap)
        handle = WorkerHandle(settings, env, tmp_path / f"worker-{suffix}.log")
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes | dict[str, Any] | None],
    key=None,
    config: dict[str, Any] | None = None,
) -> None:
    """Produce values (dicts are JSON-encoded) and wait for every delivery.

    ``config`` adds producer settings (security, ``message.max.bytes``...)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", **(config or {})}
    )
    errors: list[Any] = []

    def report(err, _msg):
        if err is not None:
            errors.append(err)

    for i, value in enumerate(values):
        payload = orjson.dumps(value) if isinstance(value, dict) else value
        k = key(i, value) if callable(key) else key
        while True:
            try:
                producer.produce(topic, value=payload, key=k, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 120.0,
    config: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Read a topic from the beginning (JSON values) until ``until(records)`` or timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **(config or {}),
        }
    )
    records: list[dict[str, Any]] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(msg.error())
                    continue
                record = orjson.loads(msg.value())
                record["_key"] = msg.key()
                record["_partition"] = msg.partition()
                record["_ts"] = msg.timestamp()[1] / 1000.0
                records.append(record)
            if until(records):
                break
    finally:
        consumer.close()
    return records
