"""The synthetic event generator of the memory benchmark."""

from __future__ import annotations

from collections import Counter

import pytest

from models.events import CONVERSION_TYPES, validate_event
from stream_app.bench.synthetic import synthetic_events

N = 20_000
SMALL = {"n_users": 5_000, "n_items": 2_000, "n_categories": 50}


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(synthetic_events(N, seed=3, **SMALL))


def test_deterministic_for_a_seed(events: list[dict]) -> None:
    assert list(synthetic_events(N, seed=3, **SMALL)) == events
    other = list(synthetic_events(N, seed=4, **SMALL))
    assert [e["item_id"] for e in other] != [e["item_id"] for e in events]


def test_count_and_unique_event_ids(events: list[dict]) -> None:
    assert len(events) == N
    assert len({e["event_id"] for e in events}) == N
    assert list(synthetic_events(0)) == []
    with pytest.raises(ValueError):
        list(synthetic_events(-1))


def test_ids_in_range(events: list[dict]) -> None:
    assert all(0 <= e["user_id"] < SMALL["n_users"] for e in events)
    assert all(0 <= e["item_id"] < SMALL["n_items"] for e in events)
    assert all(0 <= e["category_id"] < SMALL["n_categories"] for e in events)
    # An item always belongs to the same category.
    category_of: dict[int, int] = {}
    for e in events:
        assert category_of.setdefault(e["item_id"], e["category_id"]) == e["category_id"]


def test_every_event_is_valid(events: list[dict]) -> None:
    for e in events:
        ev = validate_event(e, now=float("inf"))
        assert ev.event_id == e["event_id"]
        assert ev.type in {"view", "cart", "fav", "purchase"}


def test_timestamps_never_decrease(events: list[dict]) -> None:
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    assert ts[-1] > ts[0]


def test_item_popularity_is_long_tailed(events: list[dict]) -> None:
    counts = Counter(e["item_id"] for e in events)
    ranked = [c for _, c in counts.most_common()]
    top_1pct = sum(ranked[: max(1, SMALL["n_items"] // 100)])
    assert top_1pct / N > 0.2  # 1 % of the items draw a fifth of the events or more
    assert sum(1 for c in ranked if c == 1) > len(ranked) / 10  # and many appear once


def test_users_mostly_new_with_a_few_heavy_returners() -> None:
    evs = list(synthetic_events(N, seed=1, n_users=1_000_000))
    per_user = Counter(e["user_id"] for e in evs)
    assert len(per_user) > N / 3  # most sessions bring a new user
    assert per_user.most_common(1)[0][1] >= 10  # but some users come back a lot


def test_funnels_convert_items_the_user_viewed(events: list[dict]) -> None:
    types = Counter(e["type"] for e in events)
    assert types["view"] > 0.8 * N
    assert types["cart"] and types["fav"] and types["purchase"]
    viewed: set[tuple[int, int]] = set()
    for e in events:
        if e["type"] == "view":
            viewed.add((e["user_id"], e["item_id"]))
        else:
            assert e["type"] in {"cart", "fav", "purchase"}
            assert e["type"] in CONVERSION_TYPES
            assert (e["user_id"], e["item_id"]) in viewed
