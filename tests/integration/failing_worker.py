"""Test-only entry point: the real worker, with a processing failure injected.

``python -m tests.integration.failing_worker worker ...`` runs
:func:`stream_app.worker.run_worker` after patching, according to ``TEST_FAIL_MODE``:

* ``poison``: scoring an event whose ``item_id`` is ``"poison"`` raises;
* ``systemic``: scoring any event raises (a broken dependency, say);
* ``agent``: the decode agent fails outside the handling of one event (its offset
  guard raises) once it has handled ``TEST_FAIL_AFTER`` messages;
* ``slow-seek``: nothing fails, but the end of Faust's recovery is slow the way a busy
  machine makes it: its "Seek stream partitions to committed offsets" waits until the
  decode agent has received a first input message (and a second more; at most 3 s,
  since the worker holds the flow until "Worker ready" none comes), and the decode
  agent takes two seconds over that message, so the input messages fetched meanwhile
  are in the agent's queue when Faust resumes its flow control.
* ``late-fetch``: nothing fails, but the last fetch of a table recovery runs late in
  the consumer's thread, the way a busy machine schedules it: a fetch of the recovery
  that found nothing runs again once Faust has paused the changelog partitions (the
  recovery is over), so it runs with no active partition, which aiokafka reads as
  "every partition": it returns the input records it had fetched meanwhile (the
  recovery notices its end half a second late, so such a fetch is always asked); and
  Faust's end of recovery (its ``on_rebalance_complete`` signal) takes two seconds, so
  those records come back before the input partitions are resumed, and Faust skips them.
* ``stuck-topic``: nothing fails, but the records the output producer sends to the topic
  ``TEST_STUCK_TOPIC`` wait in a librdkafka queue that cannot deliver (its producer's
  broker address has nothing listening) while every other record is delivered: the
  state of a crash in which one output's batch was still in flight while others were
  durable.

Nothing of this is in the product: the worker it runs is the real one.
"""

from __future__ import annotations

import os
import sys

MODE = os.environ.get("TEST_FAIL_MODE", "")
AFTER = int(os.environ.get("TEST_FAIL_AFTER", "0"))


class InjectedFailure(RuntimeError):
    """The failure this entry point injects."""


def _patch() -> None:
    from models.engine import ImportanceEngine

    # every scoring path (one event, or a batch) starts with ImportanceEngine.begin
    begin = ImportanceEngine.begin

    def failing_begin(self, ev):
        if MODE == "systemic" or (MODE == "poison" and ev.item_id == "poison"):
            raise InjectedFailure(f"injected failure scoring {ev.event_id}")
        return begin(self, ev)

    ImportanceEngine.begin = failing_begin
    if MODE == "agent":
        from stream_app.offset_guard import OffsetGuard

        missed = OffsetGuard.missed
        seen = {"n": 0}

        async def failing_missed(self, partition, offset):
            seen["n"] += 1
            if seen["n"] > AFTER and self.topic == os.environ["IMPORTANCE_TOPIC_EVENTS"]:
                raise InjectedFailure("injected failure outside the handling of an event")
            return await missed(self, partition, offset)

        OffsetGuard.missed = failing_missed
    if MODE == "slow-seek":
        _slow_seek()
    if MODE == "late-fetch":
        _late_fetch()
    if MODE == "stuck-topic":
        _stuck_topic(os.environ["TEST_STUCK_TOPIC"])


def _stuck_topic(stuck: str) -> None:
    import stream_app.output

    real_producer = stream_app.output.Producer

    class StuckTopicProducer:
        """Two librdkafka producers: one for ``stuck`` that never delivers, one for the
        rest."""

        def __init__(self, config):
            self.real = real_producer(config)
            self.stuck = real_producer({**config, "bootstrap.servers": "127.0.0.1:1"})

        def produce(self, topic, *args, **kwargs):
            (self.stuck if topic == stuck else self.real).produce(topic, *args, **kwargs)

        def flush(self, *timeout):
            return self.real.flush(*timeout) + self.stuck.flush(*timeout)

        def poll(self, timeout=0):
            return self.real.poll(timeout) + self.stuck.poll(0)

        def __len__(self):
            return len(self.real) + len(self.stuck)

        def __getattr__(self, name):
            return getattr(self.real, name)

    stream_app.output.Producer = StuckTopicProducer


def _slow_seek() -> None:
    import asyncio

    from faust.transport.consumer import Consumer

    from stream_app.offset_guard import OffsetGuard

    received: dict[str, asyncio.Event] = {}
    perform_seek = Consumer.perform_seek
    missed = OffsetGuard.missed

    def first_message() -> asyncio.Event:
        return received.setdefault("event", asyncio.Event())

    async def slow_perform_seek(self):
        try:
            await asyncio.wait_for(first_message().wait(), timeout=3)
        except asyncio.TimeoutError:
            pass
        else:
            await asyncio.sleep(1.0)  # Faust's fetcher queues the rest of its batch
        return await perform_seek(self)

    async def slow_missed(self, partition, offset):
        event = first_message()
        if self.topic == os.environ["IMPORTANCE_TOPIC_EVENTS"] and not event.is_set():
            event.set()
            await asyncio.sleep(2.0)
        return await missed(self, partition, offset)

    Consumer.perform_seek = slow_perform_seek
    OffsetGuard.missed = slow_missed


def _late_fetch() -> None:
    import asyncio
    import time

    from faust.tables.recovery import Recovery
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from stream_app.app import app

    fetch = AIOKafkaConsumerThread._fetch_records

    async def late_fetch_records(self, consumer, active_partitions, **kwargs):
        asked = frozenset(active_partitions or ())
        recovering = not app.tables.actives_ready  # from a rebalance to "Worker ready"
        records = await fetch(self, consumer, active_partitions, **kwargs)
        if (
            not records
            and recovering
            and asked
            and all(self.consumer._is_changelog_tp(tp) for tp in asked)
        ):
            # a fetch of the recovery found nothing more: it runs again, late, once the
            # main thread has ended the recovery and paused the changelog partitions
            # (it empties this very set), as a busy consumer thread would run it
            deadline = time.monotonic() + 5.0
            while active_partitions and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            records = await fetch(self, consumer, active_partitions, **kwargs)
        return records

    AIOKafkaConsumerThread._fetch_records = late_fetch_records

    class LateEnd(asyncio.Event):
        """The recovery notices half a second late that it has read everything: the
        fetcher, still running, asks for more meanwhile (and finds nothing)."""

        async def wait(self):
            await super().wait()
            await asyncio.sleep(0.5)
            return True

    def signal_recovery_end(self):
        if self._signal_recovery_end is None:
            self._signal_recovery_end = LateEnd()
        return self._signal_recovery_end

    Recovery.signal_recovery_end = property(signal_recovery_end)

    @app.on_rebalance_complete.connect
    async def _slow_end_of_recovery(app, **kwargs):
        await asyncio.sleep(2.0)


if __name__ == "__main__":
    _patch()
    from stream_app.worker import run_worker

    run_worker(sys.argv[1:])
