"""Every place the worker reaches into private parts of faust-streaming and aiokafka.

The versions are pinned in ``pyproject.toml`` (faust-streaming 0.15.3, aiokafka 0.14.0).
Each function here names what it touches and why; ``tests/unit/test_faust_internals.py``
checks every one against the installed versions and fails with a message naming the
function when an upgrade moved what it relies on. Nothing else in the project touches a
private attribute of Faust, mode or aiokafka.

What the workarounds are for (upstream):

* exactly-once commits (:mod:`stream_app.transactions`): Faust's own ``exactly_once``
  produces outside transactions and duplicates after a SIGKILL or a rebalance
  (https://github.com/faust-streaming/faust/issues/177,
  https://github.com/faust-streaming/faust/issues/517,
  https://github.com/faust-streaming/faust/issues/323); its recovery hangs on changelogs
  written in transactions (https://github.com/faust-streaming/faust/issues/47);
* the commit gap bookkeeping (:mod:`stream_app.offset_guard`, ``handled_offsets``):
  Faust commits the wrong offset around gaps
  (https://github.com/faust-streaming/faust/issues/606,
  https://github.com/faust-streaming/faust/issues/312) and skips messages after a
  rebalance (https://github.com/faust-streaming/faust/issues/216);
* the local table store (:mod:`stream_app.local_store`): Faust's ``rocksdb://`` store
  finds a key's partition from the current event
  (https://github.com/faust-streaming/faust/pull/130,
  https://github.com/robinhood/faust/pull/478), and stores without a persisted offset
  replay every changelog at each start
  (https://github.com/faust-streaming/faust/issues/207).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from faust.types import TP

__all__ = [
    "WEB_MAKE_SERVER",
    "WEB_OVERRIDES",
    "actives_ready",
    "add_gap",
    "aiokafka_producer",
    "assigned_actives",
    "assigned_standbys",
    "clear_acked",
    "committed_offset",
    "group_coordinator",
    "group_instance_id",
    "key_partitions",
    "mark_committed",
    "patch_consumer_thread",
    "patch_create_worker_consumer",
    "patch_fetch_records",
    "patch_seek_to_committed",
    "pending_acks",
    "pending_gaps",
    "recovery_in_progress",
    "recovery_remaining",
    "recovery_remaining_seconds",
    "recovery_service",
    "replace_commit",
    "set_committed",
    "set_fetch_max_wait",
    "set_isolation_level",
    "start_tables_at_once",
    "table_converters",
]

#: aiohttp's ``AppRunner`` builds its server in this private coroutine method, which
#: :class:`stream_app.web.server.GuardedRunner` overrides (connection limits, idle sweep)
WEB_MAKE_SERVER = "_make_server"
#: private parts of Faust's aiohttp ``Web`` that :class:`stream_app.web.server.Web`
#: replaces: its runner (``_runner``, set in ``__init__``) and the TCP site it starts
#: (``_new_transport_tcp``)
WEB_OVERRIDES = ("_runner", "_new_transport_tcp")


# -- partition assignment ---------------------------------------------------------------
def assigned_standbys(app: Any) -> set[TP]:
    """The changelog partitions this worker keeps as standby replicas.

    ``app.assignor.assigned_standbys()`` (faust ``PartitionAssignor``, an object the app
    does not document); empty before the first assignment."""
    return set(app.assignor.assigned_standbys())


def assigned_actives(app: Any) -> set[TP]:
    """The partitions (source topics and table changelogs) this worker owns as active.

    ``app.assignor.assigned_actives()`` (faust ``PartitionAssignor``)."""
    return set(app.assignor.assigned_actives())


# -- table recovery ---------------------------------------------------------------------
def recovery_service(app: Any) -> Any:
    """Faust's table recovery service: ``app.tables.recovery`` (a ``Recovery``; its
    attributes used below are not documented API)."""
    return app.tables.recovery


def recovery_in_progress(app: Any) -> bool:
    """Whether Faust is restoring active table partitions from their changelogs
    (``Recovery.in_recovery``: set between the start of a recovery and the moment the
    active partitions reached their highwaters)."""
    return bool(recovery_service(app).in_recovery)


def recovery_remaining(app: Any) -> dict[TP, int]:
    """Changelog records still to read per active partition (``Recovery.active_remaining()``:
    highwater minus the offset read so far)."""
    remaining = recovery_service(app).active_remaining()
    return {tp: max(0, int(n)) for tp, n in remaining.items() if n is not None}


def recovery_remaining_seconds(app: Any, remaining: int) -> float | None:
    """Faust's estimate of the seconds left (``Recovery._estimated_active_remaining_secs``,
    private: from the recent batches' processing times; None until it has enough)."""
    estimate = recovery_service(app)._estimated_active_remaining_secs(remaining)
    return float(estimate) if estimate is not None else None


def actives_ready(app: Any) -> bool:
    """Whether the active table partitions are recovered and the streams resumed
    (``TableManager.actives_ready``: set by Faust's "Worker ready", cleared when a
    rebalance starts)."""
    return bool(app.tables.actives_ready)


def table_converters(table: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The table's ``(to_key, to_value)`` (``Collection._to_key``, ``_to_value``): what
    Faust's recovery applies to deserialized changelog keys and values (windowed keys
    come back from JSON as lists and become tuples)."""
    return table._to_key, table._to_value


def key_partitions(store: Any) -> dict[Any, int] | None:
    """The memory store's key → changelog partition index (``memory.Store._key_partition``):
    Faust drops the keys of revoked partitions with it, so keys the worker writes itself
    must be entered (None: a store without one)."""
    return getattr(store, "_key_partition", None)


def start_tables_at_once() -> None:
    """Start Faust's table manager without its one-second pause
    (``TableManager.on_start``: ``await self.sleep(1.0)``, then ``_update_channels()``
    and ``recovery.start()``; the pause leaves time for tables declared after the app
    started, and the consumer's subscription waits for it). Only for an app whose tables
    all exist before it starts."""
    from faust.tables.manager import TableManager

    async def on_start(self: Any) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    cls: Any = TableManager
    cls.on_start = on_start


# -- the producer -----------------------------------------------------------------------
def aiokafka_producer(app: Any) -> Any | None:
    """The aiokafka producer under Faust's (``Producer._producer``), None until started;
    the broker check asks it for metadata (``producer.client.fetch_all_metadata()``)."""
    return getattr(app.producer, "_producer", None)


# -- the consumer's commit bookkeeping (exactly_once, the offset guard) -------------------
def add_gap(consumer: Any, tp: TP, first: int, last: int) -> Awaitable[None]:
    """Tell Faust's consumer that offsets ``first..last`` of ``tp`` were handled outside
    its stream (``Consumer._add_gap``), so its commit can move past them."""
    return consumer._add_gap(tp, first, last)


def group_coordinator(app: Any) -> Any:
    """aiokafka's group coordinator of Faust's consumer (generation and member id for
    ``send_offsets_to_transaction``): ``app.consumer._thread._consumer._coordinator``."""
    return app.consumer._thread._consumer._coordinator


def group_instance_id(coordinator: Any) -> str | None:
    """The static membership id of the coordinator (``GroupCoordinator._group_instance_id``;
    None without one)."""
    return getattr(coordinator, "_group_instance_id", None)


def replace_commit(consumer: Any, commit_tps: Callable[..., Awaitable[bool]]) -> None:
    """Make Faust's consumer commit through ``commit_tps(tps, start_new_transaction)``
    instead of its own ``Consumer._commit_tps``."""
    consumer._commit_tps = commit_tps


def pending_acks(consumer: Any, tp: TP) -> list[int] | None:
    """Offsets acknowledged since the last commit (``Consumer._acked[tp]``)."""
    return consumer._acked.get(tp)


def clear_acked(consumer: Any, tp: TP) -> None:
    """Forget ``tp``'s acknowledgement index once committed (``Consumer._acked_index``;
    the list itself is cleared by the caller)."""
    consumer._acked_index[tp].clear()


def pending_gaps(consumer: Any, tp: TP) -> Any:
    """``tp``'s gaps of handled offsets (``Consumer._gap[tp]``, an interval tree)."""
    return consumer._gap.get(tp)


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The offset last committed for ``tp`` (``Consumer._committed_offset``)."""
    return consumer._committed_offset.get(tp)


def mark_committed(consumer: Any, tps: Iterable[TP], now: float) -> None:
    """Record the commit time Faust's "has not committed" warning reads
    (``AIOKafkaConsumerThread.tp_last_committed_at``)."""
    consumer._thread.tp_last_committed_at.update({tp: now for tp in tps})


def set_committed(consumer: Any, offsets: Mapping[TP, int]) -> None:
    """Record committed offsets as Faust's own commit does (``Consumer._committed_offset``)."""
    consumer._committed_offset.update(offsets)


def set_isolation_level(aiokafka_consumer: Any, level: str) -> None:
    """Set an aiokafka consumer's isolation level before it starts
    (``AIOKafkaConsumer._isolation_level``, read by ``start()``; Faust has no setting)."""
    aiokafka_consumer._isolation_level = level


def set_fetch_max_wait(aiokafka_consumer: Any, ms: int) -> None:
    """Set how long an aiokafka consumer's fetch requests wait for data at the broker,
    before it starts (``AIOKafkaConsumer._fetch_max_wait_ms``, read by ``start()``;
    Faust passes a fixed 1,500 ms and has no setting)."""
    aiokafka_consumer._fetch_max_wait_ms = ms


def patch_create_worker_consumer(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Wrap ``AIOKafkaConsumerThread._create_worker_consumer(self, transport)`` (the stream
    consumer's construction, before it starts): ``wrap`` receives the original and
    returns its replacement."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    cls: Any = AIOKafkaConsumerThread
    cls._create_worker_consumer = wrap(cls._create_worker_consumer)


def patch_consumer_thread(
    create_worker_consumer: Callable[[Callable[..., Any]], Callable[..., Any]],
    highwaters: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Wrap ``AIOKafkaConsumerThread._create_worker_consumer`` (the stream consumer's
    construction) and ``AIOKafkaConsumerThread._highwaters`` (the recovery's end
    offsets): each argument receives the original method and returns its replacement."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    cls: Any = AIOKafkaConsumerThread
    cls._create_worker_consumer = create_worker_consumer(cls._create_worker_consumer)
    cls._highwaters = highwaters(cls._highwaters)


def patch_fetch_records(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Wrap ``AIOKafkaConsumerThread._fetch_records(self, consumer, active_partitions,
    timeout=, max_records=)``: it runs in the consumer's own thread and hands aiokafka's
    ``Fetcher.fetched_records`` the stream consumer's set of active partitions, the set
    object itself (``Consumer._active_partitions``), which the main thread keeps
    changing; ``wrap`` receives the original and returns its replacement."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    cls: Any = AIOKafkaConsumerThread
    cls._fetch_records = wrap(cls._fetch_records)


def patch_seek_to_committed(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Wrap ``ThreadDelegateConsumer.seek_to_committed(self)`` of Faust's stream consumer
    (it returns ``{tp: committed offset or None}``; ``Consumer.perform_seek`` calls it at
    the end of every recovery, and when a fetch comes back while the flow is stopped,
    and sets its read offsets from the result); ``wrap`` receives the original and
    returns its replacement."""
    from faust.transport.consumer import ThreadDelegateConsumer

    cls: Any = ThreadDelegateConsumer
    cls.seek_to_committed = wrap(cls.seek_to_committed)
