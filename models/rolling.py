"""Rolling importance per entity (item, category, user) over event-time windows.

Plain data and arithmetic, no Kafka: the Faust agent in :mod:`agents.rolling` keeps the
state in windowed tables and uses these helpers to update and read it.

State is held in *panes*: tumbling windows of ``step`` seconds (default one minute). A
hopping window of ``size`` seconds that advances by ``step`` is the sum of its
``size / step`` panes, so one pane per event and entity serves every window size
(5 minutes and 1 hour by default), instead of one table entry per overlapping window.

An aggregate is a list ``[events, importance_sum, kept, p_sum]``.

>>> windows = parse_windows("5m,1h", step=60)
>>> windows
{'5m': 300.0, '1h': 3600.0}
>>> window_bounds(1_000_030.0, windows["5m"], 60)   # the last 5 panes, current one included
(999780.0, 1000080.0)
>>> totals = {"a": [2, 1.5, 1, 0.4], "b": [1, 0.9, 0, 0.1]}
>>> [row["id"] for row in top_k(totals, 2, by="mean")]
['b', 'a']
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "RANK_BY",
    "USER_TOP_CAP",
    "add",
    "aggregate",
    "figures",
    "fold_user_top",
    "merge_top",
    "pane_start",
    "parse_duration",
    "parse_windows",
    "top_k",
    "update_user_top",
    "user_top_items",
    "window_bounds",
]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

#: What a top list can be ranked by.
#: the figure of a :func:`top_k` row that each ranking compares
RANK_FIELD = {
    "importance": "importance",
    "mean": "mean_importance",
    "events": "events",
    "kept": "kept",
}
RANK_BY = tuple(RANK_FIELD)

#: Items kept per user in the per-user "top items" structure.
USER_TOP_CAP = 50


def parse_duration(text: str) -> float:
    """``"90"`` or ``"90s"`` → 90.0, ``"5m"`` → 300.0, ``"1h"`` → 3600.0.

    >>> parse_duration("1h"), parse_duration("45")
    (3600.0, 45.0)
    """
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"not a positive duration: {text!r}")
    return value


def parse_windows(spec: str, step: float) -> dict[str, float]:
    """Window names and sizes from ``"5m,1h"``; each size must be a multiple of ``step``."""
    windows: dict[str, float] = {}
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        size = parse_duration(name)
        if abs(size / step - round(size / step)) > 1e-9:
            raise ValueError(f"window {name!r} is not a multiple of the step ({step} s)")
        windows[name] = size
    if not windows:
        raise ValueError("no rolling window configured")
    return windows


def pane_start(ts: float, step: float) -> float:
    """Start of the pane (tumbling window of ``step`` seconds) holding ``ts``."""
    return float(math.floor(ts / step) * step)


def window_bounds(now: float, size: float, step: float) -> tuple[float, float]:
    """``[start, end)`` of the hopping window of ``size`` that covers ``now``'s pane and
    the panes before it: the rolling window "as of" ``now`` (Faust's ``earliest``)."""
    end = pane_start(now, step) + step
    return end - size, end


def add(total: list[float] | None, delta: Iterable[float]) -> list[float]:
    """Element-wise sum of two aggregates (``total`` may be None)."""
    delta = list(delta)
    if total is None:
        return delta
    return [a + b for a, b in zip(total, delta, strict=True)]


def aggregate(
    panes: Iterable[tuple[Any, float, list[float]]], start: float, end: float
) -> dict[Any, list[float]]:
    """Sum ``(key, pane_start, aggregate)`` triples whose pane lies in ``[start, end)``."""
    totals: dict[Any, list[float]] = {}
    for key, begin, agg in panes:
        if start <= begin < end:
            totals[key] = add(totals.get(key), agg)
    return totals


def figures(agg: list[float]) -> dict[str, Any]:
    """The published figures of one aggregate."""
    events, importance, kept, p_sum = agg
    n = max(round(events), 0)
    return {
        "events": n,
        "importance": round(importance, 6),
        "mean_importance": round(importance / n, 6) if n else 0.0,
        "kept": round(kept),
        "p_mean": round(p_sum / n, 6) if n else 0.0,
    }


def _rank_value(agg: list[float], by: str) -> float:
    events, importance, kept, _ = agg
    if by == "importance":
        return importance
    if by == "mean":
        return importance / events if events else 0.0
    if by == "events":
        return events
    if by == "kept":
        return kept
    raise ValueError(f"cannot rank by {by!r}")


def top_k(totals: Mapping[Any, list[float]], k: int, by: str = "importance") -> list[dict]:
    """The ``k`` entities with the largest ``by`` (ties: smaller id first), with figures.

    The value compared is rounded to 9 decimals, so sums taken in another order rank
    the same.
    """
    if by not in RANK_BY:
        raise ValueError(f"cannot rank by {by!r}")
    best = heapq.nsmallest(
        k, totals.items(), key=lambda kv: (-round(_rank_value(kv[1], by), 9), str(kv[0]))
    )
    return [{"id": key, **figures(agg)} for key, agg in best]


def merge_top(rows: Iterable[Mapping[str, Any]], k: int, by: str = "importance") -> list[dict]:
    """The ``k`` best of several :func:`top_k` answers over disjoint sets of entities
    (e.g. one per worker), ranked as :func:`top_k` ranks (ties: smaller id first).

    >>> a = top_k({"x": [2, 1.0, 1, 0.2]}, 2)
    >>> b = top_k({"y": [1, 1.5, 0, 0.1], "z": [1, 0.1, 0, 0.1]}, 2)
    >>> [row["id"] for row in merge_top(a + b, 2)]
    ['y', 'x']
    """
    field = RANK_FIELD[by]
    return heapq.nsmallest(k, rows, key=lambda row: (-round(row[field], 9), str(row["id"])))


def update_user_top(
    value: Mapping[str, Any] | None,
    item: str,
    ts: float,
    importance: float,
    *,
    half_life_s: float,
    cap: int = USER_TOP_CAP,
) -> dict[str, Any]:
    """Add one event to a user's decayed importance per item; returns the new value.

    The value is ``{"t": latest event time, "items": {item: [score, events, last_ts]}}``
    with scores decayed (half-life ``half_life_s``, event time) to ``t``. At most ``cap``
    items are kept: past it, the item with the lowest score goes.

    >>> v = update_user_top(None, "a", 100.0, 0.8, half_life_s=60)
    >>> v = update_user_top(v, "b", 160.0, 0.5, half_life_s=60)
    >>> v["items"]["a"][0], v["items"]["b"][0]
    (0.4, 0.5)
    """
    return fold_user_top(value, [(item, ts, importance)], half_life_s=half_life_s, cap=cap)


def fold_user_top(
    value: Mapping[str, Any] | None,
    contributions: Iterable[tuple[str, float, float]],
    *,
    half_life_s: float,
    cap: int = USER_TOP_CAP,
) -> dict[str, Any]:
    """:func:`update_user_top` for several ``(item, ts, importance)`` events at once: the
    value is copied once and trimmed to ``cap`` items once, at the end.

    >>> v = fold_user_top(None, [("a", 100.0, 0.8), ("b", 160.0, 0.5)], half_life_s=60)
    >>> v["items"]["a"][0], v["items"]["b"][0]
    (0.4, 0.5)
    """
    t = float(value["t"]) if value else None
    items = {k: list(v) for k, v in value["items"].items()} if value else {}
    for item, ts, importance in contributions:
        if t is None:
            t = ts
        elif ts > t:
            factor = 0.5 ** ((ts - t) / half_life_s)
            for entry in items.values():
                entry[0] *= factor
            t = ts
        contribution = importance * 0.5 ** ((t - ts) / half_life_s)
        entry = items.get(item)
        if entry is None:
            items[item] = [contribution, 1, ts]
        else:
            entry[0] += contribution
            entry[1] += 1
            entry[2] = max(entry[2], ts)
    if len(items) > cap:
        for victim, _ in heapq.nsmallest(
            len(items) - cap, items.items(), key=lambda kv: (kv[1][0], kv[1][2])
        ):
            del items[victim]
    return {"t": t, "items": items}


def user_top_items(value: Mapping[str, Any] | None, k: int) -> list[dict[str, Any]]:
    """A user's ``k`` items with the most decayed importance (ties: smaller id first)."""
    if not value:
        return []
    best = heapq.nsmallest(
        k, value["items"].items(), key=lambda kv: (-round(kv[1][0], 9), str(kv[0]))
    )
    return [
        {"item_id": item, "score": round(score, 6), "events": int(events), "last_ts": last}
        for item, (score, events, last) in best
    ]
