"""Integration tests of stream_app.replay against a real Kafka broker.

The broker comes from ``KAFKA_BOOTSTRAP_SERVERS``; without it the broker tests skip.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream_app.datasets import read_events
from stream_app.replay import (
    BrokerUnreachableError,
    ReplayError,
    TokenBucket,
    replay,
    replay_cmd,
)

pytestmark = pytest.mark.integration

BEHAVIORS = ("pv", "pv", "pv", "pv", "pv", "pv", "cart", "fav", "pv", "buy")


@pytest.fixture(scope="module")
def bootstrap() -> str:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS is not set: no Kafka broker for integration tests")
    return servers


@pytest.fixture
def topic(bootstrap: str) -> Iterator[str]:
    """A fresh 3-partition topic, deleted afterwards."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    name = f"test-replay-{uuid.uuid4().hex[:12]}"
    for future in admin.create_topics(
        [NewTopic(name, num_partitions=3, replication_factor=1)], operation_timeout=30
    ).values():
        future.result(timeout=60)
    yield name
    for future in admin.delete_topics([name], operation_timeout=30).values():
        with contextlib.suppress(Exception):  # best effort cleanup
            future.result(timeout=60)


def write_taobao_fixture(path: Path, n: int, users: int = 37) -> Path:
    """``n`` time-ordered Taobao-format rows spread over ``users`` users."""
    start = 1511658000
    with path.open("w") as f:
        for i in range(n):
            user = (i * 7919) % users
            item = 1000 + (i * 31) % 211
            f.write(
                f"{user},{item},{item % 13},{BEHAVIORS[i % len(BEHAVIORS)]},{start + i // 10}\n"
            )
    return path


def consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list:
    """Read ``expected`` messages from the start of ``topic`` (or whatever came in ``timeout``)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-replay-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is None:
                    messages.append(msg)
        # anything beyond `expected` would be a duplicate: give it a moment to show up
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            messages.extend(m for m in consumer.consume(1000, timeout=0.2) if m.error() is None)
    finally:
        consumer.close()
    return messages


def test_replay_taobao_roundtrip(tmp_path: Path, bootstrap: str, topic: str) -> None:
    path = write_taobao_fixture(tmp_path / "UserBehavior_fixture.csv", 2000)
    source = list(read_events(path, "taobao"))
    stats = replay(source, bootstrap, topic=topic, progress=False)
    assert stats.sent == 2000 and stats.failed == 0
    assert stats.seconds > 0 and stats.rate > 0

    messages = consume(bootstrap, topic, 2000)
    assert len(messages) == 2000
    values = [orjson.loads(m.value()) for m in messages]
    assert sorted(v["event_id"] for v in values) == sorted(e["event_id"] for e in source)
    by_id = {e["event_id"]: e for e in source}
    per_key: dict[str, list[int]] = defaultdict(list)
    partitions_of_key: dict[str, set[int]] = defaultdict(set)
    for msg, value in zip(messages, values, strict=True):
        assert value == by_id[value["event_id"]]
        key = msg.key().decode()
        assert key == str(value["user_id"])
        per_key[key].append(int(value["event_id"].removeprefix("tb-")))
        partitions_of_key[key].add(msg.partition())
    assert len(per_key) == 37
    for key, line_numbers in per_key.items():
        assert line_numbers == sorted(line_numbers), f"order broken for key {key}"
        assert len(partitions_of_key[key]) == 1
    assert len({p for ps in partitions_of_key.values() for p in ps}) > 1


@pytest.mark.parametrize(("rate", "n"), [(5_000, 4_000), (50_000, 40_000)])
def test_replay_rate_pacing(tmp_path: Path, bootstrap: str, topic: str, rate: int, n: int) -> None:
    path = write_taobao_fixture(tmp_path / "UserBehavior_fixture.csv", n)
    source = list(read_events(path, "taobao"))
    stats = replay(source, bootstrap, topic=topic, rate=rate, progress=False)
    expected = n / rate
    print(
        f"\nrate {rate}/s: {stats.sent} events in {stats.seconds:.3f} s "
        f"(expected {expected:.3f} s) -> measured {stats.rate:,.0f} events/s"
    )
    assert stats.sent == n
    # The token bucket can never run ahead of the rate; the machine may make it slower.
    assert stats.seconds >= 0.5 * expected


def test_replay_cli_jsonl_with_malformed(tmp_path: Path, bootstrap: str, topic: str) -> None:
    path = tmp_path / "events.jsonl"
    good = [
        {"event_id": "e1", "user_id": "u1", "item_id": 1, "type": "view", "ts": 1},
        {"event_id": "e2", "user_id": 2, "item_id": 2, "type": "click", "ts": 2},
    ]
    path.write_bytes(orjson.dumps(good[0]) + b"\n{broken json\n" + orjson.dumps(good[1]) + b"\n")
    result = CliRunner().invoke(
        replay_cmd, [str(path), "--bootstrap", bootstrap, "--topic", topic, "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "replayed 3 jsonl events" in result.output
    messages = consume(bootstrap, topic, 3)
    got = {m.value(): m.key() for m in messages}
    assert got == {
        orjson.dumps(good[0]): b"u1",
        b"{broken json": None,
        orjson.dumps(good[1]): b"2",
    }


def test_replay_cli_limit_and_env_topic(
    tmp_path: Path, bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_taobao_fixture(tmp_path / "UserBehavior_fixture.csv", 300)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    monkeypatch.setenv("IMPORTANCE_TOPIC_EVENTS", topic)
    result = CliRunner().invoke(replay_cmd, [str(path), "--limit", "120", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "replayed 120 taobao events" in result.output
    values = [orjson.loads(m.value()) for m in consume(bootstrap, topic, 120)]
    assert sorted(int(v["event_id"][3:]) for v in values) == list(range(1, 121))


def test_replay_fails_fast_without_broker() -> None:
    """Nothing listens on port 1: replay refuses before producing instead of timing out later."""
    events = [{"user_id": i, "item_id": i, "type": "view", "ts": i} for i in range(5)]
    start = time.monotonic()
    with pytest.raises(BrokerUnreachableError, match=r"127\.0\.0\.1:1 "):
        replay(events, "127.0.0.1:1", topic="nowhere", progress=False, connect_timeout=2.0)
    assert time.monotonic() - start < 30


def test_replay_reports_delivery_failures(bootstrap: str) -> None:
    """The broker rejects messages larger than the topic's max.message.bytes: replay raises."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    name = f"test-replay-small-{uuid.uuid4().hex[:12]}"
    new = NewTopic(name, 1, 1, config={"max.message.bytes": "2000"})
    for future in admin.create_topics([new], operation_timeout=30).values():
        future.result(timeout=60)
    try:
        small = {"user_id": 1, "item_id": 1, "type": "view", "ts": 1}
        big = {**small, "context": {"blob": "x" * 5000}}
        events = [small, big, small, big, small]
        with pytest.raises(ReplayError) as info:
            replay(
                events,
                bootstrap,
                topic=name,
                progress=False,
                producer_config={"compression.type": "none"},
            )
        # the broker rejects whole batches, so the small messages batched with a big one fail too
        stats = info.value.stats
        assert stats.failed >= 2 and stats.sent + stats.failed == 5
        assert f"{stats.failed} of 5 messages were not delivered" in str(info.value)
        assert "MSG_SIZE_TOO_LARGE" in str(info.value)
    finally:
        for future in admin.delete_topics([name], operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=60)


def test_token_bucket_never_runs_ahead() -> None:
    start = time.perf_counter()
    bucket = TokenBucket(20_000)
    for _ in range(4_000):
        bucket.acquire()
    elapsed = time.perf_counter() - start
    print(f"\ntoken bucket: 4000 tokens at 20000/s in {elapsed:.3f} s (expected 0.200 s)")
    assert elapsed >= 3_999 / 20_000
