"""Integration tests for the local Kafka broker manager (``stream_app.broker``).

They run a second, throwaway broker on a free non-default port with its runtime state
(data, pid file, logs) in a tmp dir, while reusing the shared jar cache so nothing is
re-downloaded. Ports 9092/9093 are left to the main test session's broker.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from stream_app import broker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime"),
]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Runtime state dir for a throwaway broker (jar cache stays shared)."""
    root = tmp_path / "kafka-state"
    monkeypatch.setenv("IMPORTANCE_KAFKA_DATA_DIR", str(root))
    monkeypatch.delenv("IMPORTANCE_BROKER_CONTROLLER_PORT", raising=False)
    yield root


def _consume_one(bootstrap: str, topic: str, timeout: float = 30.0) -> tuple[bytes, bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-broker-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consume error: {msg.error()}")
            return msg.key(), msg.value()
    finally:
        consumer.close()
    raise AssertionError(f"no message on {topic} within {timeout}s")


def test_broker_lifecycle(state: Path) -> None:
    port = broker.free_ports(2)
    try:
        # start: fetch (cached) + format + launch, waits for a metadata round trip
        bootstrap = broker.start(port, wait_timeout=90)
        assert bootstrap == f"127.0.0.1:{port}"
        info = broker.status(port)
        assert info["running"] is True
        assert info["formatted"] is True
        assert info["accepting"] is True
        assert info["controller_port"] == port + 1
        assert Path(info["data_dir"]).is_relative_to(state)
        assert Path(info["pid_file"]).is_file()
        pid = info["pid"]
        assert isinstance(pid, int) and pid > 0

        # idempotent: second start reuses the same process
        assert broker.start(port) == bootstrap
        assert broker.status(port)["pid"] == pid

        # the CLI reports the same thing as JSON
        result = CliRunner().invoke(broker.broker_cli, ["status", "--port", str(port)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["pid"] == pid

        # produce + consume one message through a consumer group
        topic = f"broker-it-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[
            topic
        ].result(timeout=30)
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, key=b"k1", value=b"hello")
        assert producer.flush(15) == 0
        assert _consume_one(bootstrap, topic) == (b"k1", b"hello")
        del producer, admin  # drop client connections before the broker goes away

        # stop: process gone, pid file removed, second stop is a no-op
        assert broker.stop(port) is True
        info = broker.status(port)
        assert info["running"] is False
        assert info["pid"] is None
        assert not Path(info["pid_file"]).exists()
        assert broker.stop(port) is False
        # (may linger as a zombie when init does not reap orphans, hence no os.kill check)
        assert not broker._pid_alive(pid)

        # restart on the same data: storage is not re-formatted, topic + data persisted
        meta = (state / "data" / str(port) / "meta.properties").read_text()
        assert broker.start(port, wait_timeout=90) == bootstrap
        assert (state / "data" / str(port) / "meta.properties").read_text() == meta
        new_pid = broker.status(port)["pid"]
        assert new_pid != pid
        admin = AdminClient({"bootstrap.servers": bootstrap})
        assert topic in admin.list_topics(timeout=15).topics
        assert _consume_one(bootstrap, topic) == (b"k1", b"hello")
    finally:
        broker.stop(port)
    assert broker.status(port)["running"] is False


def test_stale_pid_file_is_ignored(state: Path) -> None:
    port = broker.free_ports(2, 19492)
    proc = subprocess.Popen(["true"])
    proc.wait()  # a pid that no longer exists
    pid_file = state / "run" / f"{port}.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(json.dumps({"pid": proc.pid, "port": port}))
    info = broker.status(port)
    assert info["running"] is False
    assert not pid_file.exists()
    assert broker.stop(port) is False

    # a live process that is not our broker (pid 1) is not trusted either
    pid_file.write_text(json.dumps({"pid": 1, "port": port}))
    assert broker.status(port)["running"] is False
    assert broker.stop(port) is False


def test_start_refuses_foreign_listener(state: Path) -> None:
    port = broker.free_ports(2, 19592)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        with pytest.raises(broker.BrokerError, match=f"port {port} .* already in use"):
            broker.start(port, wait_timeout=5)
        result = CliRunner().invoke(broker.broker_cli, ["start", "--port", str(port)])
        assert result.exit_code != 0
        assert "already in use" in result.output
    assert not (state / "run" / f"{port}.pid").exists()


def test_bootstrap_servers_prefers_env(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "remote-broker:1234")
    assert broker.bootstrap_servers(start_if_needed=True) == "remote-broker:1234"
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    monkeypatch.setenv("IMPORTANCE_BROKER_PORT", "19999")
    assert broker.bootstrap_servers(start_if_needed=False) == "127.0.0.1:19999"
