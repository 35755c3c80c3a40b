"""The hot path's producer: confluent-kafka (librdkafka) behind Faust's commit barrier.

Each ``await topic.send(...)`` or table assignment costs far more CPU than the message's
consumption (Faust builds a future and a pending message per send and aiokafka partitions
and batches in Python), ``confluent_kafka.Producer.produce`` a small fraction of it (the
figures: docs/benchmarks.md, "What limits throughput"). The worker therefore publishes
scores, training samples, dead letters, re-keyed events and the changelogs of its tables
through one :class:`Output`, and Faust stays in charge of consuming, of partition
assignment, of table recovery and of committing offsets.

At-least-once is kept by a barrier: Faust commits an offset only after
``await app.producer.flush()``; :meth:`Output.install_barrier` makes that flush first wait
until librdkafka has delivered every message produced so far (everything the acked events
produced). A message that cannot be delivered (librdkafka gives up after
``delivery.timeout.ms``, 5 minutes by default) fails the flush, so the offset is not
committed and the worker stops with the error: restarted, it processes those events
again.

Deletions after outputs (``at_least_once``): a table deletion (the tombstone of a
resolved pending exposure, say) is sent with :meth:`Output.send_state`, which holds it
until the barrier has delivered the outputs produced before it, and only then produces
it (and waits for it too, before the commit); a later write of the same key is held
after it (:meth:`Output.send_after_held`). Without this order a SIGKILL could leave the
tombstone of an exposure resolved as a positive in the changelog while its training
record was lost in the producer's queue: processed again, the conversion found nothing
to resolve, and the positive was never published. Other writes go at once: a write that
outlives its event's outputs is made again, the same, when the event is processed again
(tracking an exposure twice is a no-op). Holding every table write measured twice the
burst test's memory growth (+164 to +214 MiB instead of +79), hence deletions only.

With ``exactly_once`` the same producer is transactional (``transactional_id``): what the
worker produces between two commits, together with the offsets it consumed, is committed
in one Kafka transaction (see :mod:`stream_app.transactions`).

A record whose content Kafka would refuse never stops the worker: :meth:`Output.send`
compares each record with its topic's message limit (read from the broker at start, see
:meth:`Output.set_limits`) and, when it is over, produces a compact dead letter in its
place (``output_too_large``, see :mod:`stream_app.deadletter`). That check is what keeps
a transaction (``exactly_once``) from failing, since one refused record aborts it; a
refusal that still comes back in a delivery report ("Message size too large", "invalid
record": the limits changed since the start) is the fallback, outside transactions:
the refused record is replaced by its dead letter, which the barrier delivers before the
commit. Transient errors are retried by librdkafka as before.

After :meth:`Output.refuse` (the worker stops because processing failed), the barrier
and the transactional commit raise :class:`WorkerFailed`: no offset is committed past
the events the worker did not finish.

Keyed messages are partitioned with ``murmur2_random``, the Java client's (and Faust's,
and Kafka Streams') partitioner, so a key lands where those clients would put it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from stream_app.clients import produce
from stream_app.faust_internals import key_partitions

__all__ = [
    "CONTENT_ERRORS",
    "ChangelogStore",
    "DeliveryError",
    "Output",
    "TransactionError",
    "WorkerFailed",
    "partition_for",
]

log = logging.getLogger(__name__)

#: transaction.timeout.ms of the transactional producer (exactly_once)
TRANSACTION_TIMEOUT_MS = 30_000
#: how long init_transactions may wait for the broker
TRANSACTION_INIT_TIMEOUT_S = 60.0
#: timeout of each transactional call (send offsets, commit, abort)
TRANSACTION_CALL_TIMEOUT_S = 30.0
#: messages held while a transaction commits before :meth:`Output.send` waits
MAX_HELD = 200_000
#: deletions held for the outputs before them (at_least_once): past this many records or
#: bytes, the sender waits for the outputs to be delivered and produces them
#: (back-pressure; tombstones are small, so this bounds a burst of resolutions)
MAX_STATE_HELD = 100_000
MAX_STATE_HELD_BYTES = 16 * 1024 * 1024
#: librdkafka's default batch.size, lowered to the smallest topic limit (see set_limits)
DEFAULT_BATCH_BYTES = 1_000_000

#: delivery errors caused by the record itself: replaced by a dead letter, not retried
CONTENT_ERRORS = frozenset(
    getattr(KafkaError, name)
    for name in (
        "MSG_SIZE_TOO_LARGE",  # over the topic's max.message.bytes
        "_MSG_SIZE_TOO_LARGE",  # over the producer's message.max.bytes
        "INVALID_RECORD",  # e.g. no key for a compacted topic
        "INVALID_MSG",  # corrupt message (CRC)
        "INVALID_MSG_SIZE",
        "RECORD_LIST_TOO_LARGE",
    )
    if hasattr(KafkaError, name)
)


_origin: contextvars.ContextVar[tuple[str, int, int] | None] = contextvars.ContextVar(
    "output_origin", default=None
)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition a keyed message gets from :class:`Output` (``murmur2_random``), the
    Java client's and Faust's default partitioner."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class DeliveryError(RuntimeError):
    """librdkafka could not deliver a message: its event's offset must not be committed."""


class TransactionError(RuntimeError):
    """A transaction could not be committed (and was aborted when it could be)."""


class WorkerFailed(RuntimeError):
    """The worker stops because processing failed: nothing may be committed any more."""


def _retrying(call: Callable[..., Any], *args: Any, attempts: int = 10) -> Any:
    """``call(*args)``, again while librdkafka says the error is retriable."""
    for attempt in range(attempts):
        try:
            return call(*args)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if attempt + 1 < attempts and isinstance(error, KafkaError) and error.retriable():
                log.warning("output: %s failed, retrying: %s", call.__name__, error.str())
                continue
            raise
    return None


class Output:
    """A librdkafka producer with a flush that Faust's offset commits wait for."""

    def __init__(
        self,
        bootstrap: str,
        client_config: dict[str, Any] | None = None,
        *,
        transactional_id: str | None = None,
        max_message_bytes: int = 1_000_000,
        delivery_reports: bool = False,
    ) -> None:
        self.config = {
            "bootstrap.servers": bootstrap,
            **(client_config or {}),
            "enable.idempotence": True,  # acks=all, no reordering or duplicates on retry
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 512 * 1024,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            # a report per delivered message only when local table stores copy the
            # changelog records from them (see add_mirror)
            "delivery.report.only.error": not delivery_reports,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "message.max.bytes": max_message_bytes,
        }
        self.transactional_id = transactional_id
        if transactional_id:
            self.config["transactional.id"] = transactional_id
            # what a crashed worker left open blocks read_committed readers this long at
            # most (a restarted worker with the same id aborts it at once)
            self.config["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self.sent = 0
        #: messages produced in the open transaction (transactional only)
        self.in_transaction = 0
        #: messages queued while a transaction commits (None: not committing)
        self._held: list[tuple[str, bytes | None, bytes | None, int]] | None = None
        #: set by the committing thread when it is done (committed or failed)
        self._commit_done = threading.Event()
        self._transaction_lock: asyncio.Lock | None = None
        #: message limit (bytes) per destination topic, and for any other topic
        self.limits: dict[str, int] = {}
        self.default_limit = max_message_bytes
        #: ``(code, detail, topic, key, value, origin) -> (topic, key, value)``: the dead
        #: letter replacing a record Kafka would refuse (None: no replacement, a refusal
        #: is a delivery error)
        self.replace: Callable[..., tuple[str, bytes | None, bytes]] | None = None
        #: topics whose records are never replaced (the dead-letter topic itself)
        self.no_replacement: set[str] = set()
        #: records replaced by dead letters (over their limit, or refused by Kafka)
        self.replaced = 0
        #: records refused in a delivery report: (topic, partition, key, value, reason)
        self._refused: list[tuple[str, int, bytes | None, bytes | None, str]] = []
        #: ... and refused again when produced alone: replaced by dead letters
        self._refused_alone: list[tuple[str, int, bytes | None, bytes | None, str]] = []
        #: why the worker stops (set by refuse(): nothing is committed any more)
        self.failed: str | None = None
        #: offsets of input messages held back per (topic, partition): events whose
        #: processing failed, not yet judged; the transactional commit stops below them
        self.held: dict[tuple[str, int], set[int]] = {}
        #: state records (changelogs, snapshots) waiting for the outputs produced before
        #: them to be delivered (at_least_once; see send_state)
        self._state: list[tuple[str, bytes | None, bytes | None, int]] = []
        self._state_bytes = 0
        #: (topic, key) of the state records held (a later record of one of them is held too)
        self._state_keys: set[tuple[str, bytes | None]] = set()
        self._state_lock = threading.Lock()
        #: changelog topic → the local table store copying its delivered records
        #: (:class:`stream_app.local_store.LocalStore`)
        self.mirrors: dict[str, Any] = {}

    def add_mirror(self, topic: str, store: Any) -> None:
        """Give ``store.delivered(partition, offset, key, value)`` every record delivered to
        ``topic``; ``store.persist()`` is called once they are durable (after a flush, or
        when their transaction committed) and ``store.discard()`` when their transaction
        aborted."""
        if self.config["delivery.report.only.error"]:
            if self._producer is not None:
                raise RuntimeError(
                    "output: delivery reports are off and the producer exists already: "
                    "create Output(delivery_reports=True) for local table stores"
                )
            self.config["delivery.report.only.error"] = False
        self.mirrors[topic] = store

    def poll(self) -> None:
        """Serve the delivery reports librdkafka has waiting (none before the first send)."""
        if self._producer is not None:
            self._producer.poll(0)

    def persist_mirrors(self) -> int:
        """Copy the delivered changelog records into the local stores (durable now)."""
        return sum(store.persist() for store in list(self.mirrors.values()))

    def discard_mirrors(self) -> int:
        """Forget delivered changelog records whose transaction aborted."""
        return sum(store.discard() for store in list(self.mirrors.values()))

    @property
    def origin(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) of the input message being processed, if any (per
        asyncio task: the agents interleave)."""
        return _origin.get()

    @origin.setter
    def origin(self, value: tuple[str, int, int] | None) -> None:
        _origin.set(value)

    def set_limits(self, limits: dict[str, int], default: int) -> None:
        """Each destination topic's message limit (its ``max.message.bytes``; ``default``,
        the broker's ``message.max.bytes``, for the others), read at start. Records over
        their topic's limit are replaced by dead letters; batches are kept under the
        smallest limit (librdkafka does not split a batch the broker refuses)."""
        self.limits = dict(limits)
        self.default_limit = default
        smallest = min([default, *limits.values()])
        batch = min(DEFAULT_BATCH_BYTES, smallest - 256 - smallest // 64)
        self.config["batch.size"] = max(batch, 1024)

    def limit_for(self, topic: str) -> int:
        """What key + value of a record for ``topic`` must stay under (its limit less
        Kafka's framing, see :func:`stream_app.deadletter.framing_margin`)."""
        limit = self.limits.get(topic, self.default_limit)
        return limit - 256 - limit // 64

    def refuse(self, reason: str) -> None:
        """From now on the barrier and the transactional commit raise
        :class:`WorkerFailed` (the worker is stopping because processing failed)."""
        if self.failed is None:
            self.failed = reason

    @property
    def transaction_lock(self) -> asyncio.Lock:
        """Held by whoever commits the transaction (one commit at a time)."""
        if self._transaction_lock is None:
            self._transaction_lock = asyncio.Lock()
        return self._transaction_lock

    @property
    def transactional(self) -> bool:
        return bool(self.transactional_id)

    @property
    def producer(self) -> Producer:
        """The librdkafka producer, created (and connected) on first use; a transactional
        one has its transactions initialised (aborting what a predecessor with the same
        id left open) and one begun."""
        if self._producer is None:
            producer = Producer(self.config)
            if self.transactional:
                producer.init_transactions(TRANSACTION_INIT_TIMEOUT_S)
                producer.begin_transaction()
                log.info("output: transactional producer %r ready", self.transactional_id)
            self._producer = producer
        return self._producer

    # -- callbacks (run in whichever thread polls or flushes) --------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            if self.mirrors:
                store = self.mirrors.get(msg.topic())
                if store is not None:
                    store.delivered(msg.partition(), msg.offset(), msg.key(), msg.value())
            return
        if err is not None:
            text = f"{msg.topic()}[{msg.partition()}]: {err.str()}"
            if (
                err.code() in CONTENT_ERRORS
                and self.replace is not None
                and not self.transactional  # the transaction is lost already
                and msg.topic() not in self.no_replacement
            ):
                log.warning("output: record refused, producing it alone again: %s", text)
                with self._lock:
                    self._refused.append(
                        (msg.topic(), msg.partition(), msg.key(), msg.value(), err.str())
                    )
                return
            log.error("output: message not delivered: %s", text)
            with self._lock:
                self._errors.append(text)

    def _on_retry_delivery(self, err: KafkaError | None, msg: Any) -> None:
        """Delivery report of a refused record produced again alone."""
        if err is not None and err.code() in CONTENT_ERRORS:
            text = f"{msg.topic()}[{msg.partition()}]: {err.str()}"
            log.warning("output: record refused again, replaced by a dead letter: %s", text)
            with self._lock:
                self._refused_alone.append(
                    (msg.topic(), msg.partition(), msg.key(), msg.value(), err.str())
                )
        else:
            self._on_delivery(err, msg)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("output: fatal producer error: %s", err.str())
            with self._lock:
                self._errors.append(err.str())
        else:  # transient (broker down, reconnecting): librdkafka retries by itself
            log.warning("output: %s", err.str())

    # -- producing ---------------------------------------------------------------------
    def send(
        self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1
    ) -> None:
        """Queue one message (``partition=-1``: chosen from the key by murmur2).

        When librdkafka's queue is full this waits for deliveries (back-pressure). While a
        transaction commits, messages are held and produced into the next transaction
        (they belong to events whose offsets the committing transaction does not hold).

        A record over its topic's limit is replaced by a dead letter (when a replacement
        is configured)."""
        size = (len(value) if value else 0) + (len(key) if key else 0)
        if size > self.limit_for(topic) and self.replace is not None:
            detail = f"record for {topic} is {size} bytes > {self.limit_for(topic)}"
            topic, key, value = self.replace(
                "output_too_large", detail, topic, key, value, self.origin
            )
            partition = -1
            self.replaced += 1
            log.warning("output: %s; replaced by a dead letter on %s", detail, topic)
        if self._held is not None:
            self._held.append((topic, value, key, partition))
            if len(self._held) >= MAX_HELD:  # back-pressure: wait for the commit to end
                self._commit_done.wait()
                self.release()
            return
        producer = self._producer or self.producer
        self._produce(producer, topic, value, key, partition)

    def send_state(
        self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1
    ) -> None:
        """:meth:`send` for state (a table's changelog, a model snapshot): with
        transactions at once (the transaction makes it atomic with the outputs), else held
        until the outputs produced before it are delivered (the module's "state after
        outputs"); over :data:`MAX_STATE_HELD` records or :data:`MAX_STATE_HELD_BYTES`,
        this waits for that here."""
        if self.transactional:
            self.send(topic, value, key, partition)
            return
        size = (len(value) if value else 0) + (len(key) if key else 0)
        with self._state_lock:
            self._state.append((topic, value, key, partition))
            self._state_keys.add((topic, key))
            self._state_bytes += size
            full = len(self._state) >= MAX_STATE_HELD or self._state_bytes >= MAX_STATE_HELD_BYTES
        if full:
            self.flush_sync()

    def _take_state(self) -> list[tuple[str, bytes | None, bytes | None, int]]:
        with self._state_lock:
            state, self._state = self._state, []
            self._state_bytes = 0
            self._state_keys.clear()
        return state

    def send_after_held(
        self, topic: str, value: bytes | None, key: bytes | None = None, partition: int = -1
    ) -> None:
        """:meth:`send`, unless a state record of the same key is held: then held after it
        (:meth:`send_state`), so that a key's records reach Kafka in their order."""
        if not self.transactional and (topic, key) in self._state_keys:
            self.send_state(topic, value, key, partition)
        else:
            self.send(topic, value, key, partition)

    def _produce(
        self, producer: Producer, topic: str, value: bytes | None, key: bytes | None, partition: int
    ) -> None:
        produce(producer, topic, value, key, partition)
        self.sent += 1
        self.in_transaction += 1
        if not self.sent & 0x3FF:
            producer.poll(0)

    def hold(self) -> None:
        """Hold new messages back from the producer (a transaction is being committed)."""
        self._commit_done.clear()
        self._held = []

    def release(self) -> None:
        """Produce the held messages (into the transaction begun since) and stop holding."""
        held, self._held = self._held, None
        if not held:
            return
        producer = self._producer or self.producer
        for topic, value, key, partition in held:
            self._produce(producer, topic, value, key, partition)

    def raise_for_errors(self) -> None:
        """Raise :class:`DeliveryError` if any message could not be delivered."""
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise DeliveryError(f"could not deliver to Kafka: {errors[0]}{more}")

    def flush_sync(self, timeout: float | None = None) -> None:
        """Wait until every queued message is delivered (or failed), then report failures.

        Records Kafka refused because of their content are replaced by their dead letters,
        which are delivered before this returns."""
        state = self._take_state()  # held before the outputs this flush delivers
        if self._producer is None:
            if not state:
                return
            self.producer  # noqa: B018 (created here: the state is its first message)
        self._deliver(timeout)
        if state:
            producer = self.producer
            for topic, value, key, partition in state:
                self._produce(producer, topic, value, key, partition)
            self._deliver(timeout)
        if self.mirrors and not self.transactional:
            self.persist_mirrors()  # acks=all: delivered is durable

    def _deliver(self, timeout: float | None) -> None:
        assert self._producer is not None
        for _ in range(4):  # refused records, alone again, their dead letters
            remaining = self._producer.flush() if timeout is None else self._producer.flush(timeout)
            if not self._produce_replacements():
                break
        self.raise_for_errors()
        if remaining:
            raise DeliveryError(f"{remaining} messages still undelivered after {timeout} s")

    def _produce_replacements(self) -> int:
        """Deal with the records refused since the last call: each is produced again
        alone (the broker refuses a whole batch when one record in it is too large, or
        the batch itself is); one refused again is replaced by its dead letter."""
        producer = self.producer
        with self._lock:
            refused, self._refused = self._refused, []
            alone, self._refused_alone = self._refused_alone, []
        for topic, partition, key, value, _reason in refused:
            producer.produce(topic, value, key, partition, on_delivery=self._on_retry_delivery)
            producer.flush(TRANSACTION_CALL_TIMEOUT_S)
        for topic, _partition, key, value, reason in alone:
            assert self.replace is not None
            code = "output_too_large" if "too large" in reason.lower() else "output_rejected"
            detail = f"Kafka refused a {len(value or b'')}-byte record for {topic}: {reason}"
            dlq, dkey, dvalue = self.replace(code, detail, topic, key, value, None)
            self._produce(producer, dlq, dvalue, dkey, -1)
            self.replaced += 1
        return len(refused) + len(alone)

    async def flush(self) -> None:
        """:meth:`flush_sync` without blocking the event loop; raises
        :class:`WorkerFailed` after :meth:`refuse`."""
        if self.failed is not None:
            raise WorkerFailed(f"not committing: {self.failed}")
        if (self._producer is None or len(self._producer) == 0) and not (
            self._refused or self._refused_alone or self._state
        ):
            self.raise_for_errors()
            if self.mirrors and not self.transactional:
                self.poll()  # delivery reports not served yet
                self.persist_mirrors()
            return
        await asyncio.get_running_loop().run_in_executor(None, self.flush_sync)
        if self.failed is not None:
            raise WorkerFailed(f"not committing: {self.failed}")

    # -- transactions (exactly_once) ----------------------------------------------------
    def commit_transaction_sync(
        self, offsets: list[TopicPartition] | None = None, group_metadata: bytes | None = None
    ) -> None:
        """Commit the open transaction, with the consumer ``offsets`` (next offsets to
        read) of the group described by ``group_metadata``, and begin the next one.

        Blocking. Retriable errors are retried; if the transaction cannot be committed it
        is aborted and :class:`TransactionError` raised: the events behind it were already
        applied to the worker's in-memory state, so the worker must restart from the
        committed offsets."""
        if self.failed is not None:
            raise WorkerFailed(f"not committing: {self.failed}")
        producer = self.producer
        try:
            if offsets:
                _retrying(
                    producer.send_offsets_to_transaction,
                    offsets,
                    group_metadata,
                    TRANSACTION_CALL_TIMEOUT_S,
                )
            _retrying(producer.commit_transaction, TRANSACTION_CALL_TIMEOUT_S)
            self.raise_for_errors()
        except Exception as exc:
            if self.mirrors:
                self.discard_mirrors()
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None and error.txn_requires_abort():
                try:
                    producer.abort_transaction(TRANSACTION_CALL_TIMEOUT_S)
                except Exception as abort_exc:
                    log.error("output: abort failed too: %s", abort_exc)
            raise TransactionError(f"transaction not committed: {exc}") from exc
        if self.mirrors:
            self.persist_mirrors()  # every record delivered so far was in this transaction
        producer.begin_transaction()
        self.in_transaction = 0

    async def commit_transaction(
        self, offsets: list[TopicPartition] | None = None, group_metadata: bytes | None = None
    ) -> None:
        """:meth:`commit_transaction_sync` in a thread; meanwhile new messages are held and
        go into the next transaction. The caller holds :attr:`transaction_lock`."""
        self.hold()
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, self._commit_in_thread, offsets, group_metadata
            )
        finally:
            self.release()

    def _commit_in_thread(
        self, offsets: list[TopicPartition] | None, group_metadata: bytes | None
    ) -> None:
        try:
            self.commit_transaction_sync(offsets, group_metadata)
        finally:
            self._commit_done.set()

    async def checkpoint(self) -> None:
        """Make everything produced so far durable and visible: commit the open transaction
        (it holds no consumed offsets), or, without transactions, wait for delivery."""
        if self.transactional:
            async with self.transaction_lock:
                if self._producer is not None and self.in_transaction:
                    await self.commit_transaction()
        else:
            await self.flush()

    def install_barrier(self, app: Any, before: Callable[[], Any] | None = None) -> None:
        """Make Faust's pre-commit ``app.producer.flush()`` flush this producer first.

        ``before`` (optional, a coroutine function) runs before the flush: e.g. writing
        out state that is buffered until the commit."""
        producer = app.producer
        faust_flush = producer.flush
        output = self

        async def flush() -> None:
            if before is not None:
                await before()
            await output.flush()
            await faust_flush()

        producer.flush = flush


class ChangelogStore(MutableMapping[Any, Any]):
    """A Faust table's local data, written through :class:`Output` to its changelog.

    What ``table[key] = value`` does inside a stream (update the store, send the change
    to the changelog partition of the key), without Faust's per-send cost. Faust still
    recovers the table from the changelog on assignment, so the keys are serialized with
    the table's own key serializer (compaction keeps the latest value per key bytes).
    ``partition_of(key, value)`` says which changelog partition an entry belongs to
    (the partition of the stream that owns it); without it, only :meth:`put` (which is
    given the partition) can write.
    """

    def __init__(
        self,
        table: Any,
        output: Output,
        partition_of: Callable[[Any, Any], int] | None = None,
    ) -> None:
        self.table = table
        self.output = output
        self.partition_of = partition_of
        self.writes = 0
        self._json = table.value_serializer in ("json", None)
        if hasattr(table.data, "delivered"):  # a local store copies what is delivered
            output.add_mirror(table.changelog_topic.get_topic_name(), table.data)

    @property
    def data(self) -> Any:
        return self.table.data

    def _topic(self) -> Any:
        return self.table.changelog_topic

    def _key_bytes(self, key: Any) -> bytes:
        raw, _ = self._topic().prepare_key(key, self.table.key_serializer)
        return raw

    def _value_bytes(self, value: Any) -> bytes | None:
        if value is None:
            return None
        if self._json:
            return orjson.dumps(value)
        raw, _ = self._topic().prepare_value(value, self.table.value_serializer)
        return raw

    def put(self, partition: int, key: Any, value: Any) -> None:
        """Set ``key`` in changelog ``partition`` (``value=None`` deletes it)."""
        store = self.table.data
        key_partition = key_partitions(store)
        if value is None:
            store.pop(key, None)
            if key_partition is not None:
                key_partition.pop(key, None)
        else:
            store[key] = value
            if key_partition is not None:
                key_partition[key] = partition  # dropped with the partition on revoke
        send = self.output.send_state if value is None else self.output.send_after_held
        send(
            self._topic().get_topic_name(),
            self._value_bytes(value),
            self._key_bytes(key),
            partition,
        )
        self.writes += 1

    # -- MutableMapping ----------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        return self.table.data[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self.table.data.get(key, default)

    def _partition(self, key: Any, value: Any) -> int:
        if self.partition_of is None:
            raise TypeError("this store writes with put(partition, key, value) only")
        return self.partition_of(key, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(self._partition(key, value), key, value)

    def __delitem__(self, key: Any) -> None:
        value = self.table.data[key]
        self.put(self._partition(key, value), key, None)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.table.data)

    def __len__(self) -> int:
        return len(self.table.data)
