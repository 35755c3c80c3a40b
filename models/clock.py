"""A robust event-time clock per partition: how far event time has got, as far as the
users of the partition agree, never pushed by one client's or one producer's clock.

Two defences, each against one way a timestamp can be wrong:

* **Cap against the wall clock.** An event counts at most as ``now() + max_skew_s``. The
  event is still scored with its own ``ts``; only the clock (and the closing of windows)
  sees the capped value, and the event is counted in :attr:`EventClock.capped`. A worker
  whose own clock is behind therefore closes windows late; it never loses an event.
* **Agreement of users.** Each of the last ``recent_users`` distinct users of the
  partition has a latest (capped) time; the clock is the ``users``-th largest of them
  (with fewer users seen: the smallest). Fewer than ``users`` clients can therefore not
  move it, whatever their timestamps. It never goes back.

The only wall-clock input is ``now`` (injectable), used for the cap alone: the same events
in the same order give the same clock, in the worker and offline, unless they lie beyond
``now() + max_skew_s``.

>>> clock = EventClock(users=2, recent_users=4, max_skew_s=60, now=lambda: 1000.0)
>>> clock.observe("a", 100.0), clock.time         # one user: its own time
(100.0, 100.0)
>>> clock.observe("b", 200.0), clock.time         # two users: the 2nd largest (100)
(200.0, 100.0)
>>> clock.observe("c", 99_999.0), clock.time      # far future: capped at now + 60 s
(1060.0, 200.0)
>>> clock.capped
1
>>> clock.observe("a", 50.0), clock.time          # out of order: a's latest stays 100
(50.0, 200.0)
"""

from __future__ import annotations

import bisect
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["EventClock", "kth_latest"]

#: bounds of the settings (``recent_users`` bounds the snapshot size: at most 1,024 user
#: ids of up to 256 characters each)
MAX_RECENT_USERS = 1024
MAX_SKEW_LIMIT_S = 86_400.0


def kth_latest(values: Iterable[float], k: int) -> float | None:
    """The ``k``-th largest of ``values``, or the smallest when there are fewer than ``k``
    (None when there are none): the latest time that at least ``k`` sources have reached.

    >>> kth_latest([5.0, 1.0, 9.0, 7.0], 2), kth_latest([5.0, 1.0], 3), kth_latest([], 1)
    (7.0, 1.0, None)
    """
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[-k] if len(ordered) >= k else ordered[0]


class EventClock:
    """Event time of one partition: the ``users``-th largest latest time among the last
    ``recent_users`` distinct users, each time capped at ``now() + max_skew_s``.

    Per event, :meth:`observe` costs a dictionary update and two binary searches with a
    memmove in a sorted list of at most ``recent_users`` floats (about a microsecond).
    """

    def __init__(
        self,
        *,
        users: int = 32,
        recent_users: int = 128,
        max_skew_s: float = 300.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= recent_users <= MAX_RECENT_USERS:
            raise ValueError(
                f"clock_recent_users={recent_users!r}: expected 1 to {MAX_RECENT_USERS}"
            )
        if not 1 <= users <= recent_users:
            raise ValueError(
                f"clock_users={users!r}: expected 1 to clock_recent_users ({recent_users})"
            )
        if not (isinstance(max_skew_s, (int, float)) and 0.0 <= max_skew_s <= MAX_SKEW_LIMIT_S):
            raise ValueError(f"clock_max_skew_s={max_skew_s!r}: expected 0 to {MAX_SKEW_LIMIT_S:g}")
        self.users = users
        self.recent_users = recent_users
        self.max_skew_s = float(max_skew_s)
        self.now = now
        #: user id → latest counted time, least recently seen first
        self._latest: OrderedDict[str, float] = OrderedDict()
        #: the same times, sorted (a multiset)
        self._sorted: list[float] = []
        #: the clock: monotone
        self.time = 0.0
        #: the counted (capped) time of the latest observed event
        self.last = 0.0
        #: events whose time was capped (ahead of ``now() + max_skew_s``)
        self.capped = 0

    def cap(self) -> float:
        """The latest time an event can count as now."""
        return self.now() + self.max_skew_s

    def observe(self, user_id: str, ts: float) -> float:
        """Count one event of ``user_id`` at ``ts``; returns the time it counted as
        (``ts``, or the cap when ``ts`` is beyond it) and advances :attr:`time`."""
        limit = self.cap()
        if ts > limit:
            ts = limit
            self.capped += 1
        self.last = ts
        latest, ordered = self._latest, self._sorted
        old = latest.get(user_id)
        if old is None:
            latest[user_id] = ts
            bisect.insort(ordered, ts)
            if len(latest) > self.recent_users:
                _, gone = latest.popitem(last=False)
                del ordered[bisect.bisect_left(ordered, gone)]
        else:
            latest.move_to_end(user_id)
            if ts > old:
                latest[user_id] = ts
                del ordered[bisect.bisect_left(ordered, old)]
                bisect.insort(ordered, ts)
        n = len(ordered)
        candidate = ordered[-self.users] if n >= self.users else ordered[0]
        if candidate > self.time:
            self.time = candidate
        return ts

    def __len__(self) -> int:
        """Distinct users remembered."""
        return len(self._latest)

    # -- state ------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Plain data: the clock, the capped count and the recent users in recency order."""
        return {
            "time": self.time,
            "capped": self.capped,
            "users": [[user, ts] for user, ts in self._latest.items()],
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`to_state`'s data (untrusted: checked; keeps the most recent
        ``recent_users`` users when more were saved). Raises ``ValueError`` or
        ``TypeError`` when unusable."""
        clock = float(state["time"])
        capped = int(state["capped"])
        users = state["users"]
        if not isinstance(users, list):
            raise TypeError("clock users must be a list")
        latest: OrderedDict[str, float] = OrderedDict()
        for entry in users[-self.recent_users :]:
            user, ts = entry
            if not isinstance(user, str) or len(user) > 1024:
                raise TypeError("clock user ids must be strings")
            ts = float(ts)
            if not math.isfinite(ts):
                raise ValueError("clock times must be finite")
            latest.pop(user, None)
            latest[user] = ts
        if not math.isfinite(clock) or capped < 0:
            raise ValueError("unusable clock state")
        self._latest = latest
        self._sorted = sorted(latest.values())
        self.time = clock
        self.capped = capped
