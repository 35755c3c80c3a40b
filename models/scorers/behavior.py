"""A statistical prior from the event type, its recency and how rare its item and
category are.

>>> from models.events import decode_event
>>> from models.features import embed, hashed_features
>>> from models.scorers.base import EventFeatures
>>> scorer = BehaviorPrior()
>>> def score(raw):
...     ev = decode_event(raw)
...     feats = EventFeatures(hashed_features(ev), embed(ev))
...     s = scorer.score(ev, feats)
...     scorer.observe(ev)
...     return s
>>> view = b'{"user_id": 1, "item_id": 2, "type": "pv", "ts": 1511658000}'
>>> buy = b'{"user_id": 1, "item_id": 2, "type": "buy", "ts": 1511658000}'
>>> score(buy) > score(view)
True
>>> first, again = score(view), score(view)
>>> first > again  # the item is no longer new
True
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from models.events import Event
from models.features import TYPE_LEVEL
from models.scorers.base import EventFeatures
from models.state import decode_array, encode_array

__all__ = ["BehaviorPrior"]


class BehaviorPrior:
    """Score = ``w_type·level(type) + w_rarity·rarity + w_recency·recency``.

    * level: engagement level of the type (impression 0 … purchase 1).
    * rarity: ``1/sqrt(1 + n)`` where ``n`` is the decayed count of the item (and of the
      category, averaged) in hashed counters of fixed size, so memory stays bounded.
    * recency: ``exp(-lateness / horizon_s)``; events far behind the watermark matter less.

    Counters are halved every ``half_life_events`` events so popularity follows the
    stream.
    """

    name = "behavior"

    def __init__(
        self,
        bits: int = 16,
        half_life_events: int = 200_000,
        horizon_s: float = 3600.0,
        weights: tuple[float, float, float] = (0.5, 0.3, 0.2),
    ) -> None:
        self.bits = bits
        self.half_life_events = half_life_events
        self.horizon_s = horizon_s
        self.weights = weights
        self._mask = (1 << bits) - 1
        self.item_counts = np.zeros(1 << bits, dtype=np.float32)
        self.category_counts = np.zeros(1 << bits, dtype=np.float32)
        self.seen = 0

    def _slots(self, event: Event) -> tuple[int, int | None]:
        item = zlib.crc32(event.item_id.encode()) & self._mask
        cat = zlib.crc32(event.category_id.encode()) & self._mask if event.category_id else None
        return item, cat

    def score(self, event: Event, features: EventFeatures) -> float:
        """Prior importance in [0, 1]."""
        item, cat = self._slots(event)
        rarity = 1.0 / math.sqrt(1.0 + float(self.item_counts[item]))
        if cat is not None:
            rarity = 0.5 * rarity + 0.5 / math.sqrt(1.0 + float(self.category_counts[cat]))
        recency = math.exp(-max(0.0, features.lateness_s) / self.horizon_s)
        w_type, w_rarity, w_recency = self.weights
        return w_type * TYPE_LEVEL[event.type] + w_rarity * rarity + w_recency * recency

    def observe(self, event: Event) -> None:
        """Count the event's item and category (called for every event, labelled or not)."""
        item, cat = self._slots(event)
        self.item_counts[item] += 1.0
        if cat is not None:
            self.category_counts[cat] += 1.0
        self.seen += 1
        if self.seen % self.half_life_events == 0:
            self.item_counts *= 0.5
            self.category_counts *= 0.5

    def learn(self, event: Event, features: EventFeatures, label: int) -> None:
        """The prior does not learn from labels."""

    def to_state(self) -> dict[str, Any]:
        """Plain-data state."""
        return {
            "bits": self.bits,
            "seen": self.seen,
            "items": encode_array(self.item_counts),
            "categories": encode_array(self.category_counts),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore counters saved by :meth:`to_state`."""
        items = decode_array(state["items"])
        cats = decode_array(state["categories"])
        if items.shape != self.item_counts.shape or cats.shape != self.category_counts.shape:
            raise ValueError("behavior state has a different number of buckets")
        self.item_counts, self.category_counts = items, cats
        self.seen = int(state["seen"])
