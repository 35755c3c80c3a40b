"""``IMPORTANCE_PROCESSING_GUARANTEE=exactly_once`` against the real broker: a SIGKILL
mid-stream leaves no duplicate for ``read_committed`` readers, and the aborted work is
really there for ``read_uncommitted`` ones (so the crash did interrupt a transaction)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream_app.bench.eos import read_topic
from stream_app.transactions import committed_end, committed_ends
from tests.integration.events import synthetic_events
from tests.integration.test_worker import ids_seen

pytestmark = pytest.mark.integration

COMMITTED = {"isolation.level": "read_committed"}


def open_transaction(bootstrap: str, topic: str) -> bool:
    """Whether a partition of ``topic`` holds records of a transaction still open: its
    end offset (read_uncommitted) is past its last stable offset (read_committed)."""
    ends = {}
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "lso", "isolation.level": isolation}
        )
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            ends[isolation] = [
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in sorted(meta.partitions)
            ]
        finally:
            consumer.close()
    return any(
        end > stable
        for stable, end in zip(ends["read_committed"], ends["read_uncommitted"], strict=True)
    )


def test_sigkill_with_exactly_once_leaves_no_duplicates(bootstrap, worker_factory):
    from tests.integration.conftest import consume_all, produce

    worker = worker_factory(
        IMPORTANCE_PROCESSING_GUARANTEE="exactly_once", IMPORTANCE_ATTRIBUTION_WINDOW_S="14400"
    )
    worker.start()
    assert "exactly_once: outputs, changelogs and offsets are committed" in worker.log_text()
    events = synthetic_events(24_000, prefix="eos")
    expected = {e["event_id"] for e in events}
    # half keyed by user with the Java partitioner (scored in place), half unkeyed
    # (through the by-user topic: two transactions in a row)
    key = lambda i, e: e["user_id"].encode() if i % 2 and isinstance(e, dict) else None  # noqa: E731
    murmur2 = {"partitioner": "murmur2_random"}
    bad = [b"{not json", b'{"user_id": 1}', b"[1, 2]"] * 5

    # Events keep arriving (at most 1,000 a second) until the worker is killed; the rest
    # of them at once while it is down.
    killed = threading.Event()

    def paced() -> None:
        first = events[:16_000] + bad
        for start in range(0, len(first), 100):
            batch = first[start:] if killed.is_set() else first[start : start + 100]
            produce(bootstrap, worker.settings.topic_events, batch, key=key, config=murmur2)
            if killed.is_set():
                return
            time.sleep(0.1)

    producer = threading.Thread(target=paced, daemon=True)
    producer.start()
    consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=lambda r: len(r) >= 3000,
        timeout=180,
        config=COMMITTED,
    )
    assert producer.is_alive(), "all events were produced before the kill"
    # Kill it while a transaction holds scores already written to the broker: freeze the
    # worker (SIGSTOP), and kill it if the scores topic has records past its last stable
    # offset, else let it go on and try again a moment later.
    rng = random.Random()
    for freezes in range(1, 101):  # noqa: B007 (reported below)
        time.sleep(rng.uniform(0.05, 0.3))
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        time.sleep(0.3)  # a commit just before the stop shows in the stable offset by now
        if open_transaction(bootstrap, worker.settings.topic_scores):
            break
        os.killpg(worker.proc.pid, signal.SIGCONT)
    else:
        pytest.fail("never caught the worker with an open transaction")
    print(f"\nkilled while a transaction was open (freeze {freezes})")
    worker.kill()
    killed_at = time.time()
    killed.set()
    producer.join()
    worker.start()
    produce(bootstrap, worker.settings.topic_events, events[16_000:], key=key, config=murmur2)

    committed = consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=ids_seen(expected),
        timeout=300,
        config=COMMITTED,
    )
    time.sleep(2)  # anything a late transaction would still add
    scores_topic = worker.settings.topic_scores
    committed = read_topic(bootstrap, scores_topic, "read_committed")
    ids = Counter(r["event_id"] for r in committed)
    assert set(ids) == expected, f"{len(expected - set(ids))} missing\n{worker.log_tail()}"
    duplicated = [i for i, n in ids.items() if n > 1]
    examples = [
        (r["event_id"], r["partition"], round(r["scored_at"] - killed_at, 2), r["model"])
        for r in committed
        if r["event_id"] in set(duplicated[:3])
    ]
    assert not duplicated, (
        f"{len(duplicated)} events scored twice for read_committed readers, e.g. "
        f"(id, partition, scored relative to the kill, model) {examples}\n{worker.log_path}"
    )

    aborted = len(read_topic(bootstrap, scores_topic, "read_uncommitted")) - len(committed)
    print(f"scores: {len(committed)} committed, {aborted} more in aborted transactions")
    assert aborted > 0, "the kill interrupted no transaction: the test proved nothing"

    training = read_topic(bootstrap, worker.settings.topic_training, "read_committed")
    samples = Counter(r["event_id"] for r in training)
    assert training and max(samples.values()) == 1, "a training sample was published twice"
    dead = read_topic(bootstrap, worker.settings.topic_dlq, "read_committed")
    assert len(dead) == len(bad), f"{len(dead)} dead letters for {len(bad)} bad messages"

    # the models continued: the first record after the restart has updates of its own
    after = [r for r in committed if r["scored_at"] > killed_at]
    assert after and all(r["model"]["updates"] > 0 for r in after[:50])
    assert "restored model" in worker.log_text()


def test_committed_end_skips_markers_and_aborted_records(bootstrap):
    """What table recovery waits for: the offset after the last committed record, not
    the end offset (a transaction marker, or aborted records)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"committed-end-{time.time_ns()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, b"%d" % i, partition=0)
    producer.commit_transaction(30)  # [0] offsets 0-4, marker at 5
    producer.begin_transaction()
    for _ in range(3):
        producer.produce(topic, b"aborted", partition=0)
    for _ in range(40):
        producer.produce(topic, b"aborted", partition=1)
    producer.flush(30)  # written to the log before the abort
    producer.abort_transaction(30)  # [0] offsets 6-8, marker at 9; [1] 0-39, marker at 40
    plain = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):
        plain.produce(topic, b"%d" % i, partition=3)  # [3] no transactions: 0-2
    plain.flush(30)
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "enable.partition.eof": True,
            **COMMITTED,
        }
    )
    try:
        _, high = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=15)
        assert high == 10
        assert committed_end(reader, topic, 0) == 5
        # several partitions in one pass; [1] holds aborted records only (read back in
        # growing steps to its start), [2] nothing
        assert committed_ends(reader, [(topic, p) for p in range(4)]) == {
            (topic, 0): 5,
            (topic, 1): 0,
            (topic, 2): 0,
            (topic, 3): 3,
        }
    finally:
        reader.close()
        admin.delete_topics([topic])
