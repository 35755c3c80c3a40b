"""The hot path's librdkafka producer on a real broker: where keys land, the commit
barrier, and what a failed delivery does."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from stream_app.output import DeliveryError, Output, partition_for
from tests.integration.conftest import consume_all

pytestmark = pytest.mark.integration


def make_topic(bootstrap: str, partitions: int = 4, **config: str) -> str:
    name = f"output-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config)])
    for future in futures.values():
        future.result(30)
    return name


class FakeProducer:
    """Stands for Faust's producer: records when its flush ran."""

    def __init__(self) -> None:
        self.flushed = 0

    async def flush(self) -> None:
        self.flushed += 1


class FakeApp:
    def __init__(self) -> None:
        self.producer = FakeProducer()


def test_keys_land_where_the_worker_expects_them(bootstrap):
    """A key sent through Output lands in partition murmur2(key) % n: the partition the
    decode agent checks before scoring an event in place (and the Java client's)."""
    topic = make_topic(bootstrap)
    output = Output(bootstrap)
    keys = [f"user-{i}".encode() for i in range(200)] + [str(i).encode() for i in range(200)]
    for key in keys:
        output.send(topic, b"{}", key)
    output.flush_sync(30)
    records = consume_all(bootstrap, topic, until=lambda recs: len(recs) >= len(keys), timeout=60)
    assert len(records) == len(keys)
    placed = {r["_key"]: r["_partition"] for r in records}
    assert set(placed.values()) == {0, 1, 2, 3}
    for key, partition in placed.items():
        assert partition == partition_for(key, 4), key


def test_barrier_delivers_before_fausts_flush(bootstrap):
    """After the barrier returns, everything sent before it is readable; Faust's own
    flush ran after ours."""
    topic = make_topic(bootstrap, partitions=1)
    output = Output(bootstrap)
    app = FakeApp()
    faust_producer = app.producer
    output.install_barrier(app)
    for i in range(5_000):
        output.send(topic, b'{"i": %d}' % i, None)
    assert len(output.producer) > 0  # still queued: nothing has flushed it yet

    asyncio.run(app.producer.flush())
    assert len(output.producer) == 0
    assert faust_producer.flushed == 1
    records = consume_all(bootstrap, topic, until=lambda recs: len(recs) >= 5_000, timeout=60)
    assert sorted(r["i"] for r in records) == list(range(5_000))


def test_failed_delivery_stops_the_commit(bootstrap):
    """A message the broker refuses fails the barrier with DeliveryError, and Faust's
    flush (after which it would commit the offsets) is not reached."""
    topic = make_topic(bootstrap, partitions=1, **{"max.message.bytes": "2000"})
    output = Output(bootstrap)
    app = FakeApp()
    faust_producer = app.producer
    output.install_barrier(app)
    output.send(topic, os.urandom(10_000), b"k")  # over the limit, even lz4-compressed
    with pytest.raises(DeliveryError, match=topic):
        asyncio.run(app.producer.flush())
    assert faust_producer.flushed == 0
    # the error is reported once; later messages are delivered again
    output.send(topic, b'{"small": 1}', b"k")
    asyncio.run(app.producer.flush())
    assert faust_producer.flushed == 1


def replacement_to(dlq: str, calls: list):
    def replace(code, detail, topic, key, value, origin):
        calls.append((code, topic, len(value or b""), origin))
        return dlq, key, b'{"error": "%s", "destination": "%s"}' % (code.encode(), topic.encode())

    return replace


def test_record_refused_in_a_delivery_report_is_replaced_not_fatal(bootstrap):
    """Outside transactions, a record the broker refuses because of its content ("Message
    size too large": the limit was not known, or lowered since the start) is replaced by
    its dead letter, delivered before the barrier lets Faust commit; the worker goes on."""
    topic = make_topic(bootstrap, partitions=1, **{"max.message.bytes": "2000"})
    dlq = make_topic(bootstrap, partitions=1)
    output = Output(bootstrap)
    calls: list = []
    output.replace = replacement_to(dlq, calls)
    output.no_replacement = {dlq}
    app = FakeApp()
    output.install_barrier(app)
    output.send(topic, os.urandom(10_000), b"k")  # not known to be over: produced
    output.send(topic, b'{"small": 1}', b"k")
    asyncio.run(app.producer.flush())  # no DeliveryError
    assert app.producer.flushed == 1
    assert [c[0] for c in calls] == ["output_too_large"] and calls[0][1:3] == (topic, 10_000)
    letters = consume_all(bootstrap, dlq, until=lambda recs: len(recs) >= 1, timeout=30)
    assert letters[0]["destination"] == topic
    kept = consume_all(bootstrap, topic, until=lambda recs: len(recs) >= 1, timeout=30)
    assert [r["small"] for r in kept] == [1]


def test_record_over_a_known_limit_is_replaced_before_it_is_produced(bootstrap):
    """With the limits read at start, an oversize record never reaches librdkafka (with
    exactly_once, one refused record would abort the whole transaction)."""
    topic = make_topic(bootstrap, partitions=1, **{"max.message.bytes": "4096"})
    dlq = make_topic(bootstrap, partitions=1)
    output = Output(bootstrap, transactional_id=f"test-{uuid.uuid4().hex[:8]}")
    calls: list = []
    output.replace = replacement_to(dlq, calls)
    output.set_limits({topic: 4096, dlq: 1_048_588}, 1_048_588)
    output.origin = ("events", 3, 17)
    output.send(topic, os.urandom(5_000), b"k")
    output.send(topic, b'{"small": 2}', b"k")
    output.commit_transaction_sync()
    assert calls == [("output_too_large", topic, 5_000, ("events", 3, 17))]
    assert output.replaced == 1
    kept = consume_all(bootstrap, topic, until=lambda recs: len(recs) >= 1, timeout=30)
    assert [r["small"] for r in kept] == [2]


def test_batches_stay_under_the_smallest_topic_limit(bootstrap):
    """librdkafka batches up to batch.size (1 MB) and does not split a batch the broker
    refuses: with a 4,096-byte topic, many small records in one linger would all fail.
    set_limits keeps batches under the smallest limit."""
    topic = make_topic(bootstrap, partitions=1, **{"max.message.bytes": "4096"})
    output = Output(bootstrap)
    output.set_limits({topic: 4096}, 1_048_588)
    payloads = [os.urandom(300).hex().encode() for _ in range(200)]  # 600 bytes each
    for payload in payloads:
        output.send(topic, b'{"p": "%s"}' % payload, b"k")
    output.flush_sync(60)  # raises DeliveryError if a batch was refused
    records = consume_all(bootstrap, topic, until=lambda recs: len(recs) >= 200, timeout=60)
    assert len(records) == 200


def test_refused_barrier_commits_nothing(bootstrap):
    """After refuse() (a systemic processing failure) the barrier raises WorkerFailed
    before Faust's flush, after which it would commit."""
    from stream_app.output import WorkerFailed

    output = Output(bootstrap)
    app = FakeApp()
    output.install_barrier(app)
    output.refuse("3 consecutive events failed")
    with pytest.raises(WorkerFailed, match="consecutive"):
        asyncio.run(app.producer.flush())
    assert app.producer.flushed == 0
    with pytest.raises(WorkerFailed):
        output.commit_transaction_sync()
