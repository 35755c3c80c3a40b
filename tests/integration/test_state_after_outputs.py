"""Deletions after outputs (at_least_once): while a worker's training records cannot be
delivered, the tombstones of the exposures they resolved do not reach the changelog, so
a crash then loses no positive.

The worker runs with its training records stuck in a producer queue that cannot deliver
(``tests/integration/failing_worker.py``, mode ``stuck-topic``) while views are converted
by carts. Before the fix the pending exposures'
tombstones reached the changelog while their training records waited in the producer's
queue; after a SIGKILL and a restart the carts were processed again, found nothing to
convert, and the positives were never published (1 of about 1,500 in one run of
``test_label_time.py::test_sigkill_loses_no_positive``)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.test_label_time import COMMITTED

pytestmark = pytest.mark.integration

NOW = 1_700_000_000


def _records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record (key, value) the topic holds, tombstones included."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
         "enable.partition.eof": True}
    )  # fmt: skip
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out, done = [], set()
        deadline = time.monotonic() + 20
        while len(done) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    done.add(msg.partition())
                else:
                    out.append((msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


def _tombstones(bootstrap: str, topic: str) -> int:
    return sum(1 for _key, value in _records(bootstrap, topic) if value is None)


def test_no_deletion_reaches_kafka_before_its_outputs(bootstrap, worker_factory):
    from tests.integration.conftest import consume_all, produce

    worker = worker_factory(
        IMPORTANCE_PROCESSING_GUARANTEE="at_least_once", IMPORTANCE_ATTRIBUTION_WINDOW_S="3600"
    )
    settings = worker.settings
    changelog = f"{settings.app_id}-pending-labels-changelog"
    worker.env.update(TEST_FAIL_MODE="stuck-topic", TEST_STUCK_TOPIC=settings.topic_training)
    worker.start(module="tests.integration.failing_worker")
    events = []
    for u in range(30):
        view = {"event_id": f"view-{u}", "user_id": f"user-{u}", "item_id": f"item-{u}",
                "type": "view", "ts": NOW + u}  # fmt: skip
        cart = {**view, "event_id": f"cart-{u}", "type": "cart", "ts": NOW + u + 60}
        events += [view, cart]
    produce(bootstrap, settings.topic_events, events, key=lambda i, e: e["user_id"].encode())
    ids = {e["event_id"] for e in events}
    consume_all(  # every event scored and its score delivered (that topic takes writes)
        bootstrap, settings.topic_scores, until=lambda rs: ids <= {r["event_id"] for r in rs}
    )
    time.sleep(6)  # commits were attempted meanwhile (every 2.8 s): none can complete
    assert not _records(bootstrap, settings.topic_training)  # stuck indeed
    held = _tombstones(bootstrap, changelog)
    assert held == 0, f"{held} tombstones reached Kafka before their training records"
    assert len(_records(bootstrap, changelog)) == 30  # the exposures' entries: at once

    worker.kill()
    worker.start()  # the real worker
    positives = {f"view-{u}" for u in range(30)}
    records = consume_all(
        bootstrap,
        settings.topic_training,
        until=lambda rs: positives <= {r["event_id"] for r in rs},
        timeout=120,
        config=COMMITTED,
    )
    published = {r["event_id"] for r in records if r["label"] == 1}
    assert positives <= published, f"positives lost: {sorted(positives - published)[:5]}"
    deadline = time.monotonic() + 30
    while _tombstones(bootstrap, changelog) < 30:  # the deletions follow at the commit
        assert time.monotonic() < deadline, "the deletions never followed their outputs"
        time.sleep(0.5)
