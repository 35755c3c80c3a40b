"""Shared learners across partitions: deltas, their checks, and one model from many."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from models.engine import ImportanceEngine
from models.events import validate_event
from models.model_sync import SharedLearners, WeightDelta, WeightSharing
from models.scorers.logistic import HashedLogisticRegression
from models.state import StateError, encode_array


def _events(n: int, seed: int = 3):
    rng = random.Random(seed)
    for i in range(n):
        user, item = rng.randrange(60), int(rng.paretovariate(1.2)) % 200
        yield (
            validate_event(
                {
                    "event_id": f"e{i}",
                    "user_id": f"u{user}",
                    "item_id": f"i{item}",
                    "type": "click",
                    "ts": 1_700_000_000 + i,
                },
                now=math.inf,
            ),
            int(rng.random() < (0.3 if item % 7 == 0 else 0.05)),
            user % 3,
        )


def test_sharing_every_example_is_one_sequential_learner() -> None:
    """Each SGD step applied at once to every partition's learner: the partitions' models
    are the one model that learned the whole stream in order."""
    one = ImportanceEngine()
    parts = [ImportanceEngine() for _ in range(3)]
    hub = SharedLearners(sync_every=1)
    for p, engine in enumerate(parts):
        hub.join(p, engine)
    for ev, y, p in _events(3000):
        one.resolve(ev, y, 0.5)
        parts[p].resolve(ev, y, 0.5)
        hub.after_event(p)
    w = one.logistic.model.weights_array()
    for engine in parts:
        assert np.allclose(engine.logistic.model.weights_array(), w, atol=1e-9)
        assert engine.logistic.model.intercept == pytest.approx(one.logistic.model.intercept)


def test_partitions_alone_differ_and_sharing_is_off_at_zero() -> None:
    parts = [ImportanceEngine() for _ in range(3)]
    hub = SharedLearners(sync_every=0)
    for p, engine in enumerate(parts):
        hub.join(p, engine)
    for ev, y, p in _events(1000):
        parts[p].resolve(ev, y, 0.5)
        hub.after_event(p)
    assert hub.exported == 0 and all(e.sharing is None for e in parts)
    w0, w1 = (e.logistic.model.weights_array() for e in parts[:2])
    assert not np.allclose(w0, w1)


def test_received_updates_are_not_exported_again() -> None:
    a, b = HashedLogisticRegression(64), HashedLogisticRegression(64)
    sa, sb = WeightSharing(a), WeightSharing(b)
    for _ in range(5):
        sa.touch({1: 1.0})
        a.learn({1: 1.0}, True)
        sb.touch({2: 1.0})
        b.learn({2: 1.0}, False)
    da = sa.export()
    sb.apply(da)
    db = sb.export()
    assert set(da.idx.tolist()) == {1} and set(db.idx.tolist()) == {2}
    assert db.intercept == pytest.approx(b.intercept - da.intercept)
    assert db.steps == 5


def test_a_delta_round_trips_and_bad_ones_are_refused() -> None:
    a = HashedLogisticRegression(64)
    sa = WeightSharing(a)
    sa.touch({5: 1.0, 9: 1.0})
    a.learn({5: 1.0, 9: 1.0}, True)
    delta = sa.export()
    back = WeightDelta.from_state(delta.to_state(), 64)
    assert back.idx.tolist() == [5, 9] and np.allclose(back.val, delta.val, rtol=1e-6)
    good = delta.to_state()
    for change in (
        {"idx": encode_array(np.array([64], dtype=np.int32))},
        {"idx": encode_array(np.array([1, 2, 3], dtype=np.int32))},
        {"val": encode_array(np.array([np.nan, 1.0], dtype=np.float32))},
        {"intercept": "x"},
        {"steps": -1},
    ):
        with pytest.raises(StateError):
            WeightDelta.from_state({**good, **change}, 64)
    with pytest.raises(StateError):
        WeightDelta.from_state({"idx": good["idx"]}, 64)


def test_a_restored_engine_starts_a_new_export_period() -> None:
    engine = ImportanceEngine()
    hub = SharedLearners(sync_every=100)
    hub.join(0, engine)
    for ev, y, _p in _events(50):
        engine.resolve(ev, y, 0.5)
    state = engine.to_state()
    engine.load_state(state)
    assert engine.sharing is not None and engine.sharing.pending == 0
    assert engine.sharing.export().size == 0
