"""The rolling agent's table bookkeeping, without a broker: pane writes, window sums,
event-time expiry of panes and of idle users."""

from __future__ import annotations

import json

import pytest

import agents.rolling as rolling
from stream_app.output import partition_for


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@pytest.fixture
def sent(monkeypatch):
    """Changelog messages the tables would send, captured instead (keys and values
    decoded as Faust's table recovery decodes them)."""
    out: list[tuple] = []
    changelogs = {table.changelog_topic.get_topic_name(): table for table in _tables()}

    def capture(topic, value, key=None, partition=-1):
        table = changelogs[topic]
        decoded_key = key if table.key_serializer == "raw" else _tuples(json.loads(key))
        out.append((partition, decoded_key, None if value is None else json.loads(value)))

    # writes, deletions (held for their outputs) and writes behind a held deletion
    for name in ("send", "send_state", "send_after_held"):
        monkeypatch.setattr(rolling.output, name, capture)
    tables = _tables()
    for table in tables:
        table.data.clear()
    for state in rolling.STATES.values():
        monkeypatch.setattr(state, "now", 0.0)
        monkeypatch.setattr(state, "clocks", {})
        monkeypatch.setattr(state, "_saved", {})
        monkeypatch.setattr(state, "dirty", {})
        monkeypatch.setattr(state, "_cache", {})
        monkeypatch.setattr(state, "_indexed", -1)
    yield out
    for table in tables:
        table.data.clear()


def _tables():
    return [state.table for state in rolling.STATES.values()] + [
        rolling.user_top_table,
        rolling.clock_table,
    ]


def test_panes_windows_and_expiry(sent):
    state = rolling.STATES["item"]
    t0 = 1_700_000_040.0  # a multiple of 60
    state.put(2, "a", t0, [1, 0.5, 1, 0.1], t0 + 5)
    state.put(2, "a", t0, [1, 0.25, 0, 0.3], t0 + 30)
    state.put(1, "b", t0 + 240, [1, 0.9, 0, 0.2], t0 + 250)
    # one changelog message per write, to the events' partition, keyed (id, pane window)
    assert [(p, k) for p, k, _ in sent] == [
        (2, ("a", (t0, t0 + 59.9))),
        (2, ("a", (t0, t0 + 59.9))),
        (1, ("b", (t0 + 240, t0 + 299.9))),
    ]
    assert sent[1][2] == [2, 0.75, 1, 0.4]
    assert state.dirty == {"a": t0 + 30, "b": t0 + 250}
    start, end, totals = state.totals("5m")
    assert (start, end) == (t0, t0 + 300)
    assert totals == {"a": [2, 0.75, 1, 0.4], "b": [1, 0.9, 0, 0.2]}
    assert state.key_total("a", start, end) == [2, 0.75, 1, 0.4]
    # a later event moves the 5-minute window past a's pane; the hour still holds it
    state.put(0, "c", t0 + 400, [1, 0.1, 0, 0.1], t0 + 400)
    _, _, totals = state.totals("5m", max_age_s=0)
    assert set(totals) == {"b", "c"}
    assert set(state.totals("1h", max_age_s=0)[2]) == {"a", "b", "c"}
    # panes older than the longest window (+ a step) are dropped
    state.put(0, "c", t0 + 4000, [1, 0.1, 0, 0.1], t0 + 4000)
    assert state.sweep() == 2  # a's pane and b's
    assert {key for key, _ in state.table.data} == {"c"}


def test_idle_users_are_forgotten(sent):
    table = rolling.user_top_table
    rolling.table_put(table, 3, b"old", {"t": 1000.0, "items": {"i": [0.5, 1, 1000.0]}})
    rolling.table_put(table, 1, b"new", {"t": 1000.0 + rolling.USER_RETAIN_S, "items": {}})
    sent.clear()
    assert rolling.sweep_users(1000.0 + rolling.USER_RETAIN_S + 1) == 1
    assert set(table.data) == {b"new"}
    assert sent == [(3, b"old", None)]  # a tombstone in the user's partition


def test_key_total_sees_panes_recovered_behind_its_index(sent):
    state = rolling.STATES["category"]
    t0 = 1_700_000_040.0
    state.put(0, "x", t0, [1, 0.5, 1, 0.1], t0)
    assert state.key_total("x", t0, t0 + 300) == [1, 0.5, 1, 0.1]  # index built
    state.put(0, "x", t0 + 60, [1, 0.25, 0, 0.3], t0 + 60)  # index kept up to date
    assert state.key_total("x", t0, t0 + 300) == [2, 0.75, 1, 0.4]
    # a pane that arrives without put(): what table recovery from the changelog does
    state.table.data[state.pane_key("x", t0 + 120)] = [3, 0.75, 0, 0.3]
    assert state.key_total("x", t0, t0 + 300) == [5, 1.5, 1, 0.7]
    assert state.key_total("x", t0 + 60, t0 + 120) == [1, 0.25, 0, 0.3]  # [start, end)
    assert state.key_total("nobody", t0, t0 + 300) is None


def test_roll_batch_sums_per_pane_and_packs_rekeyed_contributions(sent, monkeypatch):
    """Score records → user panes (in the record's partition) and item/category
    contributions summed per (id, pane), one message per destination partition."""
    import orjson

    sent: list[tuple[str, bytes | None, bytes | None, int]] = []
    monkeypatch.setattr(
        rolling.output,
        "send",
        lambda topic, value, key=None, partition=-1: sent.append((topic, value, key, partition)),
    )
    for table in _tables():
        table.data.clear()
    t0 = 1_700_000_040.0

    def rec(user, item, ts, importance, p, category="c1"):
        return {
            "user_id": user,
            "item_id": item,
            "ts": ts,
            "importance": importance,
            "p": p,
            "category_id": category,
        }

    # a training record (an example kept at label time) counts as kept in the pane of
    # its own event time, and not as an event
    kept = {**rec("u1", "i1", t0 + 1, 0.5, 0.1), "label": 0, "label_source": "window_closed"}
    rolling.roll_batch(
        [
            (1, rec("u1", "i1", t0 + 1, 0.5, 0.1)),
            (1, rec("u1", "i1", t0 + 2, 0.25, 0.3)),
            (2, rec("u2", "i2", t0 + 70, 1.0, 0.2)),
            (1, kept, t0 + 200),
        ]
    )
    user = rolling.STATES["user"]
    assert user.table.data[user.pane_key("u1", t0)] == [2, 0.75, 1, pytest.approx(0.4)]
    assert user.table.data[user.pane_key("u2", t0 + 60)] == [1, 1.0, 0, 0.2]
    rows = {}
    for topic, value, key, partition in sent:
        if topic.endswith("rolling-by-item") or topic.endswith("rolling-by-category"):
            assert key is None
            for row in orjson.loads(value)["rows"]:
                assert partition == partition_for(row[0].encode(), rolling.settings.partitions)
                rows[(topic.rsplit("-", 1)[1], row[0], row[1])] = row[2:]
    # [latest ts, *delta, latest clock]: without a clock, a record's clock is its ts
    assert rows == {
        ("item", "i1", t0): [t0 + 2, 2, 0.75, 1, pytest.approx(0.4), t0 + 200],
        ("item", "i2", t0 + 60): [t0 + 70, 1, 1.0, 0, 0.2, t0 + 70],
        ("category", "c1", t0): [t0 + 2, 2, 0.75, 1, pytest.approx(0.4), t0 + 200],
        ("category", "c1", t0 + 60): [t0 + 70, 1, 1.0, 0, 0.2, t0 + 70],
    }
    for table in _tables():
        table.data.clear()


def _record(user, item, ts, importance=0.5):
    return {
        "user_id": user,
        "item_id": item,
        "ts": ts,
        "importance": importance,
        "p": 0.1,
        "category_id": "c",
    }


def test_a_far_future_event_does_not_move_the_window(sent, monkeypatch):
    """Score records come with their partition's event-time clock: a far-future record
    lands in its own future pane, but every table's window, pane retention and user
    sweep stay at the clock (issue 9: "/api/top/items showed only the attacker's item")."""
    import orjson

    raw: list = []
    monkeypatch.setattr(rolling.output, "send", lambda t, v, k=None, p=-1: raw.append((t, v)))
    t0 = 1_700_000_040.0
    clock = t0 + 100
    batch = [(p % 4, _record(f"u{p}", f"i{p % 5}", t0 + p), clock) for p in range(100)]
    future = t0 + 20 * 3600
    batch.append((1, _record("attacker", "attacker-item", future, 1.0), clock))
    rolling.roll_batch(batch)
    state = rolling.STATES["user"]
    assert state.current_time() == clock  # not the attacker's ts
    start, end, totals = state.totals("1h", max_age_s=0)
    assert start <= clock < end
    assert "attacker" not in totals and len(totals) == 100
    assert state.pane_key("attacker", rolling.pane_start(future, 60)) in state.table.data
    assert state.dirty["attacker"] == future  # published as of its own time
    # nothing recent is swept away, and no user is forgotten
    assert state.sweep() == 0
    assert rolling.sweep_users(state.current_time()) == 0
    # the item table, fed through the re-keying topic, stands at the clock too
    rekeyed = [v for t, v in raw if t.endswith("rolling-by-item")]
    assert {row[7] for v in rekeyed for row in orjson.loads(v)["rows"]} == {clock}
    items = rolling.STATES["item"]
    for value in rekeyed:
        for key, pane, ts, delta, row_clock in rolling.unpack(value):
            items.put(0, key, pane, delta, ts, row_clock)
    assert items.current_time() == clock
    assert sorted(items.totals("1h", max_age_s=0)[2]) == ["i0", "i1", "i2", "i3", "i4"]
    # the attacker's item is in its own future window only
    assert items.key_total("attacker-item", *rolling.window_bounds(future, 3600, 60))
    # the user table saved its partitions' clocks: after a restart it stands there again
    assert {k: v for k, v in rolling.clock_table.data.items() if k.startswith("user:")} == {
        f"user:{p}": clock for p in range(4)
    }
    state.now = 0.0
    assert state.current_time() == clock


def test_recovered_tables_stand_at_a_robust_time(sent):
    """After a restart (tables recovered, no record yet), a few keys with far-future
    panes do not set the window either."""
    state = rolling.STATES["item"]
    t0 = 1_700_000_040.0
    data = state.table.data
    for i in range(100):
        data[state.pane_key(f"i{i}", t0 + 60 * (i % 3))] = [1, 0.5, 0, 0.1]
    for i in range(5):  # fewer keys than IMPORTANCE_CLOCK_USERS (32)
        data[state.pane_key(f"future{i}", t0 + 20 * 3600)] = [1, 1.0, 0, 0.1]
    state.now = 0.0
    assert state.current_time() == t0 + 120
    _, _, totals = state.totals("1h", max_age_s=0)
    assert not any(key.startswith("future") for key in totals)
