"""Delayed labels by attribution: an exposure (view, click, impression) of an item becomes
positive when the same user carts, favs or purchases that item within the attribution
window (event time), and negative when the window closes without one.

Pending exposures live in a ``MutableMapping[user_id, dict]`` — a plain ``dict`` in
tests and offline scoring, a changelog-backed Faust table in the worker — so they
survive a restart. Memory is bounded twice: at most ``max_per_user`` pending exposures
per user and ``max_pending`` per partition; past either bound the oldest exposures are
closed early as negatives (counted in ``evicted``), never silently dropped.

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
"""

from __future__ import annotations

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
        # Per partition: a heap of (deadline, user_id) and the number of pending exposures.
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self._counts: dict[int, int] = {}
        self.evicted = 0
        self.resolved = 0

    # -- partitions -------------------------------------------------------------------
    def _ensure(self, partition: int) -> None:
        if partition in self._heaps:
            return
        heap: list[tuple[float, str]] = []
        count = 0
        for user_id, entry in list(self.store.items()):
            if entry and entry.get("p") == partition:
                for pending in entry["pend"]:
                    heap.append((pending["ts"] + self.window_s, user_id))
                    count += 1
        heapq.heapify(heap)
        self._heaps[partition] = heap
        self._counts[partition] = count

    def forget_partition(self, partition: int) -> None:
        """Drop in-memory indexes of a partition (on revoke); rebuilt from the store on use."""
        self._heaps.pop(partition, None)
        self._counts.pop(partition, None)

    def pending(self, partition: int | None = None) -> int:
        """Number of pending exposures (in one partition, or in all known ones)."""
        if partition is not None:
            self._ensure(partition)
            return self._counts[partition]
        return sum(self._counts.values())

    # -- operations -------------------------------------------------------------------
    def track(self, partition: int, event: Event, info: dict[str, Any]) -> list[Resolved]:
        """Start waiting for the label of an exposure; returns exposures closed by bounds.

        Tracking the same ``event_id`` twice (a redelivery) is a no-op.
        """
        self._ensure(partition)
        entry = self.store.get(event.user_id) or {"p": partition, "pend": []}
        pend = list(entry["pend"])
        if any(p["event"]["event_id"] == event.event_id for p in pend):
            return []  # the same event again (redelivered after a crash): already waiting
        pend.append({"ts": event.ts, "item": event.item_id, "event": event.to_dict(), "info": info})
        self._counts[partition] += 1
        out: list[Resolved] = []
        while len(pend) > self.max_per_user:
            out.append(self._resolved(pend.pop(0), 0, "evicted"))
            self._counts[partition] -= 1
        self.store[event.user_id] = {"p": partition, "pend": pend}
        heapq.heappush(self._heaps[partition], (event.ts + self.window_s, event.user_id))
        if self._counts[partition] > self.max_pending:
            out.extend(self._evict_oldest(partition))
        return out

    def convert(self, partition: int, event: Event) -> list[Resolved]:
        """Resolve as positive the user's pending exposures of the converted item that lie
        within the window before the conversion."""
        self._ensure(partition)
        entry = self.store.get(event.user_id)
        if not entry:
            return []
        keep, out = [], []
        for pending in entry["pend"]:
            if pending["item"] == event.item_id and (
                event.ts - self.window_s <= pending["ts"] <= event.ts
            ):
                out.append(self._resolved(pending, 1, "converted"))
            else:
                keep.append(pending)
        if out:
            self._counts[partition] -= len(out)
            self._write(event.user_id, partition, keep)
        return out

    def expire(self, partition: int, watermark: float) -> list[Resolved]:
        """Resolve as negative every exposure whose window closed before ``watermark``."""
        self._ensure(partition)
        heap = self._heaps[partition]
        out: list[Resolved] = []
        while heap and heap[0][0] < watermark:
            _, user_id = heapq.heappop(heap)
            out.extend(
                self._close_user(partition, user_id, lambda p: p["ts"] + self.window_s < watermark)
            )
        return out

    # -- helpers ----------------------------------------------------------------------
    def _close_user(
        self, partition: int, user_id: str, closes, reason: str = "window_closed"
    ) -> list[Resolved]:
        entry = self.store.get(user_id)
        if not entry:
            return []
        keep, out = [], []
        for pending in entry["pend"]:
            if closes(pending):
                out.append(self._resolved(pending, 0, reason))
            else:
                keep.append(pending)
        if out:
            self._counts[partition] -= len(out)
            self._write(user_id, partition, keep)
        return out

    def _evict_oldest(self, partition: int) -> list[Resolved]:
        heap = self._heaps[partition]
        out: list[Resolved] = []
        while self._counts[partition] > self.max_pending and heap:
            deadline, user_id = heapq.heappop(heap)
            closed = self._close_user(
                partition, user_id, lambda p, d=deadline: p["ts"] + self.window_s <= d, "evicted"
            )
            out.extend(closed)
        return out

    def _write(self, user_id: str, partition: int, pend: list[dict[str, Any]]) -> None:
        if pend:
            self.store[user_id] = {"p": partition, "pend": pend}
        else:
            del self.store[user_id]

    def _resolved(self, pending: dict[str, Any], label: int, reason: str) -> Resolved:
        self.resolved += 1
        if reason == "evicted":
            self.evicted += 1
        return Resolved(
            validate_event(pending["event"], now=float("inf")), label, pending["info"], reason
        )
