"""Delayed labels by attribution: an exposure (view, click, impression) of an item becomes
positive when the same user carts, favs or purchases that item within the attribution
window (event time), and negative when the window closes without one.

A window closes in two ways (see :mod:`models.clock` for why neither is the latest
timestamp of the partition): when the *partition's* robust event-time clock passes the
exposure's deadline (:meth:`LabelAttribution.expire`), and when the *same user's* own later
event does (:meth:`LabelAttribution.expire_user`). A client with a skewed clock can thus
close its own windows early, never another user's.

Pending exposures live in a ``MutableMapping`` with one entry per exposure (key: user id
and event id) — a plain ``dict`` in tests and offline scoring, a changelog-backed Faust
table in the worker — so they survive a restart, and each exposure is written once when
it starts waiting and deleted once when its label is known (an entry per user, rewritten
on every exposure, cost the worker a changelog message of up to 64 exposures per event).
Indexes per user and by deadline are kept in memory and rebuilt from the store.
Memory is bounded twice: at most ``max_per_user`` pending exposures per user and
``max_pending`` per partition; past either bound the oldest exposures are closed early as
negatives (counted in ``evicted``), never silently dropped.

>>> from models.events import decode_event
>>> store = {}
>>> labels = LabelAttribution(store, window_s=1800)
>>> view = decode_event(b'{"user_id": 1, "item_id": 9, "type": "pv", "ts": 1511658000}')
>>> labels.track(0, view, {"importance": 0.7})
[]
>>> cart = decode_event(b'{"user_id": 1, "item_id": 9, "type": "cart", "ts": 1511658600}')
>>> [(r.event.event_id == view.event_id, r.label) for r in labels.convert(0, cart)]
[(True, 1)]
>>> labels.track(0, view, {})
[]
>>> [r.label for r in labels.expire(0, watermark=1511658000 + 1801)]
[0]
>>> labels.track(0, view, {})
[]
>>> labels.expire_user(0, "2", 1511658000 + 9999)   # another user's time closes nothing
[]
>>> [r.reason for r in labels.expire_user(0, "1", 1511658000 + 1801)]
['window_closed']
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from models.events import Event, validate_event

__all__ = ["LabelAttribution", "Resolved"]


@dataclass(slots=True)
class Resolved:
    """An exposure whose label is now known, with what was recorded when it was scored."""

    event: Event
    label: int
    info: dict[str, Any]
    reason: str  # "converted", "window_closed" or "evicted"


def pending_key(user_id: str, event_id: str) -> str:
    """The store key of a pending exposure (ids never hold control characters)."""
    return f"{user_id}\x1f{event_id}"


class LabelAttribution:
    """Pending exposures per user, resolved by conversions or by the window closing."""

    def __init__(
        self,
        store: MutableMapping[str, dict[str, Any]],
        window_s: float = 1800.0,
        max_per_user: int = 64,
        max_pending: int = 200_000,
    ) -> None:
        self.store = store
        self.window_s = window_s
        self.max_per_user = max_per_user
        self.max_pending = max_pending
        # Per partition: a heap of (deadline, store key) and, per user, the user's pending
        # exposures as (ts, store key), sorted (the same order after a rebuild from the
        # store as before it).
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self._users: dict[int, dict[str, list[tuple[float, str]]]] = {}
        self._size: dict[int, int] = {}
        self.evicted = 0
        self.resolved = 0

    # -- partitions -------------------------------------------------------------------
    def _ensure(self, partition: int) -> None:
        if partition in self._heaps:
            return
        heap: list[tuple[float, str]] = []
        users: dict[str, list[tuple[float, str]]] = {}
        legacy = []
        for key, entry in list(self.store.items()):
            if not entry or entry.get("p") != partition:
                continue
            if "pend" in entry:  # one entry per user, as written by earlier versions
                legacy.append((key, entry))
                continue
            heap.append((entry["ts"] + self.window_s, key))
            users.setdefault(entry["u"], []).append((entry["ts"], key))
        for user_id, entry in legacy:
            del self.store[user_id]
            for pending in entry["pend"]:
                key = pending_key(user_id, pending["event"]["event_id"])
                self.store[key] = {"p": partition, "u": user_id, **pending}
                heap.append((pending["ts"] + self.window_s, key))
                users.setdefault(user_id, []).append((pending["ts"], key))
        for keys in users.values():
            keys.sort()
        heapq.heapify(heap)
        self._heaps[partition] = heap
        self._users[partition] = users
        self._size[partition] = sum(len(keys) for keys in users.values())

    def forget_partition(self, partition: int) -> None:
        """Drop in-memory indexes of a partition (on revoke); rebuilt from the store on use."""
        self._heaps.pop(partition, None)
        self._users.pop(partition, None)
        self._size.pop(partition, None)

    def pending(self, partition: int | None = None) -> int:
        """Number of pending exposures (in one partition, or in all known ones)."""
        if partition is not None:
            self._ensure(partition)
            return self._size[partition]
        return sum(self._size.values())

    # -- operations -------------------------------------------------------------------
    def track(self, partition: int, event: Event, info: dict[str, Any]) -> list[Resolved]:
        """Start waiting for the label of an exposure; returns exposures closed by bounds.

        Tracking the same ``event_id`` twice (a redelivery) is a no-op.
        """
        self._ensure(partition)
        key = pending_key(event.user_id, event.event_id)
        if key in self.store:
            return []  # the same event again (redelivered after a crash): already waiting
        self.store[key] = {
            "p": partition,
            "u": event.user_id,
            "ts": event.ts,
            "item": event.item_id,
            "event": event.to_dict(),
            "info": info,
        }
        keys = self._users[partition].setdefault(event.user_id, [])
        bisect.insort(keys, (event.ts, key))
        heap = self._heaps[partition]
        heapq.heappush(heap, (event.ts + self.window_s, key))
        self._size[partition] += 1
        if len(heap) > 2 * self._size[partition] + 1024:
            self._compact(partition)
        out: list[Resolved] = []
        while len(keys) > self.max_per_user:
            out.append(self._resolve(partition, keys[0][1], 0, "evicted"))
        if self._size[partition] > self.max_pending:
            out.extend(self._evict_oldest(partition))
        return out

    def convert(self, partition: int, event: Event) -> list[Resolved]:
        """Resolve as positive the user's pending exposures of the converted item that lie
        within the window before the conversion."""
        self._ensure(partition)
        keys = self._users[partition].get(event.user_id)
        if not keys:
            return []
        out = []
        for _, key in list(keys):
            pending = self.store[key]
            if pending["item"] == event.item_id and (
                event.ts - self.window_s <= pending["ts"] <= event.ts
            ):
                out.append(self._resolve(partition, key, 1, "converted"))
        return out

    def expire(self, partition: int, watermark: float) -> list[Resolved]:
        """Resolve as negative every exposure of the partition whose window closed before
        ``watermark`` (the partition's event-time clock)."""
        self._ensure(partition)
        heap = self._heaps[partition]
        out: list[Resolved] = []
        while heap and heap[0][0] < watermark:
            _, key = heapq.heappop(heap)
            if key in self.store:  # else resolved already (converted or evicted)
                out.append(self._resolve(partition, key, 0, "window_closed"))
        return out

    def expire_user(self, partition: int, user_id: str, ts: float) -> list[Resolved]:
        """Resolve as negative the exposures of ``user_id`` whose window closed before
        ``ts``, a time of the same user's (an event of the user's own clock): O(1) when
        none did."""
        self._ensure(partition)
        keys = self._users[partition].get(user_id)
        out: list[Resolved] = []
        while keys and keys[0][0] + self.window_s < ts:
            out.append(self._resolve(partition, keys[0][1], 0, "window_closed"))
        return out

    # -- helpers ----------------------------------------------------------------------
    def _compact(self, partition: int) -> None:
        """Drop the heap entries of exposures resolved otherwise (conversions, a user's
        own time, evictions), so the heap stays within twice the pending exposures even
        when the partition's clock stands still."""
        store = self.store
        heap = [item for item in self._heaps[partition] if item[1] in store]
        heapq.heapify(heap)
        self._heaps[partition] = heap

    def _evict_oldest(self, partition: int) -> list[Resolved]:
        heap = self._heaps[partition]
        out: list[Resolved] = []
        while self._size[partition] > self.max_pending and heap:
            _, key = heapq.heappop(heap)
            if key in self.store:
                out.append(self._resolve(partition, key, 0, "evicted"))
        return out

    def _resolve(self, partition: int, key: str, label: int, reason: str) -> Resolved:
        """Remove a pending exposure from the store and the indexes; its resolution."""
        pending = self.store[key]
        del self.store[key]
        users = self._users[partition]
        keys = users.get(pending["u"])
        if keys is not None:
            keys.remove((pending["ts"], key))
            if not keys:
                del users[pending["u"]]
        self._size[partition] -= 1
        self.resolved += 1
        if reason == "evicted":
            self.evicted += 1
        return Resolved(
            validate_event(pending["event"], now=float("inf")), label, pending["info"], reason
        )
