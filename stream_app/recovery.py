"""Where the worker stands after a start or a rebalance: table sizes, what was loaded
from the local store and read from the changelogs, and recovery progress.

``GET /api/stats`` (``recovery`` and ``tables``), ``GET /readyz`` and the dashboard read
:func:`recovery_status`; it uses Faust's recovery service through
:mod:`stream_app.faust_internals`.
"""

from __future__ import annotations

import time
from typing import Any

from stream_app import faust_internals

__all__ = ["RecoveryTracker", "recovery_status", "table_stats", "tracker"]


class RecoveryTracker:
    """Records left over time, for a rate and an estimate of the seconds left when
    Faust has none yet."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.last_duration_s: float | None = None
        #: the worker was ready (recovered, processing) at least once
        self.ready_once = False

    def observe(self, recovering: bool, left: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if recovering:
            if self.started_at is None or self.finished_at is not None:
                self.started_at, self.finished_at, self.samples = now, None, []
            self.samples.append((now, left))
            del self.samples[:-30]
        elif self.started_at is not None and self.finished_at is None:
            self.finished_at = now
            self.last_duration_s = round(now - self.started_at, 3)

    def rate(self) -> float | None:
        """Records read per second over the recent samples.

        >>> t = RecoveryTracker()
        >>> t.observe(True, 1000, now=0.0); t.observe(True, 400, now=2.0)
        >>> t.rate()
        300.0
        """
        if len(self.samples) < 2:
            return None
        (t0, left0), (t1, left1) = self.samples[0], self.samples[-1]
        if t1 <= t0 or left0 <= left1:
            return None
        return (left0 - left1) / (t1 - t0)


tracker = RecoveryTracker()


def recovery_status(app: Any) -> dict[str, Any]:
    """``{"state", "records_left", "estimated_s", "rate_per_s", ...}``.

    ``state`` is ``"recovering"`` while Faust reads changelogs for active partitions,
    ``"starting"`` before the worker was ready once (first assignment recovered),
    ``"rebalancing"`` while a later rebalance has not handed it its partitions yet, and
    ``"live"`` when it processes events."""
    recovering = faust_internals.recovery_in_progress(app)
    remaining = faust_internals.recovery_remaining(app) if recovering else {}
    left = sum(remaining.values())
    tracker.observe(recovering, left)
    estimate = faust_internals.recovery_remaining_seconds(app, left) if recovering else None
    rate = tracker.rate() if recovering else None
    if recovering and estimate is None and rate:
        estimate = left / rate
    actives_ready = faust_internals.actives_ready(app)
    if actives_ready:
        tracker.ready_once = True
    if recovering:
        state = "recovering"
    elif not tracker.ready_once:
        state = "starting"
    elif not actives_ready:
        state = "rebalancing"
    else:
        state = "live"
    return {
        "state": state,
        "records_left": left,
        "partitions_left": sum(1 for n in remaining.values() if n > 0),
        "estimated_s": round(estimate, 1) if estimate is not None else None,
        "rate_per_s": round(rate, 1) if rate is not None else None,
        "last_recovery_s": tracker.last_duration_s,
    }


def table_stats(app: Any) -> dict[str, dict[str, Any]]:
    """Per table: keys in memory, the store, and for a local store what it loaded from
    disk and read from the changelog since the worker started."""
    out: dict[str, dict[str, Any]] = {}
    for name, table in sorted(app.tables.items()):
        data = table.data
        entry: dict[str, Any] = {"keys": len(data), "store": type(data).__name__}
        load = getattr(data, "load", None)
        if load is not None:
            entry.update(vars(load))
            entry["load_s"] = round(entry["load_s"], 3)
        out[name] = entry
    return out
