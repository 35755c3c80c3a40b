"""The transactional commit of ``exactly_once`` without a broker: the group metadata
librdkafka expects, and the order of what happens to the producer when Faust commits."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException
from faust.types import TP

from stream_app.output import Output, TransactionError
from stream_app.transactions import ExactlyOnce, group_metadata


@pytest.mark.parametrize("instance", [None, "worker-1"])
def test_group_metadata_is_what_librdkafka_writes(instance):
    config = {"group.id": "my-group", "bootstrap.servers": "127.0.0.1:1", "log_level": 0}
    if instance:
        config["group.instance.id"] = instance
    consumer = Consumer(config)
    try:
        # a consumer that has not joined: generation -1, no member id
        assert group_metadata("my-group", -1, "", instance) == consumer.consumer_group_metadata()
    finally:
        consumer.close()


def test_group_metadata_carries_generation_and_member():
    raw = group_metadata("g", 7, "member-abc")
    assert raw.startswith(b"CGMDv2:")
    assert int.from_bytes(raw[7:11], "little", signed=True) == 7
    assert raw[11:] == b"g\0member-abc\0\x01"


class FakeProducer:
    """Records what the output does to librdkafka; commit_transaction takes a while."""

    def __init__(self, fail_commit: KafkaError | None = None, commit_s: float = 0.2) -> None:
        self.calls: list[tuple] = []
        self.fail_commit = fail_commit
        self.commit_s = commit_s
        self.lock = threading.Lock()
        self.active = self.most_active = 0

    def _record(self, *call) -> None:
        with self.lock:
            self.calls.append(call)

    def produce(self, topic, value, key, partition):
        self._record("produce", topic, value)

    def poll(self, _timeout):
        return 0

    def __len__(self):
        return 0

    def send_offsets_to_transaction(self, offsets, metadata, _timeout):
        self._record("send_offsets", [(o.topic, o.partition, o.offset) for o in offsets], metadata)

    def commit_transaction(self, _timeout=None):
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.commit_s)
        with self.lock:
            self.active -= 1
        if self.fail_commit is not None:
            self._record("commit_failed")
            raise KafkaException(self.fail_commit)
        self._record("commit")

    def abort_transaction(self, _timeout=None):
        self._record("abort")

    def begin_transaction(self):
        self._record("begin")


def transactional_output(producer: FakeProducer) -> Output:
    output = Output("127.0.0.1:1", transactional_id="t-1")
    output._producer = producer  # as if init_transactions and begin_transaction had run
    return output


class FakeConsumer:
    """What the commit reads of Faust's consumer: acknowledged offsets per partition."""

    def __init__(self, acked: dict[TP, list[int]]) -> None:
        self._acked = {tp: list(offsets) for tp, offsets in acked.items()}
        self._acked_index = {tp: set(offsets) for tp, offsets in acked.items()}
        self._gap: dict = {}
        self._committed_offset: dict[TP, int] = {}
        coordinator = SimpleNamespace(generation=3, member_id="m-1", _group_instance_id=None)
        self._thread = SimpleNamespace(
            tp_last_committed_at={}, _consumer=SimpleNamespace(_coordinator=coordinator)
        )

    def assignment(self):
        return {TP("events", 0), TP("events", 1)}


def fake_app(consumer: FakeConsumer) -> SimpleNamespace:
    committed: list[dict] = []
    return SimpleNamespace(
        consumer=consumer,
        conf=SimpleNamespace(id="my-app"),
        tables=SimpleNamespace(on_commit=committed.append),
        monitor=SimpleNamespace(on_tp_commit=lambda offsets: None),
        committed=committed,
    )


def test_commit_puts_acked_offsets_in_the_transaction_and_holds_new_messages():
    producer = FakeProducer()
    output = transactional_output(producer)
    tp0, tp1, revoked = TP("events", 0), TP("events", 1), TP("events", 2)
    consumer = FakeConsumer({tp0: [9, 10], tp1: [2, 4], revoked: [8]})
    app = fake_app(consumer)
    folded = []
    eos = ExactlyOnce(
        app,
        output,
        lambda: {},
        before_commit=lambda: (folded.append(1), output.send("rolling", b"batch")),
    )

    async def scenario():
        output.send("scores", b"a")
        commit = asyncio.ensure_future(eos.commit_tps([tp0, tp1, revoked]))
        await asyncio.sleep(0.05)  # the transaction is committing in its thread
        output.send("scores", b"b")  # an event processed meanwhile
        assert await commit is True

    asyncio.run(scenario())
    names = [c[0] for c in producer.calls]
    assert names == ["produce", "produce", "send_offsets", "commit", "begin", "produce"]
    assert [c[2] for c in producer.calls if c[0] == "produce"] == [b"a", b"batch", b"b"]
    offsets = producer.calls[2][1]
    assert sorted(offsets) == [("events", 0, 11), ("events", 1, 5)]  # not the revoked one
    assert producer.calls[2][2] == group_metadata("my-app", 3, "m-1")
    assert folded == [1]
    assert consumer._committed_offset == {tp0: 11, tp1: 5}
    assert app.committed == [{tp0: 11, tp1: 5}]
    assert output.in_transaction == 1  # b, in the new transaction


def test_commit_without_offsets_still_commits_what_timers_produced():
    producer = FakeProducer(commit_s=0)
    output = transactional_output(producer)
    app = fake_app(FakeConsumer({}))
    eos = ExactlyOnce(app, output, lambda: {})

    assert asyncio.run(eos.commit_tps([])) is False  # nothing produced, nothing to commit
    assert producer.calls == []
    output.send("importance-rolling", b"x")
    assert asyncio.run(eos.commit_tps([])) is False
    assert [c[0] for c in producer.calls] == ["produce", "commit", "begin"]


def test_a_transaction_that_cannot_commit_is_aborted_and_stops_the_worker():
    error = KafkaError(KafkaError._FENCED, "fenced", txn_requires_abort=True)
    producer = FakeProducer(fail_commit=error, commit_s=0)
    output = transactional_output(producer)
    app = fake_app(FakeConsumer({TP("events", 0): [2]}))
    failures = []
    eos = ExactlyOnce(app, output, lambda: {}, on_failure=failures.append)
    output.send("scores", b"a")

    assert asyncio.run(eos.commit_tps([TP("events", 0)])) is False
    assert [c[0] for c in producer.calls] == ["produce", "send_offsets", "commit_failed", "abort"]
    assert len(failures) == 1 and isinstance(failures[0], TransactionError)
    assert app.consumer._committed_offset == {}  # Faust does not think it committed


def test_retriable_commit_errors_are_retried():
    producer = FakeProducer(commit_s=0)
    attempts = []

    def flaky_commit(_timeout=None):
        attempts.append(1)
        if len(attempts) < 3:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True))
        producer._record("commit")

    producer.commit_transaction = flaky_commit
    output = transactional_output(producer)
    output.send("scores", b"a")
    output.commit_transaction_sync()
    assert len(attempts) == 3
    assert [c[0] for c in producer.calls] == ["produce", "commit", "begin"]


def test_a_checkpoint_and_a_commit_never_overlap():
    """on_revoked/on_shutdown commit the transaction too (snapshots): one at a time."""
    producer = FakeProducer(commit_s=0.1)
    output = transactional_output(producer)
    app = fake_app(FakeConsumer({TP("events", 0): [3]}))
    eos = ExactlyOnce(app, output, lambda: {})

    async def scenario():
        output.send("scores", b"a")
        commit = asyncio.ensure_future(eos.commit_tps([TP("events", 0)]))
        await asyncio.sleep(0.01)
        output.send("model-state", b"snapshot")  # held: the commit is on its way
        await output.checkpoint()
        await commit

    asyncio.run(scenario())
    assert producer.most_active == 1
    names = [c[0] for c in producer.calls]
    assert names == ["produce", "send_offsets", "commit", "begin", "produce", "commit", "begin"]


def test_too_many_held_messages_wait_for_the_commit_without_deadlock(monkeypatch):
    """Back-pressure: past MAX_HELD, send() waits for the committing thread, then
    produces what was held (in order) into the new transaction."""
    import stream_app.output as output_module

    monkeypatch.setattr(output_module, "MAX_HELD", 2)
    producer = FakeProducer(commit_s=0.2)
    output = transactional_output(producer)
    app = fake_app(FakeConsumer({}))
    eos = ExactlyOnce(app, output, lambda: {})

    async def scenario():
        output.send("scores", b"a")
        commit = asyncio.ensure_future(eos.commit_tps([]))
        await asyncio.sleep(0.01)
        for value in (b"b", b"c", b"d"):  # c reaches MAX_HELD: waits for the commit
            output.send("scores", value)
        await asyncio.wait_for(commit, 5)

    asyncio.run(scenario())
    names = [c[0] if c[0] != "produce" else c[2] for c in producer.calls]
    assert names == [b"a", "commit", "begin", b"b", b"c", b"d"]


def test_offsets_go_past_gaps_the_agents_have_handled():
    """Transaction markers (and the offsets after them, which Faust's gap bookkeeping
    counts twice) do not hold the commit back: the offset after the highest acknowledged
    one is committed, and Faust's acknowledgements are cleared."""
    from intervaltree import IntervalTree

    from stream_app.transactions import handled_offsets

    tp = TP("events", 0)
    consumer = FakeConsumer({tp: [29, 29, 30, 31, 33]})  # 28 and 32: markers
    consumer._committed_offset[tp] = 28
    consumer._gap[tp] = IntervalTree.from_tuples([(29, 30), (32, 34)])
    assert handled_offsets(consumer, [tp]) == {tp: 34}
    assert consumer._acked[tp] == [] and not consumer._acked_index[tp]
    assert not consumer._gap[tp]
    consumer._committed_offset[tp] = 34
    assert handled_offsets(consumer, [tp]) == {}  # nothing new


def test_offsets_stop_below_a_held_message():
    """A message held back (its event failed, not judged yet) caps the commit of its
    partition, though later offsets are acknowledged; once released, everything is."""
    from stream_app.transactions import handled_offsets

    tp = TP("events", 0)
    consumer = FakeConsumer({tp: [10, 11, 13, 14]})  # 12 held back
    consumer._committed_offset[tp] = 10
    held = {("events", 0): {12}}
    assert handled_offsets(consumer, [tp], held) == {tp: 12}
    consumer._committed_offset[tp] = 12
    assert handled_offsets(consumer, [tp], held) == {}  # still held
    consumer._acked[tp].append(12)  # released
    assert handled_offsets(consumer, [tp], {}) == {tp: 15}
