"""Exactly-once processing (``IMPORTANCE_PROCESSING_GUARANTEE=exactly_once``).

Kafka's read-process-write transactions, done by the worker itself: Faust consumes and
keeps the acknowledged offsets, :class:`~stream_app.output.Output` produces every output,
changelog record and model snapshot through one transactional librdkafka producer, and
at each commit the offsets of the events handled so far go into that producer's
transaction (``send_offsets_to_transaction``), which then commits. Either an event's outputs, its
state changes and its offset all become visible, or none of them do. faust-streaming's
own ``exactly_once`` is not used: its transactions follow the destination partition of a
message, not the input offset (see docs/scaling.md, "Exactly-once").

What :func:`install` changes in the worker:

* Commits. Faust's ``Consumer._commit_tps`` is replaced. Without suspending in between,
  it takes the offsets of the acknowledged events (:func:`handled_offsets`), writes out
  the rolling batch, and
  holds back new messages; the transaction with those offsets commits in a thread while
  the agents go on (what they produce meanwhile goes into the next transaction, with
  their offsets at the next commit). The group's generation and member id (KIP-447) go
  with the offsets, so a worker that was thrown out of the group cannot commit. A
  transaction that cannot be committed stops the process (exit code 75): its events
  are already in the worker's memory, and the restarted worker resumes from the last
  committed offsets and state.
* Reads. Faust's consumer reads with ``isolation_level=read_committed``: aborted records
  of the by-user, re-keying and changelog topics are never processed or restored.
* Table recovery. Transaction markers take offsets, so the last offset of a changelog
  partition is usually a marker that no consumer ever receives; Faust would wait for it
  forever. The highwater Faust recovers up to is therefore the offset after the last
  committed record.

Readers of the output topics see each event's records exactly once when they read with
``isolation.level=read_committed`` (librdkafka's default; ``isolation_level=
"read_committed"`` in aiokafka and the Java client). Records appear when their
transaction commits, up to one commit interval (1 s) after the event was processed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from stream_app import faust_internals
from stream_app.output import Output, TransactionError

__all__ = [
    "EXIT_TRANSACTION_FAILED",
    "committed_end",
    "committed_ends",
    "group_metadata",
    "handled_offsets",
    "install",
]

log = logging.getLogger(__name__)

#: exit code of a worker whose transaction could not be committed (EX_TEMPFAIL)
EXIT_TRANSACTION_FAILED = 75


def group_metadata(
    group_id: str, generation_id: int, member_id: str, group_instance_id: str | None = None
) -> bytes:
    """The consumer group metadata that confluent-kafka's ``send_offsets_to_transaction``
    takes, for a group member that is not a librdkafka consumer (Faust's aiokafka one).

    It is librdkafka's own serialization (``rd_kafka_consumer_group_metadata_write``),
    which ``Consumer.consumer_group_metadata()`` returns:

    >>> group_metadata("g1", -1, "")
    b'CGMDv2:\\xff\\xff\\xff\\xffg1\\x00\\x00\\x01'
    >>> group_metadata("g1", 3, "m-1", "inst")[7:11] == (3).to_bytes(4, "little")
    True
    """
    out = b"CGMDv2:" + struct.pack("=i", generation_id)
    out += group_id.encode() + b"\0" + member_id.encode() + b"\0"
    if group_instance_id is None:
        return out + b"\x01"
    return out + b"\x00" + group_instance_id.encode() + b"\0"


def committed_end(reader: Any, topic: str, partition: int, timeout: float = 15.0) -> int:
    """The offset after the last committed record of a partition (its low watermark when
    it has none): where a ``read_committed`` reader of the whole partition is done.

    ``reader`` is a confluent-kafka ``Consumer`` reading ``read_committed`` (librdkafka's
    default) with ``enable.partition.eof``. See :func:`committed_ends`."""
    return committed_ends(reader, [(topic, partition)], timeout)[(topic, partition)]


def committed_ends(
    reader: Any, partitions: list[tuple[str, int]], timeout: float = 15.0
) -> dict[tuple[str, int], int]:
    """:func:`committed_end` of several ``(topic, partition)`` at once.

    The end offset of a partition written in transactions is usually a transaction
    marker's offset + 1, and aborted records may come before it. The partitions are read
    backwards in growing steps (16, 128, 1,024... offsets before the end), all of them in
    one pass per step, until a committed record turns up or the start is reached."""
    result: dict[tuple[str, int], int] = {}
    bounds: dict[tuple[str, int], tuple[int, int]] = {}
    for topic, partition in partitions:
        low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        if high > low:
            bounds[(topic, partition)] = (low, high)
        else:
            result[(topic, partition)] = low
    step = 16
    while bounds:
        starts = {tp: max(low, end - step) for tp, (low, end) in bounds.items()}
        last = _last_offsets(reader, starts, {tp: end for tp, (_, end) in bounds.items()}, timeout)
        for tp, (low, _end) in list(bounds.items()):
            if last.get(tp) is not None:
                result[tp] = last[tp] + 1
            elif starts[tp] <= low:
                result[tp] = low
            else:
                continue
            del bounds[tp]
        bounds = {tp: (low, starts[tp]) for tp, (low, _end) in bounds.items()}
        step *= 8
    return result


def _last_offsets(
    reader: Any,
    starts: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], int],
    timeout: float,
) -> dict[tuple[str, int], int | None]:
    """Per partition, the highest offset below its end that ``reader`` delivers from its
    start on (None: none)."""
    reader.assign([TopicPartition(t, p, offset) for (t, p), offset in starts.items()])
    last: dict[tuple[str, int], int | None] = dict.fromkeys(starts)
    open_ = set(starts)
    try:
        while open_:
            msg = reader.poll(timeout)
            if msg is None:
                raise TimeoutError(f"reading {sorted(open_)[:3]}...: no answer in {timeout} s")
            tp = (msg.topic(), msg.partition())
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    open_.discard(tp)
                    continue
                raise RuntimeError(f"reading {tp}: {msg.error()}")
            if tp not in open_:
                continue
            if msg.offset() >= ends[tp]:
                open_.discard(tp)
                continue
            last[tp] = msg.offset()
    finally:
        reader.unassign()
    return last


class ExactlyOnce:
    """The worker's transactional commit (see the module docstring)."""

    def __init__(
        self,
        app: Any,
        output: Output,
        client_config: Callable[[], dict[str, Any]],
        before_commit: Callable[[], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.app = app
        self.output = output
        self.client_config = client_config
        self.before_commit = before_commit
        self.on_failure = on_failure or _exit_on_failure

    def group_metadata(self) -> bytes:
        """The group membership Faust's consumer holds now (generation, member id)."""
        coordinator = faust_internals.group_coordinator(self.app)
        return group_metadata(
            self.app.conf.id,
            coordinator.generation,
            coordinator.member_id,
            faust_internals.group_instance_id(coordinator),
        )

    async def commit_tps(self, tps: Iterable[Any], start_new_transaction: bool = True) -> bool:
        """Replaces Faust's ``Consumer._commit_tps``: commit the acknowledged offsets of
        ``tps`` in the output producer's transaction."""
        async with self.output.transaction_lock:
            if self.output.failed is not None:
                return False  # stopping after a processing failure: commit nothing
            consumer = self.app.consumer
            # from here to output.hold() nothing awaits: no agent runs in between, so the
            # transaction holds exactly the outputs of the events whose offsets it commits
            offsets = handled_offsets(consumer, tps, self.output.held)
            if self.before_commit is not None:
                self.before_commit()
            if not offsets and not self.output.in_transaction:
                return False
            positions = [TopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
            try:
                metadata = self.group_metadata() if positions else None
                await self.output.commit_transaction(positions, metadata)
            except Exception as exc:
                self.on_failure(exc)
                return False
            if not offsets:
                return False
            now = time.monotonic()
            faust_internals.mark_committed(consumer, offsets, now)
            self.app.tables.on_commit(offsets)
            faust_internals.set_committed(consumer, offsets)
            self.app.monitor.on_tp_commit(offsets)
            return True

    def install(self) -> None:
        """Take over the commits of ``app``'s consumer; read committed data only."""
        consumer = self.app.consumer
        faust_internals.replace_commit(consumer, self.commit_tps)
        _read_committed(self.client_config)
        # Initialise the transactions now, before the consumer joins the group: this
        # aborts what a predecessor with the same transactional id left open, which would
        # otherwise hold back every read_committed reader (table recovery included) until
        # the transaction times out.
        self.output.producer  # noqa: B018
        transactional_id = self.output.transactional_id

        async def announce() -> None:  # once the worker's logging is set up
            log.info(
                "exactly_once: outputs, changelogs and offsets are committed in transactions of %r",
                transactional_id,
            )

        self.app.task(announce)


def handled_offsets(
    consumer: Any, tps: Iterable[Any], held: Mapping[Any, set[int]] | None = None
) -> dict[Any, int]:
    """Per assigned partition with new acknowledgements, the offset after the highest
    acknowledged one; Faust's bookkeeping of those acknowledgements is cleared.

    ``held`` (``Output.held``): offsets of messages held back per partition (an event
    whose processing failed, not yet judged): the partition is committed up to the
    lowest of them at most, and its acknowledgements are kept for a later commit.

    Each agent handles a partition's messages one after the other, in offset order, and
    the offset guard hands it the messages Faust skipped before the next one: once an
    offset is acknowledged, every message before it was handled (or is a transaction
    marker, or an aborted record). Faust's own rule (the end of the first run of
    consecutive acknowledged offsets) can stop short of that: its gap bookkeeping counts
    the offset after a transaction marker twice, and the commit then leaves out events
    whose outputs are already in the transaction (a crash would publish them again).
    """
    assignment = consumer.assignment()
    offsets: dict[Any, int] = {}
    for tp in tps:
        acked = faust_internals.pending_acks(consumer, tp)
        if not acked:
            continue
        top = max(acked) + 1
        hold = held.get((tp.topic, tp.partition)) if held else None
        if hold and min(hold) < top:
            committed = faust_internals.committed_offset(consumer, tp)
            if tp in assignment and (committed is None or min(hold) > committed):
                offsets[tp] = min(hold)
            continue
        acked.clear()
        faust_internals.clear_acked(consumer, tp)
        gaps = faust_internals.pending_gaps(consumer, tp)
        if gaps:
            gaps.chop(0, top)
        committed = faust_internals.committed_offset(consumer, tp)
        if tp in assignment and (committed is None or top > committed):
            offsets[tp] = top
    return offsets


def _exit_on_failure(exc: BaseException) -> None:
    """Stop the process at once: its memory holds events of an aborted transaction."""
    kind = "transaction failed" if isinstance(exc, TransactionError) else "commit failed"
    log.critical(
        "exactly_once: %s (%s); stopping the worker so that it restarts from the last "
        "committed offsets and state",
        kind,
        exc,
    )
    logging.shutdown()
    os._exit(EXIT_TRANSACTION_FAILED)


_patched = False


def _read_committed(client_config: Callable[[], dict[str, Any]]) -> None:
    """Make Faust's aiokafka consumer read committed data only, and recover tables up to
    the last committed record of each changelog partition."""
    global _patched
    if _patched:
        return

    def wrap_create(create: Callable[..., Any]) -> Callable[..., Any]:
        def _create_worker_consumer(self: Any, transport: Any) -> Any:
            consumer = create(self, transport)
            # read by start(), which comes next
            faust_internals.set_isolation_level(consumer, "read_committed")
            return consumer

        return _create_worker_consumer

    def wrap_highwaters(highwaters: Callable[..., Any]) -> Callable[..., Any]:
        async def _highwaters(self: Any, partitions: list) -> Mapping[Any, int]:
            ends = await highwaters(self, partitions)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, _committed_ends, client_config(), dict(ends))

        return _highwaters

    faust_internals.patch_consumer_thread(wrap_create, wrap_highwaters)
    _patched = True


def _committed_ends(config: dict[str, Any], ends: dict[Any, int]) -> dict[Any, int]:
    reader = Consumer(
        {
            **config,
            "group.id": "importance-committed-end",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        written = [(tp.topic, tp.partition) for tp, end in ends.items() if end]
        found = committed_ends(reader, written)
        return {tp: found.get((tp.topic, tp.partition), end) for tp, end in ends.items()}
    finally:
        reader.close()


def install(app: Any, output: Output, settings: Any, before_commit: Callable[[], None]) -> Any:
    """Switch the worker to exactly-once processing (``settings.exactly_once``)."""
    from stream_app.app import client_config

    eos = ExactlyOnce(app, output, lambda: client_config(settings), before_commit)
    eos.install()
    return eos
