"""Rank mapping of blended scores, and the blend itself."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.importance import DEFAULT_WEIGHTS, RollingRank, blend


def brute_force_rank(window_values: list[float], x: float) -> float:
    n = len(window_values)
    if n == 0:
        return 0.5
    below = sum(v < x for v in window_values)
    equal = sum(v == x for v in window_values)
    return (below + 0.5 * equal) / n


def check_against_brute_force(values, window: int) -> None:
    rank = RollingRank(window)
    history: list[float] = []
    for i, x in enumerate(values):
        expected = brute_force_rank(history[-window:], x)
        got = rank.update(x)
        assert got == pytest.approx(expected, abs=1e-12), (i, x)
        assert 0.0 <= got <= 1.0
        history.append(x)
        assert len(rank) == min(len(history), window)


@pytest.mark.parametrize("window", [1, 2, 7, 64, 500])
def test_matches_brute_force_on_random_streams_with_ties(window):
    rng = np.random.default_rng(window)
    continuous = rng.uniform(size=1500).tolist()
    ties = rng.integers(0, 6, size=1500).astype(float).tolist()  # heavy ties
    mixed = [round(v, 1) for v in rng.normal(size=1500)]
    for values in (continuous, ties, mixed):
        check_against_brute_force(values, window)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([0.0, 0.25, 0.5, 1.0]),
            st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
        ),
        max_size=120,
    ),
    st.integers(min_value=1, max_value=20),
)
def test_matches_brute_force_property(values, window):
    check_against_brute_force(values, window)


def test_rank_does_not_add():
    rank = RollingRank(window=4)
    for v in (1.0, 2.0, 3.0):
        rank.update(v)
    assert rank.rank(2.0) == 0.5
    assert rank.rank(10.0) == 1.0
    assert rank.rank(-1.0) == 0.0
    assert len(rank) == 3


def test_empty_window_gives_half():
    assert RollingRank(window=10).rank(123.0) == 0.5
    assert RollingRank(window=10).update(-5.0) == 0.5


def test_window_eviction():
    rank = RollingRank(window=3)
    for v in (100.0, 100.0, 100.0):
        rank.update(v)
    assert rank.rank(50.0) == 0.0
    for v in (0.0, 0.0, 0.0):
        rank.update(v)
    # All three 100s are gone: 50 is now above everything in the window.
    assert rank.rank(50.0) == 1.0
    assert rank.rank(100.0) == 1.0
    assert len(rank) == 3
    assert sorted(rank._sorted) == rank._sorted == [0.0, 0.0, 0.0]


def test_eviction_is_by_arrival_not_by_value():
    rank = RollingRank(window=3)
    for v in (5.0, 1.0, 9.0, 3.0):  # 5.0 (the oldest) leaves, not 1.0 or 9.0
        rank.update(v)
    assert rank.to_state()["values"] == [1.0, 9.0, 3.0]
    assert rank.rank(4.0) == pytest.approx(2 / 3)


def test_state_round_trip():
    rng = np.random.default_rng(11)
    a = RollingRank(window=50)
    for v in rng.integers(0, 10, size=200).astype(float):
        a.update(float(v))
    b = RollingRank(window=50)
    b.load_state(orjson.loads(orjson.dumps(a.to_state())))
    assert len(b) == len(a) == 50
    for v in rng.integers(0, 12, size=300).astype(float):
        assert b.update(float(v)) == a.update(float(v))
    assert b.to_state() == a.to_state()


def test_load_state_keeps_the_newest_values_of_a_bigger_window():
    big = RollingRank(window=10)
    for v in range(10):
        big.update(float(v))
    small = RollingRank(window=4)
    small.load_state(big.to_state())
    assert small.to_state()["values"] == [6.0, 7.0, 8.0, 9.0]
    assert small.rank(7.5) == 0.5
    small.update(10.0)  # evicts 6.0, the oldest
    assert small.to_state()["values"] == [7.0, 8.0, 9.0, 10.0]


def test_rank_of_a_uniform_stream_is_roughly_uniform():
    rng = np.random.default_rng(12)
    rank = RollingRank(window=2048)
    out = np.array([rank.update(float(v)) for v in rng.exponential(size=20_000)])[2048:]
    hist, _ = np.histogram(out, bins=10, range=(0.0, 1.0))
    assert hist.min() > 0.8 * len(out) / 10
    assert hist.max() < 1.2 * len(out) / 10


# --------------------------------------------------------------------------------------
# Blend
# --------------------------------------------------------------------------------------


def test_default_weights():
    assert dict(DEFAULT_WEIGHTS) == {"logistic": 0.5, "knn": 0.3, "behavior": 0.2}
    scores = {"logistic": 1.0, "knn": 0.0, "behavior": 0.0}
    assert blend(scores) == pytest.approx(0.5)
    assert blend({"logistic": 0.0, "knn": 1.0, "behavior": 0.0}) == pytest.approx(0.3)
    assert blend({"logistic": 0.0, "knn": 0.0, "behavior": 1.0}) == pytest.approx(0.2)
    assert blend({"logistic": 0.2, "knn": 0.4, "behavior": 0.6}) == pytest.approx(
        0.5 * 0.2 + 0.3 * 0.4 + 0.2 * 0.6
    )


def test_blend_normalises_weights_and_ignores_unweighted_scores():
    scores = {"a": 1.0, "b": 0.0, "extra": 123.0}
    assert blend(scores, {"a": 3.0, "b": 1.0}) == pytest.approx(0.75)
    assert blend(scores, {"a": 30.0, "b": 10.0}) == pytest.approx(0.75)
    assert blend({"a": 0.4}, {"a": 2.0}) == pytest.approx(0.4)
    with pytest.raises(KeyError):
        blend({"a": 1.0}, {"a": 1.0, "missing": 1.0})


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {name: st.floats(min_value=0.0, max_value=1.0) for name in ("logistic", "knn", "behavior")}
    ),
    st.fixed_dictionaries(
        {
            name: st.floats(min_value=0.01, max_value=10.0)
            for name in ("logistic", "knn", "behavior")
        }
    ),
)
def test_blend_is_a_weighted_mean(scores, weights):
    value = blend(scores, weights)
    assert min(scores.values()) - 1e-12 <= value <= max(scores.values()) + 1e-12
    if len(set(scores.values())) == 1:
        assert value == pytest.approx(scores["knn"])
