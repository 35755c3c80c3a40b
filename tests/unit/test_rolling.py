"""Rolling importance: panes summed into hopping windows, top-k, per-user top items."""

from __future__ import annotations

import random

import pytest
from faust.windows import HoppingWindow

from models.rolling import (
    add,
    aggregate,
    figures,
    pane_start,
    parse_duration,
    parse_windows,
    top_k,
    update_user_top,
    user_top_items,
    window_bounds,
)


def test_durations_and_windows():
    assert parse_duration("90") == 90.0
    assert parse_duration("2m") == 120.0
    assert parse_duration("1h") == 3600.0
    for bad in ("", "m", "-5m", "0", "abc", "nanh"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_windows("5m, 1h", 60) == {"5m": 300.0, "1h": 3600.0}
    with pytest.raises(ValueError):
        parse_windows("90s", 60)  # not a whole number of panes
    with pytest.raises(ValueError):
        parse_windows(" , ", 60)


@pytest.mark.parametrize(("size", "step"), [(300, 60), (3600, 60), (600, 300)])
def test_window_is_fausts_earliest_hopping_window(size, step):
    """The window read "as of now" is the oldest Faust hopping window that holds now."""
    hopping = HoppingWindow(size, step)
    rng = random.Random(size)
    for _ in range(200):
        now = 1_700_000_000 + rng.random() * 10_000
        start, end = window_bounds(now, size, step)
        faust_start, faust_end = hopping.earliest(now)
        assert start == faust_start
        assert end == pytest.approx(faust_end + 0.1)  # Faust ends windows 0.1 s early
        assert start <= now < end


def test_panes_sum_to_the_hopping_window():
    """Summing one-minute panes gives what one table entry per hopping window would hold."""
    rng = random.Random(11)
    step, size = 60.0, 300.0
    events = [
        (f"i{rng.randint(0, 9)}", 1_700_000_000 + rng.random() * 3000, rng.random())
        for _ in range(2000)
    ]
    panes: dict[tuple[str, float], list[float]] = {}
    for key, ts, imp in events:
        pk = (key, pane_start(ts, step))
        panes[pk] = add(panes.get(pk), [1, imp, 0, 0.5])
    now = max(ts for _, ts, _ in events)
    start, end = window_bounds(now, size, step)
    got = aggregate(((k, s, agg) for (k, s), agg in panes.items()), start, end)
    expected: dict[str, list[float]] = {}
    for key, ts, imp in events:
        if start <= ts < end:
            expected[key] = add(expected.get(key), [1, imp, 0, 0.5])
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key] == pytest.approx(expected[key])


def test_figures_and_top_k():
    totals = {
        "a": [4, 2.0, 1, 1.2],
        "b": [1, 0.9, 1, 0.3],
        "c": [2, 2.0, 0, 0.2],  # ties with a on total importance: smaller id first
    }
    top = top_k(totals, 2)
    assert [row["id"] for row in top] == ["a", "c"]
    assert top[0] == {
        "id": "a",
        "events": 4,
        "importance": 2.0,
        "mean_importance": 0.5,
        "kept": 1,
        "p_mean": 0.3,
    }
    assert [row["id"] for row in top_k(totals, 3, by="mean")] == ["c", "b", "a"]
    assert [row["id"] for row in top_k(totals, 1, by="events")] == ["a"]
    assert top_k({}, 5) == []
    with pytest.raises(ValueError):
        top_k(totals, 1, by="nope")
    assert figures([0, 0.0, 0, 0.0])["mean_importance"] == 0.0


def test_user_top_items_decay_and_order():
    half_life = 100.0
    events = [("a", 1000.0, 0.9), ("b", 1050.0, 0.5), ("a", 1100.0, 0.2), ("c", 1080.0, 0.7)]
    value = None
    for item, ts, imp in events:
        value = update_user_top(value, item, ts, imp, half_life_s=half_life)
    latest = max(ts for _, ts, _ in events)
    expected = {}
    for item, ts, imp in events:
        expected[item] = expected.get(item, 0.0) + imp * 0.5 ** ((latest - ts) / half_life)
    rows = user_top_items(value, 10)
    assert [r["item_id"] for r in rows] == sorted(expected, key=lambda i: -expected[i])
    for row in rows:
        assert row["score"] == pytest.approx(expected[row["item_id"]], abs=1e-6)
    assert rows[0]["events"] == 2 and rows[0]["last_ts"] == 1100.0
    assert user_top_items(value, 1) == rows[:1]
    assert user_top_items(None, 5) == []


def test_user_top_items_are_bounded():
    value = None
    for i in range(30):
        value = update_user_top(value, f"i{i}", 1000.0 + i, 0.01 * (i + 1), half_life_s=1e9, cap=8)
    assert len(value["items"]) == 8
    assert [r["item_id"] for r in user_top_items(value, 3)] == ["i29", "i28", "i27"]


def test_fold_user_top_equals_one_event_at_a_time():
    from models.rolling import fold_user_top

    events = [("a", 1000.0, 0.9), ("b", 1050.0, 0.5), ("a", 1100.0, 0.2), ("c", 1080.0, 0.7)]
    one_by_one = None
    for item, ts, imp in events:
        one_by_one = update_user_top(one_by_one, item, ts, imp, half_life_s=600.0)
    folded = fold_user_top(None, events[:2], half_life_s=600.0)
    folded = fold_user_top(folded, events[2:], half_life_s=600.0)
    assert folded["t"] == one_by_one["t"] == 1100.0
    assert folded["items"].keys() == one_by_one["items"].keys()
    for item, entry in one_by_one["items"].items():
        assert folded["items"][item] == pytest.approx(entry)
