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
