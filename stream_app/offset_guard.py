"""Catch messages Faust skipped after a rebalance, so at-least-once holds.

faust-streaming 0.15.3 can drop messages of a partition it has just been given: during
the table recovery that follows a rebalance it fetches, then discards, messages of the
stream partitions (flow control is toggled while the changelogs are read), and the
offsets it skipped are committed with the ones after them. Measured here: a worker left
the group, its successor scored offset 1570 of ``events-by-user[0]``, then 1582; offsets
1571–1581 were never scored and the group's committed offset moved past them
(``tests/integration/test_scaling.py``).

An :class:`OffsetGuard` watches the offsets an agent receives per partition. When an
agent receives offset *n* of a partition and the previous one it handled was below
*n − 1* (or, for the first message after an assignment, the group's committed offset
was below *n*), the messages in between may have been skipped. Topics written without
transactions have consecutive offsets; with ``exactly_once`` every transaction leaves a
marker (an offset no consumer receives) and aborted records, so there a gap is read back
``read_committed`` and usually turns out empty. The guard reads them from Kafka
itself and hands them to the agent, which processes them before message *n*: order per
partition is kept, and a message that Faust delivers anyway later is skipped (its offset
was handled already), so it is neither lost nor published twice.

The guard finds a gap only when a later message of the partition arrives. One way
Faust drops messages is closed at its source instead (:func:`hold_streams_until_ready`):
at the end of a recovery Faust resumes the stream partitions, seeks them to their
committed offsets and only then resumes its flow control, which empties every stream's
queue. Whatever its fetcher delivered in between (the seek takes long on a busy machine)
was dropped; a partition without a committed offset is not sought back, so those
messages were not fetched again, and when no later input came nothing showed they were
missing: the worker reported ready and scored nothing more, its committed offsets stuck
where the queue was emptied (``test_failures.py``, after a worker that failed without
committing).

Another way is closed at its source too (:func:`fetch_active_partitions_only`): Faust's
fetches hand aiokafka, in the consumer's thread, the very set of active partitions that
the main thread changes. A fetch of a recovery that ran after the recovery had paused
the changelog partitions, and before the input partitions were resumed, found the set
empty, which aiokafka reads as "every partition": it returned the input records it had
buffered, their positions moved on, and Faust dropped them (not active). Faust's seek to
the committed offsets fetches such records again, except where nothing was committed;
there :func:`seek_uncommitted_to_start` seeks to the start of the log, where the
consumer began (``test_failures.py``, the late recovery fetch).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OffsetGuard",
    "RawMessage",
    "fetch_active_partitions_only",
    "guard_topic",
    "hold_streams_until_ready",
    "repaired",
    "seek_uncommitted_to_start",
]

log = logging.getLogger(__name__)

#: Messages the guards read back from Kafka since the worker started.
repaired = {"gaps": 0, "messages": 0, "redelivered": 0}


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message read back by the guard (what an agent needs of a Faust message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class OffsetGuard:
    """Per-partition offset bookkeeping of one agent's topic, with gap repair.

    ``client_config`` returns the confluent-kafka settings (bootstrap, security) for the
    reads; ``group_id`` is the Faust app id, whose committed offsets tell where a newly
    assigned partition must start.
    """

    def __init__(
        self,
        topic: str,
        group_id: str,
        client_config: Callable[[], dict[str, Any]],
        *,
        max_gap: int = 1_000_000,
        on_handled: Callable[[int, int, int], Awaitable[Any]] | None = None,
    ) -> None:
        self.topic = topic
        #: ``on_handled(partition, first, last)``: the offsets first..last (read back, or
        #: found empty) are handled; tells Faust, whose commits otherwise stop at the gap
        self.on_handled = on_handled
        self._unreported: dict[int, tuple[int, int]] = {}
        self.group_id = group_id
        self.client_config = client_config
        self.max_gap = max_gap
        #: next offset expected per partition (None: not known yet)
        self.expected: dict[int, int] = {}
        self._pending: dict[int, asyncio.Future] = {}
        self._consumer: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ assignment

    def on_assigned(self, partitions: set[int]) -> None:
        """Start loading the committed offsets of newly assigned partitions."""
        if not partitions:
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._committed, sorted(partitions))
        for partition in partitions:
            self.expected.pop(partition, None)
            self._pending[partition] = future

    def on_revoked(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.expected.pop(partition, None)
            self._pending.pop(partition, None)
            self._unreported.pop(partition, None)

    def _client(self):
        from confluent_kafka import Consumer

        if self._consumer is None:
            self._consumer = Consumer(
                {
                    **self.client_config(),
                    "group.id": f"{self.group_id}-offset-guard",
                    "isolation.level": "read_committed",  # skips aborted records
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "fetch.message.max.bytes": 8 * 1024 * 1024,
                }
            )
        return self._consumer

    def _committed(self, partitions: list[int]) -> dict[int, int]:
        """Where each partition resumes: the group's committed offset, else the start."""
        from confluent_kafka import Consumer, TopicPartition

        reader = Consumer(
            {**self.client_config(), "group.id": self.group_id, "enable.auto.commit": False}
        )
        try:
            tps = [TopicPartition(self.topic, p) for p in partitions]
            out: dict[int, int] = {}
            for tp in reader.committed(tps, timeout=15):
                if tp.offset is not None and tp.offset >= 0:
                    out[tp.partition] = tp.offset
                else:
                    low, _ = reader.get_watermark_offsets(
                        TopicPartition(self.topic, tp.partition), timeout=15
                    )
                    out[tp.partition] = low
            return out
        finally:
            reader.close()

    # ------------------------------------------------------------------ per message

    async def missed(self, partition: int, offset: int) -> list[RawMessage] | None:
        """Messages of ``partition`` before ``offset`` that the agent never received
        (empty almost always), and records ``offset`` as handled; ``None`` when
        ``offset`` was handled already since the partition was assigned: Faust hands
        the last message it read to the agent again after its consumer re-fetched it
        (its check is ``offset >= last read``), and processing it twice would publish
        its outputs twice."""
        expected = self.expected.get(partition)
        if expected is not None and offset < expected:
            repaired["redelivered"] += 1
            log.info("%s[%d]: offset %d delivered again: skipped", self.topic, partition, offset)
            return None
        pending = self._pending.pop(partition, None)
        if expected is None and pending is not None:
            try:
                expected = (await pending).get(partition)
            except Exception as exc:  # the guard must never stop the stream
                log.warning("%s[%d]: committed offset unknown (%s)", self.topic, partition, exc)
                expected = None
        self.expected[partition] = offset + 1
        if expected is None or offset <= expected:
            return []  # first sight without a reference, in order, or a redelivery
        if self.max_gap < 0:
            return []
        if offset - expected > self.max_gap:
            log.error(
                "%s[%d]: %d offsets skipped before %d: more than %d, not read back",
                self.topic,
                partition,
                offset - expected,
                offset,
                self.max_gap,
            )
            return []
        loop = asyncio.get_running_loop()
        messages = await loop.run_in_executor(None, self._read, partition, expected, offset)
        self._unreported[partition] = (expected, offset - 1)
        if not messages:  # transaction markers or aborted records only
            return []
        repaired["gaps"] += 1
        repaired["messages"] += len(messages)
        log.warning(
            "%s[%d]: Faust skipped offsets %d-%d (after a rebalance); read %d message(s) "
            "back from Kafka and processing them now",
            self.topic,
            partition,
            expected,
            offset - 1,
            len(messages),
        )
        return messages

    async def handled(self, partition: int) -> None:
        """Call once the messages :meth:`missed` returned are processed: their offsets
        (and any empty ones of the gap) count as acknowledged for Faust's commits.

        Faust commits a partition only up to the first offset it has not seen
        acknowledged; without this, a partition whose messages Faust skipped would never
        be committed again by this worker (a restart would redo everything since, and
        with ``exactly_once`` publish it twice)."""
        span = self._unreported.pop(partition, None)
        if span is not None and self.on_handled is not None:
            await self.on_handled(partition, *span)

    def _read(self, partition: int, start: int, end: int) -> list[RawMessage]:
        """Messages with ``start <= offset < end`` (transaction markers have none)."""
        from confluent_kafka import KafkaError, TopicPartition

        with self._lock:
            consumer = self._client()
            consumer.assign([TopicPartition(self.topic, partition, start)])
            out: list[RawMessage] = []
            try:
                while True:
                    msg = consumer.poll(15.0)
                    if msg is None:
                        raise TimeoutError(f"reading {self.topic}[{partition}] {start}-{end}")
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            break
                        raise RuntimeError(f"reading {self.topic}[{partition}]: {msg.error()}")
                    if msg.offset() >= end:
                        break
                    out.append(
                        RawMessage(self.topic, partition, msg.offset(), msg.key(), msg.value())
                    )
                    if msg.offset() >= end - 1:
                        break
            finally:
                consumer.unassign()
            return out


def hold_streams_until_ready(app: Any) -> None:
    """Keep stream messages out of the agents' queues from the end of a table recovery
    until Faust empties those queues (and resumes its flow control) at "Worker ready".

    ``on_rebalance_complete`` is sent before Faust resumes the stream partitions; its
    flow control, suspended here, makes the fetcher wait before it hands a message to a
    stream, and that message is delivered once Faust resumes the flow, after the queues
    are emptied. Nothing is lost; the first messages wait for the seek (tens of ms)."""

    @app.on_rebalance_complete.connect
    async def _hold(app: Any, **kwargs: Any) -> None:
        app.flow_control.suspend()


def guard_topic(app: Any, topic: str, settings: Any) -> OffsetGuard:
    """An :class:`OffsetGuard` for ``topic``, kept up to date by the app's partition
    assignment signals."""
    from stream_app.app import client_config

    async def handled(partition: int, first: int, last: int) -> None:
        from faust.types import TP

        from stream_app.faust_internals import add_gap

        await add_gap(app.consumer, TP(topic, partition), first, last)

    guard = OffsetGuard(topic, settings.app_id, lambda: client_config(settings), on_handled=handled)

    @app.on_partitions_assigned.connect
    async def _assigned(app: Any, assigned: set, **kwargs: Any) -> None:
        guard.on_assigned({tp.partition for tp in assigned if tp.topic == topic})

    @app.on_partitions_revoked.connect
    async def _revoked(app: Any, revoked: set, **kwargs: Any) -> None:
        guard.on_revoked({tp.partition for tp in revoked if tp.topic == topic})

    return guard


_fetch_patched = False


def fetch_active_partitions_only() -> None:
    """Make each fetch of Faust's stream consumer ask aiokafka for the partitions active
    when it starts, and for nothing when none is active.

    Faust's fetch runs in the consumer's thread with the main thread's set of active
    partitions, which the end of a recovery empties (changelog partitions paused) and
    fills again (input partitions resumed) meanwhile; aiokafka's ``fetched_records``
    reads an empty set as "every partition" and returns, and consumes, records of
    partitions Faust then drops as not active. Not active, those records stay in
    aiokafka's buffer for a later fetch."""
    global _fetch_patched
    if _fetch_patched:
        return
    from stream_app.faust_internals import patch_fetch_records

    def wrap(fetch: Callable[..., Any]) -> Callable[..., Any]:
        async def _fetch_records(self: Any, consumer: Any, active_partitions: Any, **kw: Any):
            if active_partitions is None:  # a client-only app: every partition
                return await fetch(self, consumer, active_partitions, **kw)
            partitions = frozenset(active_partitions)
            if not partitions:
                return {}
            return await fetch(self, consumer, partitions, **kw)

        return _fetch_records

    patch_fetch_records(wrap)
    _fetch_patched = True


_seek_patched = False


def seek_uncommitted_to_start() -> None:
    """After Faust seeks its stream partitions to their committed offsets, seek those
    without a committed offset (or with 0) to the start of their log.

    Faust seeks back to the committed offsets to fetch again what it fetched and did not
    deliver (at the end of a recovery, or when a fetch came back while its flow was
    stopped); aiokafka does not seek a partition without a committed offset, so there
    such records were never fetched again, and with no later input nothing showed they
    were missing. The start is where the consumer began in that case (``earliest``,
    Faust's ``consumer_auto_offset_reset``); whatever an agent handled since is skipped
    by its :class:`OffsetGuard` (delivered again)."""
    global _seek_patched
    if _seek_patched:
        return
    from stream_app.faust_internals import patch_seek_to_committed

    def wrap(seek_to_committed: Callable[..., Any]) -> Callable[..., Any]:
        async def _seek_to_committed(self: Any) -> Any:
            committed = await seek_to_committed(self)
            app = self.app
            if app.conf.consumer_auto_offset_reset != "earliest":
                return committed
            changelogs = app.tables.changelog_topics
            uncommitted = [
                tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs
            ]
            if uncommitted:
                # offset 0, below a log start that retention moved, reads as out of
                # range, which the consumer resets to the earliest offset: no request
                try:
                    await self.seek_wait(dict.fromkeys(uncommitted, 0))
                except Exception as exc:  # e.g. revoked meanwhile: Faust seeks again
                    log.warning("seeking partitions without a committed offset: %r", exc)
                else:
                    log.info(
                        "%d stream partition(s) without a committed offset sought to their start",
                        len(uncommitted),
                    )
            return committed

        return _seek_to_committed

    patch_seek_to_committed(wrap)
    _seek_patched = True
