"""Delayed labels by attribution of conversions to earlier exposures."""

from __future__ import annotations

import itertools

import orjson
import pytest

from models.events import validate_event
from models.labels import LabelAttribution

TS = 1_511_658_000.0
WINDOW = 1800.0
_ids = itertools.count()


def ev(etype: str, user=1, item=9, ts: float = TS, **extra):
    return validate_event(
        {
            "event_id": f"e{next(_ids)}",
            "user_id": user,
            "item_id": item,
            "type": etype,
            "ts": ts,
            **extra,
        },
        now=float("inf"),
    )


def labels_of(resolved):
    return sorted((r.event.event_id, r.label, r.reason) for r in resolved)


@pytest.fixture
def store():
    return {}


@pytest.fixture
def attr(store):
    return LabelAttribution(store, window_s=WINDOW)


@pytest.mark.parametrize("conversion", ["cart", "fav", "purchase", "buy", "addtocart"])
def test_conversion_of_same_item_by_same_user_is_positive(attr, conversion):
    view = ev("view")
    assert attr.track(0, view, {"importance": 0.7, "keep": True}) == []
    assert attr.pending(0) == 1
    out = attr.convert(0, ev(conversion, ts=TS + 600))
    assert len(out) == 1
    r = out[0]
    assert (r.label, r.reason) == (1, "converted")
    assert r.event == view  # the exposure comes back as it was tracked
    assert r.info == {"importance": 0.7, "keep": True}
    assert attr.pending(0) == 0
    assert attr.resolved == 1 and attr.evicted == 0


def pending_of(store, user: str) -> list[dict]:
    """The user's pending exposures in the store, oldest first."""
    return sorted((v for v in store.values() if v["u"] == user), key=lambda v: v["ts"])


def users_in(store) -> set[str]:
    return {v["u"] for v in store.values()}


def test_all_pending_exposures_of_the_item_convert(attr, store):
    views = [ev("view", ts=TS), ev("click", ts=TS + 10), ev("impression", ts=TS + 20)]
    other_item = ev("view", item=10, ts=TS + 30)
    for v in [*views, other_item]:
        attr.track(0, v, {})
    out = attr.convert(0, ev("purchase", ts=TS + 100))
    assert labels_of(out) == sorted((v.event_id, 1, "converted") for v in views)
    assert attr.pending(0) == 1
    assert [p["item"] for p in pending_of(store, "1")] == ["10"]


def test_conversion_of_another_item_or_by_another_user_is_not_attributed(attr, store):
    view = ev("view", user=1, item=9)
    attr.track(0, view, {})
    assert attr.convert(0, ev("cart", user=1, item=10, ts=TS + 60)) == []
    assert attr.convert(0, ev("cart", user=2, item=9, ts=TS + 60)) == []
    assert attr.pending(0) == 1
    assert pending_of(store, "1")[0]["event"]["event_id"] == view.event_id


def test_ids_compare_as_strings(attr):
    # An integer id and its decimal string are the same user and item.
    attr.track(0, ev("view", user=5, item=77), {})
    out = attr.convert(0, ev("cart", user="5", item="77", ts=TS + 1))
    assert [r.label for r in out] == [1]


def test_negative_when_watermark_passes_ts_plus_window(attr):
    view = ev("view")
    attr.track(0, view, {"x": 1})
    assert attr.expire(0, watermark=TS + WINDOW - 1) == []
    assert attr.expire(0, watermark=TS + WINDOW) == []  # the window is closed interval
    out = attr.expire(0, watermark=TS + WINDOW + 0.001)
    assert labels_of(out) == [(view.event_id, 0, "window_closed")]
    assert out[0].info == {"x": 1}
    assert attr.pending(0) == 0
    assert attr.expire(0, watermark=TS + 10 * WINDOW) == []


def test_conversion_at_the_window_edge_counts(attr):
    view = ev("view")
    attr.track(0, view, {})
    out = attr.convert(0, ev("purchase", ts=TS + WINDOW))
    assert [r.label for r in out] == [1]


def test_conversion_after_the_window_does_not_make_it_positive(attr):
    view = ev("view")
    attr.track(0, view, {})
    # A late conversion, even before any expiry ran, is outside the window.
    assert attr.convert(0, ev("purchase", ts=TS + WINDOW + 1)) == []
    out = attr.expire(0, watermark=TS + WINDOW + 1)
    assert labels_of(out) == [(view.event_id, 0, "window_closed")]
    # Once expired, a conversion finds nothing.
    assert attr.convert(0, ev("purchase", ts=TS + WINDOW + 2)) == []


def test_conversion_before_the_exposure_does_not_make_it_positive(attr):
    # Out-of-order arrival: the exposure (later in event time) was tracked first, then
    # a purchase that happened before it arrives. The view did not lead to the purchase.
    view = ev("view", ts=TS + 600)
    attr.track(0, view, {})
    assert attr.convert(0, ev("purchase", ts=TS)) == []
    assert attr.pending(0) == 1


def test_expiry_only_closes_exposures_whose_window_closed(attr):
    old = ev("view", user=1, ts=TS)
    new = ev("view", user=1, item=10, ts=TS + 1000)
    other = ev("view", user=2, ts=TS + 500)
    for e in (old, new, other):
        attr.track(0, e, {})
    out = attr.expire(0, watermark=TS + WINDOW + 1)
    assert labels_of(out) == [(old.event_id, 0, "window_closed")]
    assert attr.pending(0) == 2
    out = attr.expire(0, watermark=TS + 500 + WINDOW + 1)
    assert labels_of(out) == [(other.event_id, 0, "window_closed")]
    out = attr.expire(0, watermark=TS + 1000 + WINDOW + 1)
    assert labels_of(out) == [(new.event_id, 0, "window_closed")]
    assert attr.pending(0) == 0


def test_empty_users_leave_the_store(attr, store):
    attr.track(0, ev("view", user=1), {})
    attr.track(0, ev("view", user=2), {})
    attr.convert(0, ev("cart", user=1, ts=TS + 1))
    assert users_in(store) == {"2"}
    attr.expire(0, watermark=TS + WINDOW + 1)
    assert store == {}


def test_per_user_cap_evicts_oldest_as_negative(store):
    attr = LabelAttribution(store, window_s=WINDOW, max_per_user=3)
    views = [ev("view", item=i, ts=TS + i) for i in range(5)]
    evicted = []
    for v in views:
        evicted.extend(attr.track(0, v, {"i": v.item_id}))
    assert labels_of(evicted) == sorted((v.event_id, 0, "evicted") for v in views[:2])
    assert [r.info for r in evicted] == [{"i": "0"}, {"i": "1"}]  # oldest first
    assert attr.pending(0) == 3
    assert [p["item"] for p in pending_of(store, "1")] == ["2", "3", "4"]
    assert attr.evicted == 2
    # Another user is unaffected by this user's cap.
    other = ev("view", user=2)
    assert attr.track(0, other, {}) == []
    # The evicted exposures can no longer turn positive; the kept ones can.
    assert attr.convert(0, ev("cart", item=0, ts=TS + 10)) == []
    assert [r.label for r in attr.convert(0, ev("cart", item=4, ts=TS + 10))] == [1]
    # Stale heap entries of evicted exposures do not resolve anything twice.
    out = attr.expire(0, watermark=TS + 10 * WINDOW)
    expected = [views[2], views[3], other]
    assert labels_of(out) == sorted((v.event_id, 0, "window_closed") for v in expected)
    assert attr.pending(0) == 0
    assert attr.resolved == 2 + 1 + 3


def test_global_cap_evicts_oldest_across_users(store):
    attr = LabelAttribution(store, window_s=WINDOW, max_pending=3)
    views = [ev("view", user=u, ts=TS + 10 * u) for u in range(6)]
    evicted = []
    for v in views:
        evicted.extend(attr.track(0, v, {}))
        assert attr.pending(0) <= 3
    assert labels_of(evicted) == sorted((v.event_id, 0, "evicted") for v in views[:3])
    assert attr.evicted == 3
    assert users_in(store) == {"3", "4", "5"}
    # The bound is per partition.
    assert attr.track(1, ev("view", user=100), {}) == []
    assert attr.pending(0) == 3 and attr.pending(1) == 1
    assert attr.pending() == 4


def test_global_cap_skips_exposures_already_converted(store):
    attr = LabelAttribution(store, window_s=WINDOW, max_pending=2)
    first = ev("view", user=1, ts=TS)
    attr.track(0, first, {})
    attr.convert(0, ev("cart", user=1, ts=TS + 1))  # leaves a stale heap entry
    second = ev("view", user=2, ts=TS + 2)
    third = ev("view", user=3, ts=TS + 3)
    attr.track(0, second, {})
    assert attr.track(0, third, {}) == []  # two pending: under the cap
    fourth = ev("view", user=4, ts=TS + 4)
    out = attr.track(0, fourth, {})
    assert labels_of(out) == [(second.event_id, 0, "evicted")]
    assert attr.pending(0) == 2


def test_rebuild_after_restart(store):
    before = LabelAttribution(store, window_s=WINDOW)
    a = ev("view", user=1, ts=TS)
    b = ev("click", user=2, item=3, ts=TS + 100, position=2, context={"d": "ios"})
    c = ev("view", user=3, ts=TS + 5000)
    before.track(0, a, {"importance": 0.1})
    before.track(0, b, {"importance": 0.2})
    before.track(1, c, {})
    # The store (a changelog table in the worker) is all that survives; it is plain
    # JSON-safe data.
    persisted = orjson.loads(orjson.dumps(store))

    after = LabelAttribution(persisted, window_s=WINDOW)
    assert after.pending(0) == 2
    assert after.pending(1) == 1
    out = after.expire(0, watermark=TS + 100 + WINDOW + 1)
    assert labels_of(out) == sorted(
        [(a.event_id, 0, "window_closed"), (b.event_id, 0, "window_closed")]
    )
    # The exposure comes back with every field it had, and its recorded info.
    back = {r.event.event_id: r for r in out}
    assert back[b.event_id].event == b
    assert back[b.event_id].info == {"importance": 0.2}
    assert after.pending(0) == 0
    # Partition 1 is untouched by partition 0's expiry and still converts.
    assert [r.label for r in after.convert(1, ev("buy", user=3, ts=TS + 5001))] == [1]


def test_forget_partition_rebuilds_from_the_store(attr, store):
    attr.track(0, ev("view", user=1, ts=TS), {})
    attr.track(0, ev("view", user=2, ts=TS + 100), {})
    attr.track(1, ev("view", user=3, ts=TS), {})
    assert attr.pending() == 3
    attr.forget_partition(0)
    assert attr.pending() == 1  # only partition 1 is indexed now
    # Another worker could have changed partition 0's entries meanwhile (e.g. resolved
    # user 1); on next use the index is rebuilt from the store.
    for key in [k for k, v in store.items() if v["u"] == "1"]:
        del store[key]
    assert attr.pending(0) == 1
    out = attr.expire(0, watermark=TS + 100 + WINDOW + 1)
    assert [r.event.user_id for r in out] == ["2"]
    assert attr.pending(1) == 1
    attr.forget_partition(7)  # unknown partition: no error


def test_explicit_fields_survive_the_round_trip(attr):
    view = ev("view", category_id=4, price=3.5, query="shoes", session_id="s", propensity=0.3)
    attr.track(0, view, {})
    (r,) = attr.convert(0, ev("cart", ts=TS + 5))
    assert r.event == view


def test_each_exposure_is_written_once_and_alone():
    """A user's 60th exposure writes one small entry, not the user's whole list."""

    class Recording(dict):
        def __init__(self):
            super().__init__()
            self.sizes: list[int] = []

        def __setitem__(self, key, value):
            self.sizes.append(len(orjson.dumps(value)))
            super().__setitem__(key, value)

    store = Recording()
    attr = LabelAttribution(store, window_s=WINDOW)
    for i in range(60):
        attr.track(0, ev("view", user=1, item=i, ts=TS + i), {"p": 0.1, "keep": False})
    assert len(store.sizes) == 60
    assert max(store.sizes) < 2 * min(store.sizes)  # no growth with the user's backlog
    assert attr.pending(0) == 60


def test_entries_of_earlier_versions_are_migrated():
    """One entry per user with a "pend" list (earlier versions) becomes one per exposure."""
    a, b = ev("view", user=1, item=5, ts=TS), ev("click", user=1, item=6, ts=TS + 10)
    old = {
        "1": {
            "p": 0,
            "pend": [
                {"ts": e.ts, "item": e.item_id, "event": e.to_dict(), "info": {"p": 0.2}}
                for e in (a, b)
            ],
        }
    }
    attr = LabelAttribution(old, window_s=WINDOW)
    assert attr.pending(0) == 2
    assert "1" not in old and users_in(old) == {"1"}
    (r,) = attr.convert(0, ev("cart", user=1, item=6, ts=TS + 20))
    assert r.event == b and r.label == 1 and r.info == {"p": 0.2}
    assert labels_of(attr.expire(0, TS + WINDOW + 1)) == [(a.event_id, 0, "window_closed")]
    assert old == {}


# -- closing by a user's own event time ---------------------------------------------------


def test_a_users_own_later_time_closes_only_that_users_windows(attr):
    mine = [ev("view", user=1, item=i, ts=TS + 100 * i) for i in range(3)]
    theirs = ev("view", user=2, ts=TS)
    for e in [*mine, theirs]:
        attr.track(0, e, {})
    # user 1's clock says 20 h later: its own exposures' windows closed, user 2's did not
    out = attr.expire_user(0, "1", TS + 20 * 3600)
    assert labels_of(out) == sorted((e.event_id, 0, "window_closed") for e in mine)
    assert attr.pending(0) == 1
    assert [r.label for r in attr.convert(0, ev("cart", user=2, ts=TS + 60))] == [1]


def test_a_users_own_time_closes_in_deadline_order_up_to_its_time(attr):
    views = [ev("view", user=1, item=i, ts=TS + 100 * i) for i in range(4)]
    for v in reversed(views):  # arrival order does not matter
        attr.track(0, v, {})
    assert attr.expire_user(0, "1", TS + WINDOW) == []  # the window is a closed interval
    assert attr.expire_user(0, "2", TS + 10 * WINDOW) == []  # another user: nothing
    out = attr.expire_user(0, "1", TS + 150 + WINDOW)
    assert [r.event.event_id for r in out] == [views[0].event_id, views[1].event_id]
    assert attr.pending(0) == 2
    # the partition's expiry does not resolve them a second time
    out = attr.expire(0, watermark=TS + 10 * WINDOW)
    assert labels_of(out) == sorted((v.event_id, 0, "window_closed") for v in views[2:])
    assert attr.resolved == 4


def test_closing_by_own_time_after_a_restart(store):
    before = LabelAttribution(store, window_s=WINDOW)
    a, b = ev("view", user=1, ts=TS + 10), ev("view", user=1, item=8, ts=TS)
    before.track(0, a, {})
    before.track(0, b, {})
    after = LabelAttribution(orjson.loads(orjson.dumps(store)), window_s=WINDOW)
    out = after.expire_user(0, "1", TS + 5 + WINDOW)
    assert labels_of(out) == [(b.event_id, 0, "window_closed")]
    assert after.pending(0) == 1


def test_per_user_cap_evicts_the_earliest_in_event_time(store):
    """The oldest exposure is the earliest in event time, also when it arrived late
    (the same choice before and after a rebuild from the store)."""
    attr = LabelAttribution(store, window_s=WINDOW, max_per_user=2)
    late_arrival = ev("view", user=1, item=0, ts=TS)
    attr.track(0, ev("view", user=1, item=1, ts=TS + 10), {})
    attr.track(0, late_arrival, {})
    out = attr.track(0, ev("view", user=1, item=2, ts=TS + 20), {})
    assert labels_of(out) == [(late_arrival.event_id, 0, "evicted")]


def test_heap_stays_bounded_when_the_partition_clock_stands_still(attr):
    """Exposures resolved by conversions or their users' own times leave heap entries;
    with the partition's clock stuck (too few users to agree), they are compacted away
    instead of piling up."""
    for i in range(20_000):
        user = i % 50
        view = ev("view", user=user, item=i, ts=TS + i)
        attr.track(0, view, {})
        attr.expire_user(0, str(user), TS + i)
        if i % 2:
            attr.convert(0, ev("cart", user=user, item=i, ts=TS + i + 1))
    pending = attr.pending(0)
    assert pending < 10_000
    assert len(attr._heaps[0]) <= 2 * pending + 1024
