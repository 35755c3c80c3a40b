"""Table state that survives a restart on the same machine (``IMPORTANCE_TABLE_STORE=rocksdb``).

:class:`LocalStore` is Faust's in-memory table store (the worker reads and writes
``table.data`` as a dict on its hot path, unchanged) plus a local copy of each changelog
partition in RocksDB (`rocksdict <https://pypi.org/project/rocksdict/>`_), one database
per table and partition under the worker's data directory, together with the changelog
offset it holds up to. At assignment a partition is loaded from its local copy and
Faust's recovery reads only the changelog records after that offset (the *tail*);
a partition without a local copy (first start, data directory lost) is recovered from
the whole changelog as with the memory store. The changelog stays the source of truth:
the local copy only ever holds records read from it or delivered to it.

How the copy is kept:

* records the worker itself writes (:class:`stream_app.output.ChangelogStore` sends them
  through the librdkafka producer) are copied from their delivery reports, which carry
  the offset: with ``at_least_once`` once delivered (acks=all), with ``exactly_once``
  once their transaction committed (an aborted transaction's records are dropped);
* records read by Faust's recovery (the tail, and standby replicas) are written as they
  are applied, with their offsets.

Why not Faust's own ``rocksdb://`` store: it finds a key's partition from the event
being processed (``current_event()``), which is wrong for the worker's batched writes
(a batch of the rolling tables holds records of several partitions, written at commit
time), it reads and deserializes on every access (the hot path reads tables as dicts),
and it records the persisted offset only for records Faust's own producer sent; see
:mod:`stream_app.faust_internals`.

Standby replicas (``IMPORTANCE_STANDBY_REPLICAS``) are written to the local copy only
(not to memory); when a standby becomes active it is loaded from there and only the tail
is read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from faust.stores import STORES
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from stream_app.faust_internals import key_partitions, table_converters

__all__ = [
    "OFFSET_KEY",
    "STORE_URLS",
    "CountingMemoryStore",
    "LocalStore",
    "TableLoad",
    "loads",
    "store_url",
]

log = logging.getLogger(__name__)

#: the key under which each partition's database keeps the changelog offset it holds up
#: to (not a valid changelog key: the tables' keys are JSON or user ids)
OFFSET_KEY = b"\x00importance\x00offset"
#: records loaded between two yields to the event loop (the consumer's heartbeats)
LOAD_CHUNK = 5000

#: IMPORTANCE_TABLE_STORE → Faust store URL
STORE_URLS = {"memory": "importance-memory://", "rocksdb": "importance-local://"}

STORES.aliases.setdefault("importance-local", "stream_app.local_store:LocalStore")
STORES.aliases.setdefault("importance-memory", "stream_app.local_store:CountingMemoryStore")


def store_url(kind: str) -> str:
    """The Faust ``store`` URL of ``IMPORTANCE_TABLE_STORE=kind``.

    >>> store_url("rocksdb")
    'importance-local://'
    """
    return STORE_URLS[kind]


@dataclass
class TableLoad:
    """What a table's store did since the worker started (``/api/stats``, ``tables``)."""

    #: records loaded from the local copy at assignment
    loaded: int = 0
    #: seconds spent loading them
    load_s: float = 0.0
    #: changelog records applied by recovery to active partitions (the tail)
    replayed: int = 0
    #: changelog records applied to standby replicas
    standby: int = 0
    #: records the worker wrote, copied from their delivery reports
    copied: int = 0
    #: partitions loaded from a local copy / recovered without one
    partitions_loaded: int = 0
    partitions_without_copy: int = 0


def loads(serializer: Any, typ: Any, decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A fast decoder for the table's key or value bytes (orjson for plain JSON, the bytes
    themselves for raw), else Faust's own ``decode``.

    >>> loads("json", None, None)(b'["a", [1.0, 2.0]]')
    ['a', [1.0, 2.0]]
    >>> loads("raw", bytes, None)(b"u1")
    b'u1'
    """
    if serializer == "json" and typ is None:
        return orjson.loads
    if serializer == "raw" and typ in (None, bytes):
        return bytes
    return decode


class CountingMemoryStore(MemoryStore):
    """Faust's memory store, counting the changelog records recovery applies
    (``IMPORTANCE_TABLE_STORE=memory``: every start reads every changelog)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.load = TableLoad()

    def apply_changelog_batch(
        self,
        batch: Iterable[Any],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        self.load.replayed += len(events)


class LocalStore(MemoryStore):
    """Faust's memory store with a local RocksDB copy of each changelog partition."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._dbs: dict[int, Any] = {}
        self._db_lock = threading.RLock()
        #: records the worker wrote and got delivery reports for, not yet copied:
        #: (partition, offset, key, value)
        self._delivered: list[tuple[int, int, bytes | None, bytes | None]] = []
        self._delivered_lock = threading.Lock()
        self.load = TableLoad()
        #: partitions whose keys are in memory (the active ones, once assigned)
        self._in_memory: set[int] = set()

    # -- the local databases --------------------------------------------------------------
    @property
    def directory(self) -> Path:
        """Where this table's databases live (Faust's ``tabledir``: the data directory,
        app id and table version)."""
        return Path(self.app.conf.tabledir)

    def partition_path(self, partition: int) -> Path:
        return self.directory / f"{self.table_name}-{partition}.rdb"

    def _db(self, partition: int) -> Any:
        db = self._dbs.get(partition)
        if db is None:
            with self._db_lock:
                db = self._dbs.get(partition)
                if db is None:
                    from rocksdict import Options, Rdict

                    options = Options(raw_mode=True)
                    options.create_if_missing(True)
                    # small memtables: a worker opens one copy per table and partition
                    # (6 x 4 by default), so at most 2 x 1 MiB each keeps their memory
                    # under 50 MiB (8 MiB each grew the burst test's RSS past 100 MiB)
                    options.set_write_buffer_size(1024 * 1024)
                    options.set_max_write_buffer_number(2)
                    self.directory.mkdir(parents=True, exist_ok=True)
                    db = Rdict(str(self.partition_path(partition)), options)
                    self._dbs[partition] = db
        return db

    def has_copy(self, partition: int) -> bool:
        """Whether a local copy of ``partition`` exists (opened or on disk)."""
        return partition in self._dbs or self.partition_path(partition).exists()

    def persisted_offset(self, tp: TP) -> int | None:
        """The changelog offset the local copy of ``tp`` holds up to (None: no copy, read
        the whole changelog)."""
        if not self.has_copy(tp.partition):
            return None
        raw = self._db(tp.partition).get(OFFSET_KEY)
        return int(raw) if raw is not None else None

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """Faust calls this for records its own producer sent (the worker sends none)."""
        self._write(tp.partition, [], offset)

    def _write(
        self, partition: int, records: Iterable[tuple[bytes | None, bytes | None]], offset: int
    ) -> None:
        from rocksdict import WriteBatch

        with self._db_lock:
            self._write_locked(partition, records, offset, WriteBatch(raw_mode=True))

    def _write_locked(self, partition: int, records: Any, offset: int, batch: Any) -> None:
        db = self._db(partition)
        for key, value in records:
            if key is None:
                continue  # changelog records always have keys
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        old = db.get(OFFSET_KEY)
        if old is None or int(old) < offset:
            batch.put(OFFSET_KEY, str(offset).encode())
        db.write(batch)

    # -- records the worker writes ----------------------------------------------------------
    def delivered(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        """A delivery report of a record this worker wrote to the changelog (any thread)."""
        with self._delivered_lock:
            self._delivered.append((partition, offset, key, value))

    def persist(self) -> int:
        """Copy the delivered records to the local databases (their offsets with them);
        returns how many. Called when they are durable: after a flush, or after their
        transaction committed."""
        with self._delivered_lock:
            records, self._delivered = self._delivered, []
        if not records:
            return 0
        by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        offsets: dict[int, int] = {}
        for partition, offset, key, value in records:
            by_partition.setdefault(partition, []).append((key, value))
            if offset > offsets.get(partition, -1):
                offsets[partition] = offset
        for partition, rows in by_partition.items():
            self._write(partition, rows, offsets[partition])
        self.load.copied += len(records)
        return len(records)

    def discard(self) -> int:
        """Forget delivered records that will not be durable (their transaction aborted)."""
        with self._delivered_lock:
            records, self._delivered = self._delivered, []
        return len(records)

    # -- recovery -------------------------------------------------------------------------
    def _standby_partitions(self) -> set[int]:
        from stream_app.faust_internals import assigned_standbys

        topic = self.table.changelog_topic.get_topic_name()
        return {tp.partition for tp in assigned_standbys(self.app) if tp.topic == topic}

    def apply_changelog_batch(
        self,
        batch: Iterable[Any],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Apply changelog records read by Faust (recovery of actives, standby replicas):
        to memory for active partitions, to the local copy for all, with their offsets."""
        events = list(batch)
        if not events:
            return
        standbys = self._standby_partitions()
        active = [e for e in events if e.message.partition not in standbys]
        if active:
            super().apply_changelog_batch(active, to_key, to_value)
        rows: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        offsets: dict[int, int] = {}
        for event in events:
            msg = event.message
            rows.setdefault(msg.partition, []).append((msg.key, msg.value))
            if msg.offset > offsets.get(msg.partition, -1):
                offsets[msg.partition] = msg.offset
        for partition, records in rows.items():
            self._write(partition, records, offsets[partition])
        self.load.replayed += len(active)
        self.load.standby += len(events) - len(active)

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        """Hold exactly the active partitions in memory: drop those no longer active, load
        the others from their local copies (before Faust's recovery asks where to start
        reading). A standby promoted to active is not *newly* assigned to the consumer
        (it read the changelog partition already): what counts is the active set."""
        from stream_app.faust_internals import assigned_actives

        topic = self.table.changelog_topic.get_topic_name()
        actives = {tp.partition for tp in assigned_actives(self.app) if tp.topic == topic}
        for partition in sorted(self._in_memory - actives):
            self._drop_partition(partition)
        for partition in sorted(actives - self._in_memory):
            self._in_memory.add(partition)
            if self.has_copy(partition):
                await self._load_partition(partition)
            else:
                self.load.partitions_without_copy += 1

    def _drop_partition(self, partition: int) -> None:
        """Forget ``partition``'s keys in memory (its local copy stays)."""
        self._in_memory.discard(partition)
        key_partition = key_partitions(self)
        for key in [k for k, p in key_partition.items() if p == partition]:
            self.data.pop(key, None)
            key_partition.pop(key, None)

    async def _load_partition(self, partition: int) -> int:
        started = time.monotonic()
        decode_key = loads(self.key_serializer, self.key_type, self._decode_key)
        decode_value = loads(self.value_serializer, self.value_type, self._decode_value)
        to_key, to_value = table_converters(self.table)
        data, key_partition = self.data, key_partitions(self)
        n = 0
        for raw_key, raw_value in self._db(partition).items():
            if raw_key == OFFSET_KEY:
                continue
            key = to_key(decode_key(raw_key))
            data[key] = to_value(decode_value(raw_value))
            key_partition[key] = partition
            n += 1
            if not n % LOAD_CHUNK:
                await asyncio.sleep(0)
        took = time.monotonic() - started
        self.load.loaded += n
        self.load.load_s += took
        self.load.partitions_loaded += 1
        log.info(
            "table %s partition %d: %d records loaded from the local store in %.2f s",
            self.table_name,
            partition,
            n,
            took,
        )
        return n

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        log.info(
            "table %s: recovery done (%d records loaded from the local store, %d read "
            "from the changelog, %d standby records so far)",
            self.table_name,
            self.load.loaded,
            self.load.replayed,
            self.load.standby,
        )

    def reset_state(self) -> None:
        """Faust asks for this when the local state must be thrown away."""
        import shutil

        with self._db_lock:
            for db in self._dbs.values():
                db.close()
            self._dbs.clear()
        for path in self.directory.glob(f"{self.table_name}-*.rdb"):
            shutil.rmtree(path, ignore_errors=True)
