"""Hashed sparse features and the dense embedding."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from models.events import validate_event
from models.features import (
    EMBEDDING_DIM,
    TYPE_LEVEL,
    embed,
    feature_names,
    hashed_features,
    price_bucket,
)
from models.scorers.base import EventFeatures
from models.scorers.logistic import HashedLogistic

TS = 1_511_658_000  # 2017-11-26T01:00:00Z
NOW = 1_700_000_000.0


def event(**fields):
    base = {"user_id": 7, "item_id": "a1", "type": "pv", "ts": TS}
    return validate_event({**base, **fields}, now=NOW)


SAMPLE_EVENTS = [
    {"user_id": 1, "item_id": 2, "type": "pv", "ts": TS},
    {"user_id": "u-9", "item_id": "sku-9", "category_id": 44, "type": "buy", "ts": TS + 7200},
    {
        "user_id": 3,
        "item_id": 5,
        "type": "click",
        "ts": TS + 1,
        "position": 4,
        "price": 99.0,
        "context": {"device": "ios", "page": "home", "n": 3},
    },
]

_CHILD = """
import json, sys
from models.events import validate_event
from models.features import hashed_features, embed
events = json.loads(sys.argv[1])
out = []
for obj in events:
    ev = validate_event(obj, now=float("inf"))
    out.append({"sparse": sorted(hashed_features(ev, bits=20)), "dense": embed(ev).tolist()})
print(json.dumps(out))
"""


def _in_child(hashseed: str) -> list:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(SAMPLE_EVENTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout)


def test_hashing_is_deterministic_across_processes():
    here = [
        {
            "sparse": sorted(hashed_features(validate_event(o, now=NOW), bits=20)),
            "dense": embed(validate_event(o, now=NOW)).tolist(),
        }
        for o in SAMPLE_EVENTS
    ]
    first, second = _in_child("1"), _in_child("987654")
    assert first == here
    assert second == here
    # Python's own str hash does differ between those seeds, so the equality above is
    # not an accident of the seed.
    probe = "import sys; print(hash('u=1'))"
    h1 = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONHASHSEED": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    h2 = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONHASHSEED": "987654"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert h1 != h2


@pytest.mark.parametrize("bits", [4, 10, 18, 24])
def test_indices_within_bucket_range_and_values_are_one(bits):
    rng = np.random.default_rng(bits)
    for i in range(200):
        ev = event(
            user_id=int(rng.integers(1 << 40)),
            item_id=f"sku-{rng.integers(1 << 30)}",
            category_id=int(rng.integers(1000)),
            ts=TS + i * 97,
            position=int(rng.integers(1, 50)),
            price=float(rng.uniform(0, 1000)),
        )
        x = hashed_features(ev, bits=bits)
        assert x, "no features"
        assert all(isinstance(k, int) and 0 <= k < 2**bits for k in x)
        assert set(x.values()) == {1.0}
        assert len(x) <= len(feature_names(ev))


def test_hashed_features_are_the_hashed_names():
    ev = event(category_id=3, position=2, price=10.0)
    names = feature_names(ev)
    assert len(names) == len(set(names)) == 11
    x18 = hashed_features(ev, bits=18)
    x24 = hashed_features(ev, bits=24)
    # Fewer bits is the same hash, masked.
    assert {k & ((1 << 18) - 1) for k in x24} == set(x18)
    assert len(x24) == 11  # no collisions among 11 names in 2**24 buckets


def test_norm_is_sqrt_of_number_of_active_buckets():
    ev = event(category_id=3)
    x = hashed_features(ev, bits=24)
    feats = EventFeatures(x, embed(ev))
    assert HashedLogistic.norm(feats) == pytest.approx(math.sqrt(len(x)))
    assert HashedLogistic.norm(feats) == pytest.approx(math.sqrt(11))
    # Context strings add features, so the norm grows.
    ev2 = event(category_id=3, context={"device": "ios"})
    feats2 = EventFeatures(hashed_features(ev2, bits=24), embed(ev2))
    assert HashedLogistic.norm(feats2) == pytest.approx(math.sqrt(13))
    assert HashedLogistic.norm(EventFeatures({}, embed(ev))) == 0.0


def test_feature_names_content():
    ev = event(user_id=7, item_id="a1", category_id=3, type="click", position=2, price=10.0)
    names = set(feature_names(ev))
    hour = 1  # 01:00 UTC
    assert {
        "u=7",
        "i=a1",
        "c=3",
        "t=click",
        f"pos={2}",
        f"h={hour}",
        f"pb={int(math.log2(11.0))}",
    } <= names


def test_crosses_present():
    ev = event(user_id=7, item_id="a1", category_id=3, type="cart", position=5)
    names = feature_names(ev)
    assert "t*pos=cart|5" in names
    assert "t*h=cart|1" in names
    assert "u*c=7|3" in names
    assert "i*t=a1|cart" in names
    # Crosses separate what the single features cannot: same type and position values
    # on two events, swapped between them, give the same singles but different crosses.
    a = event(type="cart", position=1, ts=TS)
    b = event(type="cart", position=2, ts=TS)
    c = event(type="view", position=1, ts=TS)
    d = event(type="view", position=2, ts=TS)
    union_ad = set(hashed_features(a, 24)) | set(hashed_features(d, 24))
    union_bc = set(hashed_features(b, 24)) | set(hashed_features(c, 24))
    assert union_ad != union_bc


def test_missing_optionals_use_none_buckets():
    names = feature_names(event())
    assert "c=none" in names and "pos=none" in names and "pb=none" in names
    assert "u*c=7|none" in names


def test_price_bucket():
    assert price_bucket(None) == "none"
    assert price_bucket(0.0) == "0"
    assert price_bucket(1.0) == "1"
    assert price_bucket(3.0) == "2"
    assert price_bucket(1023.0) == "10"


def test_context_features():
    ctx = {f"k{i}": f"v{i}" for i in range(10)} | {"num": 3.5}
    ev = event(context=ctx)
    names = feature_names(ev)
    singles = [n for n in names if n.startswith("x:")]
    crosses = [n for n in names if n.startswith("x*i:")]
    # Every string value is a feature; numbers are not; at most 8 crosses with the item.
    assert sorted(singles) == sorted(f"x:k{i}=v{i}" for i in range(10))
    assert len(crosses) == 8
    assert all(n.endswith("|a1") for n in crosses)
    assert not any("num" in n for n in names)
    # The same context on another item changes the crosses, not the singles.
    other = feature_names(event(item_id="b2", context=ctx))
    assert {n for n in other if n.startswith("x:")} == set(singles)
    assert not {n for n in other if n.startswith("x*i:")} & set(crosses)


def test_hour_feature_follows_utc_hour():
    for hour in range(24):
        assert f"h={hour}" in feature_names(event(ts=TS - 3600 + hour * 3600))


def test_embedding_shape_dtype_finite():
    rng = np.random.default_rng(3)
    for i in range(300):
        kwargs = {
            "item_id": f"i{rng.integers(10**9)}",
            "type": str(rng.choice(list(TYPE_LEVEL))),
            "ts": TS + int(rng.integers(10**7)),
        }
        if i % 2:
            kwargs["category_id"] = int(rng.integers(100))
            kwargs["position"] = int(rng.integers(1, 100))
        vec = embed(event(**kwargs))
        assert vec.shape == (EMBEDDING_DIM,) == (16,)
        assert vec.dtype == np.float32
        assert np.isfinite(vec).all()


def test_embedding_parts():
    ev = event(type="cart", position=4, ts=TS)
    vec = embed(ev)
    assert vec[12] == np.float32(TYPE_LEVEL["cart"])
    assert vec[15] == np.float32(0.25)
    assert vec[13] ** 2 + vec[14] ** 2 == pytest.approx(0.25, rel=1e-5)
    # 01:00 UTC is 1/24 of the way round the circle.
    angle = 2 * math.pi / 24
    assert vec[13] == pytest.approx(0.5 * math.sin(angle), abs=1e-6)
    assert vec[14] == pytest.approx(0.5 * math.cos(angle), abs=1e-6)
    assert embed(event())[15] == 0.0  # no position


def test_same_item_same_item_code():
    a = embed(event(user_id=1, type="view", ts=TS, category_id=5))
    b = embed(event(user_id=2, type="purchase", ts=TS + 5000, position=3, category_id=5))
    assert np.array_equal(a[:8], b[:8])
    assert np.array_equal(a[8:12], b[8:12])  # same category, same category code
    other = embed(event(item_id="zz-other", category_id=6))
    assert not np.array_equal(a[:8], other[:8])
    assert not np.array_equal(a[8:12], other[8:12])
    # Item codes are not all the same vector: many items give many distinct codes.
    codes = {embed(event(item_id=f"item-{i}"))[:8].tobytes() for i in range(200)}
    assert len(codes) > 150


def test_embedding_is_a_pure_function():
    ev = event(category_id=9, position=2)
    assert np.array_equal(embed(ev), embed(ev))
    assert hashed_features(ev) == hashed_features(ev)
