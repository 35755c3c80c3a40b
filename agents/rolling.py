"""Rolling importance per item, category and user, over event-time windows.

The score agent hands every score record it publishes to :func:`observe` (in process:
no second read of ``importance-scores``); records are folded in per batch:

* per **user**: panes of the user's importance in the table ``rolling-user`` and the
  user's decayed top items in ``rolling-user-top-items``, in the partition the record
  was scored in (partitioned by user, like the tables);
* per **item** and per **category**: contributions summed per (id, pane) are re-keyed
  through the internal topics ``<app_id>-rolling-by-item`` / ``-rolling-by-category``
  (a table keyed by item must be fed from a stream partitioned by item), packed into one
  message per destination partition, and summed into ``rolling-item`` /
  ``rolling-category`` by :func:`roll_items` / :func:`roll_categories`.

Each table is a Faust windowed table of one-minute *panes* (``tumbling(step)``,
changelog-backed: it survives restarts and moves with its partition). A hopping window
(5 minutes and 1 hour by default, advancing every ``step``) is the sum of its panes, read
when the API asks or when it is published. Why panes rather than one ``hopping(size,
step)`` table per window size: every event would then write ``size/step`` entries per
window size and entity (5 + 60 per entity with the defaults), each a changelog message,
which slows a Faust agent down by orders of magnitude (docs/architecture.md, "Rolling
importance"). Panes cost one entry per entity and minute.

A batch is folded in when it is full and before every offset commit (the worker's commit
barrier calls :func:`flush`), so what an acknowledged event contributed is written before
its offset is committed: per batch, one table write per (entity, pane) instead of one per
event. The writes go to the changelog partition of the records that produced them, as
Faust's own table writes do, through the worker's librdkafka producer
(:class:`stream_app.output.ChangelogStore`). Re-keying messages are taken in batches
(``noack_take``) and acknowledged after their contributions are written.

Changed entities are published every ``IMPORTANCE_ROLLING_PUBLISH_S`` seconds to
``importance-rolling`` (one record per entity and window size, keyed by the entity id).

Each table's "now" (the window the API answers for, the panes it keeps, the users it
forgets) is the event-time clock of the partitions that fed it (:mod:`models.clock`:
robust to a few clients' timestamps), carried with every score record and re-keyed
contribution, never the latest timestamp: a far-future event adds to its own future pane
but does not move the window.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import faust
import orjson

from models.clock import kth_latest
from models.rolling import (
    add,
    aggregate,
    figures,
    fold_user_top,
    pane_start,
    parse_windows,
    window_bounds,
)
from stream_app.app import app, output, settings
from stream_app.faust_internals import key_partitions
from stream_app.output import ChangelogStore, partition_for

__all__ = [
    "ENTITIES",
    "STATES",
    "WINDOWS",
    "EntityState",
    "flush",
    "importance_histogram",
    "observe",
    "roll_categories",
    "roll_items",
    "user_top_table",
]

log = logging.getLogger(__name__)

STEP = settings.rolling_step_s
#: window name → size in seconds, e.g. {"5m": 300.0, "1h": 3600.0}
WINDOWS = parse_windows(settings.rolling_windows, STEP)
#: panes older than this behind the tables' event-time clock are dropped
RETAIN_S = max(WINDOWS.values()) + STEP
#: half-life (event time) of a user's per-item importance in ``/api/users/{id}/top-items``
USER_HALF_LIFE_S = 1800.0
#: a user whose latest event is this far behind the user table's event-time clock is
#: forgotten (its items weigh less than 1/256 of a fresh event by then)
USER_RETAIN_S = 8 * USER_HALF_LIFE_S
#: re-keying messages taken per batch by the item and category agents (waiting at most
#: WITHIN_S)
BATCH = 2000
WITHIN_S = 0.25
#: contributions per re-keying message
PACK = 2000
#: score records folded in at once (folding blocks the event loop: small batches keep
#: the scoring latency low), and entities published or summed between two yields to
#: the loop
FOLD_BATCH = 500
PUBLISH_CHUNK = 200

ENTITIES = ("item", "category", "user")


def _through_topic(entity: str) -> faust.TopicT:
    return app.topic(
        f"{settings.app_id}-rolling-by-{entity}",
        partitions=settings.partitions,
        key_serializer="raw",
        value_serializer="raw",
        internal=True,
    )


items_topic = _through_topic("item")
categories_topic = _through_topic("category")


def _pane_table(entity: str) -> Any:
    return app.Table(
        f"rolling-{entity}",
        default=None,
        partitions=settings.partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        help=f"importance per {entity} and {STEP:g}-second pane: [events, sum, kept, p_sum]",
    ).tumbling(STEP, expires=RETAIN_S + STEP)


#: user id (bytes, the same key bytes as the scores topic, so ``table_route`` finds the
#: owner) → {"t": latest ts, "items": {item: [decayed importance, events, last ts]}}
user_top_table = app.Table(
    "rolling-user-top-items",
    default=None,
    partitions=settings.partitions,
    key_type=bytes,  # without it the changelog is written with raw keys but read as JSON
    schema=faust.Schema(key_serializer="raw", value_serializer="json"),
    help="per user: items with the most (decayed) importance",
)

#: ``"<entity>:<partition>"`` → the event-time clock that entity's table stood at in that
#: partition, so that a restarted worker's tables stand exactly where they stood (one
#: write per partition and batch)
clock_table = app.Table(
    "rolling-clock",
    default=None,
    partitions=settings.partitions,
    schema=faust.Schema(key_serializer="json", value_serializer="json"),
    help="per entity and partition: the event-time clock of the rolling tables",
)

#: importances of the most recent scored events, for the dashboard's histogram
recent_importance: deque[float] = deque(maxlen=10_000)


_changelogs: dict[int, ChangelogStore] = {}


def table_put(table: Any, partition: int, key: Any, value: Any) -> None:
    """Set ``table[key] = value`` in ``partition`` of its changelog (``None`` deletes).

    What a table assignment inside a stream does, with the partition given explicitly
    (the batch holds events of several partitions), written through the worker's
    :class:`~stream_app.output.Output`. Recording the key's partition lets the store drop
    it when the partition is revoked, as it does for recovered keys.
    """
    store = _changelogs.get(id(table))
    if store is None:
        store = _changelogs[id(table)] = ChangelogStore(table, output)
    store.put(partition, key, value)


class EntityState:
    """One entity's pane table, its event-time clock and what changed since publishing."""

    def __init__(self, entity: str, wrapper: Any) -> None:
        self.entity = entity
        self.wrapper = wrapper
        self.table = wrapper.table
        self.now = 0.0
        #: partition → the latest clock that came with its records, and what of it was
        #: saved in ``rolling-clock``
        self.clocks: dict[int, float] = {}
        self._saved: dict[int, float] = {}
        self.writes = 0
        self.dirty: dict[str, float] = {}
        self._cache: dict[str, tuple[tuple[int, float], float, float, float, dict]] = {}
        self._ranges: dict[float, tuple[float, float]] = {}
        #: key → pane starts it has in the table (see :meth:`starts_of`)
        self._index: dict[str, set[float]] = {}
        self._indexed = -1  # table size the index matches (-1: not built)

    def pane_key(self, key: str, start: float) -> tuple[str, tuple[float, float]]:
        window_range = self._ranges.get(start)
        if window_range is None:
            if len(self._ranges) > 4096:
                self._ranges.clear()
            (window_range,) = self.table.window.ranges(start)
            self._ranges[start] = window_range
        return key, window_range

    def put(
        self,
        partition: int,
        key: str,
        start: float,
        delta: list[float],
        ts: float,
        clock: float | None = None,
    ) -> None:
        """Add ``delta`` (latest event ``ts``) to ``key``'s pane starting at ``start``;
        ``clock`` is the event-time clock of the partition it came from (None: ``ts``,
        for contributions written by earlier versions)."""
        pane = self.pane_key(key, start)
        data = self.table.data
        old = data.get(pane)
        table_put(self.table, partition, pane, add(old, delta))
        if old is None and self._indexed >= 0:
            if self._indexed == len(data) - 1:
                self._index.setdefault(key, set()).add(start)
                self._indexed += 1
            else:
                self._indexed = -1  # the table changed behind the index: rebuild on use
        self.writes += 1
        now = ts if clock is None else clock
        if now > self.now:
            self.now = now
        if now > self.clocks.get(partition, 0.0):
            self.clocks[partition] = now
        if ts > self.dirty.get(key, 0.0):
            self.dirty[key] = ts

    def save_clocks(self) -> None:
        """Write the partitions' clocks that moved to ``rolling-clock`` (after a batch)."""
        for partition, clock in self.clocks.items():
            if clock != self._saved.get(partition):
                table_put(clock_table, partition, f"{self.entity}:{partition}", clock)
                self._saved[partition] = clock

    def panes(self) -> Iterator[tuple[str, float, list[float]]]:
        for (key, (start, _end)), agg in list(self.table.data.items()):
            if agg:
                yield key, start, agg

    def current_time(self) -> float:
        """The table's event-time clock: the latest clock that came with a record.

        After a restart, before any record came: the largest clock saved in
        ``rolling-clock`` for this entity's partitions. Without one (tables written by an
        earlier version), an estimate as robust as the clock itself: per partition, the
        ``IMPORTANCE_CLOCK_USERS``-th latest pane among the keys' latest panes (the
        earliest with fewer keys), capped at the wall clock plus the allowed skew; the
        largest over partitions. An underestimate is harmless (the next record moves it
        on), an overestimate would stick."""
        if not self.now:
            prefix = f"{self.entity}:"
            saved = [
                float(v)
                for k, v in list(clock_table.data.items())
                if isinstance(k, str) and k.startswith(prefix) and isinstance(v, (int, float))
            ]
            self.now = max(saved) if saved else recovered_time(self.table.data)
        return self.now

    def window(self, name: str) -> tuple[float, float]:
        """Window ``name`` as of this table's event-time clock (each table has its own:
        the item and category tables trail the user table by a re-keying hop, and a
        window read at another table's clock would look emptier than it is)."""
        return window_bounds(self.current_time(), WINDOWS[name], STEP)

    def totals(self, name: str, max_age_s: float = 1.0) -> tuple[float, float, dict]:
        """``(start, end, {key: aggregate})`` of window ``name`` as of now.

        Cached: recomputed when the table changed and the cached answer is older than
        ``max_age_s`` seconds (the API can be polled by many dashboards).
        """
        start, end = self.window(name)
        cached = self._cache.get(name)
        now = time.monotonic()
        if cached and (cached[0] == (self.writes, start) or now - cached[1] < max_age_s):
            return cached[2], cached[3], cached[4]
        totals = aggregate(self.panes(), start, end)
        self._cache[name] = ((self.writes, start), now, start, end, totals)
        return start, end, totals

    def starts_of(self, key: str) -> set[float]:
        """The pane starts ``key`` has in the table.

        From an index kept by :meth:`put` and :meth:`sweep`; rebuilt from the table when
        its size shows that entries came or went another way (recovery from the
        changelog, partitions revoked)."""
        data = self.table.data
        if self._indexed != len(data):
            index: dict[str, set[float]] = {}
            for k, (begin, _end) in list(data.keys()):
                index.setdefault(k, set()).add(begin)
            self._index, self._indexed = index, len(data)
        return self._index.get(key, set())

    def key_total(self, key: str, start: float, end: float) -> list[float] | None:
        """One key's sum over its panes in ``[start, end)``."""
        total = None
        data = self.table.data
        for begin in self.starts_of(key):
            if start <= begin < end:
                agg = data.get(self.pane_key(key, begin))
                if agg:
                    total = add(total, agg)
        return total

    def sweep(self) -> int:
        """Drop panes that fell out of every window (event time); returns how many.

        Local only, like Faust's own window expiry: the changelog keeps them until its
        retention (the longest window plus two steps) deletes them.
        """
        horizon = self.current_time() - RETAIN_S - STEP
        data = self.table.data
        key_partition = key_partitions(data) or {}
        old = [k for k in list(data.keys()) if k[1][0] < horizon]
        for k in old:
            data.pop(k, None)
            key_partition.pop(k, None)
        if old:
            self._cache.clear()
            self._indexed = -1  # rebuilt on next use
        return len(old)


def recovered_time(data: Any) -> float:
    """The event time a recovered pane table stands at (see
    :meth:`EntityState.current_time`)."""
    key_partition = key_partitions(data) or {}
    latest: dict[int, dict[str, float]] = {}
    cap = time.time() + settings.clock_max_skew_s
    for pane, agg in list(data.items()):
        key, (start, _end) = pane
        if not agg or start > cap:
            continue
        keys = latest.setdefault(key_partition.get(pane, -1), {})
        if start > keys.get(key, -math.inf):
            keys[key] = start
    times = (kth_latest(keys.values(), settings.clock_users) for keys in latest.values())
    return max((t for t in times if t is not None), default=0.0)


STATES: dict[str, EntityState] = {
    entity: EntityState(entity, _pane_table(entity)) for entity in ENTITIES
}


#: score records (with their partition and its event-time clock) not yet folded in
_buffer: list[tuple[int, dict[str, Any], float | None]] = []


def observe(partition: int, record: dict[str, Any], clock: float | None = None) -> None:
    """Take one published score record of ``partition`` (called by the score agent) and
    the partition's event-time clock after it (None: the record's ``ts``); or one
    published training record, an example kept at label time (counted in ``kept``).

    Records are folded in per batch: when :data:`FOLD_BATCH` have gathered, and at every
    offset commit (the worker's commit barrier calls :func:`flush`), so everything an
    acknowledged event contributed is written before its offset is committed.
    """
    _buffer.append((partition, record, clock))
    if len(_buffer) >= FOLD_BATCH:
        flush()


async def flush_async() -> None:
    """:func:`flush` for the commit barrier."""
    flush()


def flush() -> None:
    """Fold the buffered records into the user tables and send the item and category
    contributions, summed per (id, pane), to the owners of those ids."""
    if not _buffer:
        return
    batch = _buffer[:]
    _buffer.clear()
    roll_batch(batch)


def roll_batch(batch: list[tuple[int, dict[str, Any], float | None]]) -> None:
    """Fold score records ``(partition, record, clock)`` (``clock`` may be missing: the
    record's ``ts``), and training records (one kept example each), into the user
    tables; forward item and category contributions to their re-keying topics, one
    message per destination partition."""
    # entries: [events, importance, kept, p, latest ts, latest clock]
    users: dict[tuple[int, str, float], list] = {}
    tops: dict[tuple[int, str], list[tuple[str, float, float]]] = {}
    through: dict[tuple[str, str, float], list] = {}
    for partition, record, *rest in batch:
        clock = rest[0] if rest else None
        try:
            user, item = str(record["user_id"]), str(record["item_id"])
            ts = float(record["ts"])
            clock = ts if clock is None else float(clock)
            category = record.get("category_id")
            if "label_source" in record:
                # a training record: an example kept at label time, counted as kept in
                # the pane of its own event time (its event counted when it was scored)
                events, importance, kept, p = 0, 0.0, 1, 0.0
            else:
                events, kept = 1, 0
                importance, p = float(record["importance"]), float(record["p"])
        except Exception:  # not a score record: nothing to roll up
            log.warning("rolling: skipping unreadable score record of partition %d", partition)
            continue
        if events:
            recent_importance.append(importance)
            tops.setdefault((partition, user), []).append((item, ts, importance))
        start = pane_start(ts, STEP)
        keys = [(users, (partition, user, start)), (through, ("item", item, start))]
        if category is not None:
            keys.append((through, ("category", str(category), start)))
        for bucket, key in keys:
            # [events, importance, kept, p, latest ts, latest clock], summed in place
            entry = bucket.get(key)
            if entry is None:
                bucket[key] = [events, importance, kept, p, ts, clock]
            else:
                entry[0] += events
                entry[1] += importance
                entry[2] += kept
                entry[3] += p
                if ts > entry[4]:
                    entry[4] = ts
                if clock > entry[5]:
                    entry[5] = clock
    state = STATES["user"]
    for (partition, user, start), entry in users.items():
        state.put(partition, user, start, entry[:4], entry[4], entry[5])
    state.save_clocks()
    for (partition, user), contributions in tops.items():
        key = user.encode()
        value = fold_user_top(
            user_top_table.data.get(key), contributions, half_life_s=USER_HALF_LIFE_S
        )
        table_put(user_top_table, partition, key, value)
    send_through(through)


def send_through(through: dict[tuple[str, str, float], list]) -> None:
    """Send summed contributions ``{(entity, id, pane): [*delta, latest ts, latest clock]}``
    to the partitions that own the ids (the by-user topic's partitioner, murmur2 of the
    id), packed: one message per destination partition and up to :data:`PACK`
    contributions, each a row ``[id, pane, ts, *delta, clock]``."""
    packs: dict[tuple[str, int], list[list]] = {}
    for (entity, key, start), entry in through.items():
        destination = partition_for(key.encode(), settings.partitions)
        row = [key, start, entry[4], *entry[:4], entry[5]]
        packs.setdefault((entity, destination), []).append(row)
    for (entity, destination), rows in packs.items():
        topic = (items_topic if entity == "item" else categories_topic).get_topic_name()
        for i in range(0, len(rows), PACK):
            output.send(topic, orjson.dumps({"rows": rows[i : i + PACK]}), None, destination)


def unpack(value: bytes) -> Iterator[tuple[str, float, float, list[float], float | None]]:
    """``(id, pane, ts, delta, clock)`` rows of a re-keying message (packed, or one
    contribution as written by earlier versions; their clock is None)."""
    msg = orjson.loads(value)
    if "rows" in msg:
        for row in msg["rows"]:
            clock = float(row[7]) if len(row) > 7 else None
            yield str(row[0]), float(row[1]), float(row[2]), [float(x) for x in row[3:7]], clock
    else:
        delta = [float(x) for x in msg["d"]]
        yield str(msg["id"]), float(msg["pane"]), float(msg["ts"]), delta, None


async def roll_through(stream, entity: str) -> None:
    state = STATES[entity]
    async for events in stream.noack_take(BATCH, within=WITHIN_S):
        try:
            merged: dict[tuple[int, str, float], list] = {}
            for event in events:
                try:
                    rows = list(unpack(event.value))
                except Exception:
                    log.warning("rolling: skipping unreadable message at %s", event.message.tp)
                    continue
                for key, pane, ts, delta, clock in rows:
                    clock = ts if clock is None else clock
                    entry = merged.get((event.message.partition, key, pane))
                    if entry is None:
                        merged[(event.message.partition, key, pane)] = [delta, ts, clock]
                    else:
                        entry[0] = add(entry[0], delta)
                        entry[1] = max(entry[1], ts)
                        entry[2] = max(entry[2], clock)
            for i, ((partition, key, start), (delta, ts, clock)) in enumerate(merged.items()):
                if i and not i % PUBLISH_CHUNK and not settings.exactly_once:
                    # let the agents score between chunks (not with exactly_once: a commit
                    # in between would hold half of this batch's changes without its offsets)
                    await asyncio.sleep(0)
                state.put(partition, key, start, delta, ts, clock)
            state.save_clocks()
        finally:
            for event in events:
                await stream.ack(event)


@app.agent(items_topic)
async def roll_items(stream):
    """rolling-by-item → rolling-item."""
    await roll_through(stream, "item")


@app.agent(categories_topic)
async def roll_categories(stream):
    """rolling-by-category → rolling-category."""
    await roll_through(stream, "category")


def rolling_record(entity: str, key: str, name: str, start: float, end: float, agg: list) -> dict:
    """One record of the ``importance-rolling`` topic."""
    return {
        "entity": entity,
        "id": key,
        "window": name,
        "window_start": start,
        "window_end": end,
        **figures(agg),
    }


@app.timer(interval=settings.rolling_publish_s)
async def publish_rolling() -> None:
    """Publish every entity that changed since the last run, for every window size, as of
    its latest event."""
    for entity, state in STATES.items():
        dirty, state.dirty = state.dirty, {}
        for i, (key, ts) in enumerate(dirty.items()):
            if i and not i % PUBLISH_CHUNK:
                await asyncio.sleep(0)  # let the agents score between chunks
            for name, size in WINDOWS.items():
                start, end = window_bounds(ts, size, STEP)
                agg = state.key_total(key, start, end)
                if agg is None:
                    continue
                record = rolling_record(entity, key, name, start, end, agg)
                output.send(settings.topic_rolling, orjson.dumps(record), key.encode())


def sweep_users(now: float) -> int:
    """Forget users idle for ``USER_RETAIN_S`` of event time before ``now`` (the user
    table's event-time clock): dropped
    locally and deleted from the changelog (a tombstone), so the table stays bounded."""
    data = user_top_table.data
    key_partition = key_partitions(data) or {}
    idle = [k for k, v in list(data.items()) if v and v["t"] < now - USER_RETAIN_S]
    for key in idle:
        partition = key_partition.pop(key, None)
        data.pop(key, None)
        if partition is not None:
            table_put(user_top_table, partition, key, None)
    return len(idle)


@app.timer(interval=30.0)
async def sweep_rolling() -> None:
    """Drop panes that left every window, and users idle for long."""
    for state in STATES.values():
        state.sweep()
    sweep_users(STATES["user"].current_time())


def importance_histogram(bins: int = 20) -> dict[str, Any]:
    """Histogram of the most recent importances (equal-width bins over [0, 1])."""
    counts = [0] * bins
    for value in list(recent_importance):
        counts[min(int(value * bins), bins - 1)] += 1
    return {
        "edges": [round(i / bins, 6) for i in range(bins + 1)],
        "counts": counts,
        "n": sum(counts),
    }
