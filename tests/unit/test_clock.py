"""The partition's event-time clock (models/clock.py): a few users, or a wrong wall clock,
cannot move it; it is deterministic, monotone and survives a snapshot."""

from __future__ import annotations

import itertools
import random

import orjson
import pytest

from models.clock import EventClock, kth_latest

T0 = 1_511_658_000.0
WALL = 1_760_000_000.0  # "now" for the cap: years after the 2017 events


def clock(**kwargs) -> EventClock:
    return EventClock(now=lambda: WALL, **kwargs)


def test_fewer_than_k_users_give_the_smallest_latest_time():
    c = clock(users=3, recent_users=8)
    c.observe("a", T0 + 10)
    assert c.time == T0 + 10
    c.observe("b", T0 + 500)
    assert c.time == T0 + 10  # b alone cannot move it
    c.observe("a", T0 + 1000)
    assert c.time == T0 + 500  # a's latest is now 1000: the smallest is b's
    c.observe("c", T0 + 2000)
    assert c.time == T0 + 500  # three users: the 3rd largest of 1000, 500, 2000


def test_kth_largest_of_the_recent_users_and_never_back():
    c = clock(users=2, recent_users=4)
    for user, ts in [("a", T0), ("b", T0 + 10), ("c", T0 + 20), ("d", T0 + 30)]:
        c.observe(user, ts)
    assert c.time == T0 + 20
    c.observe("e", T0 - 1000)  # a late user: evicts the least recent (a) and stays low
    assert len(c) == 4
    assert c.time == T0 + 20  # 2nd largest of 10, 20, 30, -1000 is 20: unchanged
    c.observe("b", T0 - 5000)  # out of order: b's latest stays T0 + 10
    assert c.time == T0 + 20


def test_fewer_than_k_users_far_ahead_cannot_move_it():
    """The issue's attack: 40 users with ts = now + 20 h over 4 partitions (about 10 each)
    among 50 honest users per partition."""
    rng = random.Random(1)
    c = clock()  # defaults: K=32 of the last 128 users
    honest = [f"u{i}" for i in range(50)]
    for i in range(2000):
        c.observe(rng.choice(honest), T0 + i)
    before = c.time
    assert T0 + 1900 < before <= T0 + 2000
    for i in range(10):
        c.observe(f"attacker-{i}", WALL + 20 * 3600)
    # The attackers can push it up to a time 22 honest users reached (the 32nd largest
    # is now the 22nd largest honest one), never past the honest users' own times.
    assert before <= c.time <= T0 + 1999
    # the honest users go on; the clock follows them, not the attackers
    for i in range(2000, 2100):
        c.observe(rng.choice(honest), T0 + i)
    assert T0 + 2000 < c.time <= T0 + 2100


def test_k_users_agreeing_move_it():
    c = clock(users=4, recent_users=16)
    for i in range(10):
        c.observe(f"u{i}", T0)
    for i in range(3):
        c.observe(f"v{i}", T0 + 3600)
    assert c.time == T0
    c.observe("v3", T0 + 3600)  # the 4th user at that time
    assert c.time == T0 + 3600


def test_cap_at_wall_clock_plus_skew_counts_the_event():
    now = [WALL]
    c = EventClock(users=1, recent_users=4, max_skew_s=300, now=lambda: now[0])
    assert c.observe("a", WALL + 100) == WALL + 100  # within the skew: as it is
    assert c.capped == 0
    assert c.observe("a", WALL + 20 * 3600) == WALL + 300  # counted as the cap
    assert (c.capped, c.last, c.time) == (1, WALL + 300, WALL + 300)
    now[0] += 3600  # the cap moves with the wall clock
    assert c.observe("b", WALL + 20 * 3600) == WALL + 3900


def test_a_worker_clock_hours_behind_only_slows_the_clock():
    """Live events, a worker whose wall clock is 3 hours slow: every event is capped and
    counted, the clock trails real event time by those hours, and nothing raises."""
    real = WALL
    c = EventClock(users=2, recent_users=16, max_skew_s=300, now=lambda: real - 3 * 3600)
    for i in range(100):
        assert c.observe(f"u{i % 10}", real + i) == real - 3 * 3600 + 300
    assert c.capped == 100
    assert c.time == real - 3 * 3600 + 300


def test_same_events_same_clock():
    rng = random.Random(3)
    events = [(f"u{rng.randint(0, 300)}", T0 + rng.uniform(0, 7200)) for _ in range(5000)]
    a, b = clock(), clock()
    ta = [(a.observe(u, ts), a.time) for u, ts in events]
    tb = [(b.observe(u, ts), b.time) for u, ts in events]
    assert ta == tb
    assert all(x[1] <= y[1] for x, y in itertools.pairwise(ta))  # monotone


def test_matches_a_direct_computation():
    """The incremental clock equals the definition recomputed from scratch per event."""
    rng = random.Random(4)
    k, m = 5, 20
    c = clock(users=k, recent_users=m)
    recent: dict[str, float] = {}
    expected = 0.0
    for _ in range(3000):
        user, ts = f"u{rng.randint(0, 60)}", T0 + rng.uniform(0, 1000)
        c.observe(user, ts)
        latest = max(recent.pop(user, ts), ts)
        recent[user] = latest  # most recent last
        while len(recent) > m:
            del recent[next(iter(recent))]
        expected = max(expected, kth_latest(recent.values(), k))
        assert c.time == expected


def test_state_round_trip_continues_the_same():
    rng = random.Random(5)
    events = [(f"u{rng.randint(0, 200)}", T0 + i + rng.uniform(-60, 60)) for i in range(3000)]
    a = clock()
    for user, ts in events[:2000]:
        a.observe(user, ts)
    b = clock()
    b.load_state(orjson.loads(orjson.dumps(a.to_state())))
    assert (b.time, b.capped, len(b)) == (a.time, a.capped, len(a))
    for user, ts in events[2000:]:
        assert b.observe(user, ts) == a.observe(user, ts)
        assert b.time == a.time


def test_load_keeps_the_most_recent_users_when_more_were_saved():
    big = clock(users=2, recent_users=100)
    for i in range(100):
        big.observe(f"u{i}", T0 + i)
    small = clock(users=2, recent_users=10)
    small.load_state(big.to_state())
    assert len(small) == 10
    small.observe("u99", T0 + 99)
    assert small.time == big.time


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"time": "soon", "capped": 0, "users": []},
        {"time": float("nan"), "capped": 0, "users": []},
        {"time": 0.0, "capped": -1, "users": []},
        {"time": 0.0, "capped": 0, "users": {"a": 1}},
        {"time": 0.0, "capped": 0, "users": [["a"]]},
        {"time": 0.0, "capped": 0, "users": [[1, 2.0]]},
        {"time": 0.0, "capped": 0, "users": [["a", "later"]]},
        {"time": 0.0, "capped": 0, "users": [["a", float("inf")]]},
        {"time": 0.0, "capped": 0, "users": [["x" * 2000, 1.0]]},
    ],
)
def test_load_rejects_garbage(state):
    c = clock()
    with pytest.raises((KeyError, TypeError, ValueError)):
        c.load_state(state)
    assert (c.time, len(c)) == (0.0, 0)  # nothing half-loaded


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"users": 0}, "clock_users"),
        ({"users": 200, "recent_users": 128}, "clock_users"),
        ({"recent_users": 0, "users": 1}, "clock_recent_users"),
        ({"recent_users": 100_000}, "clock_recent_users"),
        ({"max_skew_s": -1.0}, "clock_max_skew_s"),
        ({"max_skew_s": float("nan")}, "clock_max_skew_s"),
        ({"max_skew_s": float("inf")}, "clock_max_skew_s"),
    ],
)
def test_nonsense_settings_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EventClock(**kwargs)
