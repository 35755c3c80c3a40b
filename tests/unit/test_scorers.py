"""The behaviour prior and the hashed logistic scorer."""

from __future__ import annotations

import itertools
import math

import numpy as np
import orjson
import pytest

from models.events import EVENT_TYPES, validate_event
from models.features import embed, hashed_features
from models.scorers.base import EventFeatures, Scorer
from models.scorers.behavior import BehaviorPrior
from models.scorers.logistic import HashedLogistic, expected_gradient, realised_gradient

TS = 1_511_658_000


def event(**fields):
    base = {"user_id": 7, "item_id": "a1", "type": "pv", "ts": TS}
    return validate_event({**base, **fields}, now=float("inf"))


def feats(ev, lateness_s: float = 0.0) -> EventFeatures:
    return EventFeatures(hashed_features(ev), embed(ev), lateness_s)


def json_round_trip(state):
    return orjson.loads(orjson.dumps(state))


def auc(labels, scores) -> float:
    """Mann–Whitney AUC with ties counted half."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y], s[~y]
    assert pos.size and neg.size
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def test_auc_helper():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auc([0, 1], [0.5, 0.5]) == 0.5


def test_scorers_follow_the_protocol():
    assert isinstance(BehaviorPrior(), Scorer)
    assert isinstance(HashedLogistic(), Scorer)


# --------------------------------------------------------------------------------------
# Behaviour prior
# --------------------------------------------------------------------------------------


def test_behavior_type_ordering():
    order = ["impression", "view", "click", "fav", "cart", "purchase"]
    assert sorted(order) == sorted(EVENT_TYPES)
    scorer = BehaviorPrior()
    scores = [scorer.score(event(type=t), feats(event(type=t))) for t in order]
    assert all(a < b for a, b in itertools.pairwise(scores)), scores


def test_behavior_rarity_decreases_with_repeats():
    scorer = BehaviorPrior()
    ev = event(category_id=3)
    scores = []
    for _ in range(20):
        scores.append(scorer.score(ev, feats(ev)))
        scorer.observe(ev)
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    # Another item of the same category is less rare than a brand-new item in a new
    # category, but rarer than the repeated one.
    same_cat = event(item_id="other", category_id=3)
    fresh = event(item_id="fresh", category_id=999)
    s_same, s_fresh = scorer.score(same_cat, feats(same_cat)), scorer.score(fresh, feats(fresh))
    assert scores[-1] < s_same < s_fresh


def test_behavior_rarity_formula():
    scorer = BehaviorPrior(weights=(0.0, 1.0, 0.0))
    ev = event()
    for n in range(5):
        assert scorer.score(ev, feats(ev)) == pytest.approx(1.0 / math.sqrt(1.0 + n))
        scorer.observe(ev)


def test_behavior_recency_decreases_with_lateness():
    scorer = BehaviorPrior()
    ev = event()
    lateness = [0.0, 1.0, 60.0, 600.0, 3600.0, 36000.0]
    scores = [scorer.score(ev, feats(ev, late)) for late in lateness]
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    # Negative lateness (an event ahead of the watermark) counts as on time.
    assert scorer.score(ev, feats(ev, -100.0)) == scores[0]
    only_recency = BehaviorPrior(weights=(0.0, 0.0, 1.0), horizon_s=100.0)
    assert only_recency.score(ev, feats(ev, 100.0)) == pytest.approx(math.exp(-1.0))


def test_behavior_counts_halve_every_half_life():
    scorer = BehaviorPrior(half_life_events=4)
    ev = event(category_id=1)
    for _ in range(4):
        scorer.observe(ev)
    slot = scorer._slots(ev)[0]
    assert scorer.item_counts[slot] == 2.0
    scorer.observe(ev)
    assert scorer.item_counts[slot] == 3.0


def test_behavior_score_in_unit_interval():
    rng = np.random.default_rng(5)
    scorer = BehaviorPrior(bits=8)  # small tables: many collisions, large counts
    for i in range(3000):
        ev = event(
            item_id=int(rng.integers(50)),
            category_id=int(rng.integers(5)) if i % 3 else None,
            type=str(rng.choice(EVENT_TYPES)),
            ts=TS + i,
        )
        s = scorer.score(ev, feats(ev, float(rng.exponential(3600.0))))
        assert 0.0 <= s <= 1.0
        scorer.observe(ev)
    fresh = BehaviorPrior()
    ev = event(type="purchase")
    assert fresh.score(ev, feats(ev)) == pytest.approx(1.0)  # the maximum


def test_behavior_state_round_trip():
    rng = np.random.default_rng(6)
    a = BehaviorPrior()
    evs = [
        event(item_id=int(rng.integers(30)), category_id=int(rng.integers(4)), ts=TS + i)
        for i in range(500)
    ]
    for ev in evs:
        a.observe(ev)
    b = BehaviorPrior()
    b.load_state(json_round_trip(a.to_state()))
    assert b.seen == a.seen == 500
    for ev in [*evs[:50], event(item_id="new")]:
        assert b.score(ev, feats(ev, 30.0)) == a.score(ev, feats(ev, 30.0))
    # and they keep evolving identically
    for ev in evs[:10]:
        a.observe(ev)
        b.observe(ev)
    assert np.array_equal(a.item_counts, b.item_counts)
    with pytest.raises(ValueError):
        BehaviorPrior(bits=8).load_state(json_round_trip(a.to_state()))


def test_behavior_learn_is_a_no_op():
    scorer = BehaviorPrior()
    ev = event()
    before = scorer.score(ev, feats(ev))
    scorer.learn(ev, feats(ev), 1)
    assert scorer.score(ev, feats(ev)) == before


# --------------------------------------------------------------------------------------
# Logistic scorer
# --------------------------------------------------------------------------------------


def synthetic_stream(n: int, seed: int, *, label_noise: bool = False):
    """Exposures of 40 items by 500 users; even items are always positive."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        item = int(rng.integers(40))
        ev = event(
            user_id=int(rng.integers(500)),
            item_id=item,
            type=str(rng.choice(["view", "click", "impression"])),
            ts=TS + 10 * i,
        )
        y = int(rng.integers(2)) if label_noise else int(item % 2 == 0)
        yield ev, feats(ev), y


def progressive_auc(stream, scorer: HashedLogistic, skip: int) -> float:
    ys, ps = [], []
    for i, (ev, f, y) in enumerate(stream):
        p = scorer.proba(f)
        assert 0.0 <= p <= 1.0
        if i >= skip:
            ys.append(y)
            ps.append(p)
        scorer.learn(ev, f, y)
    return auc(ys, ps)


def test_logistic_learns_a_separable_signal():
    scorer = HashedLogistic()
    assert progressive_auc(synthetic_stream(3000, seed=1), scorer, skip=1500) > 0.8
    assert scorer.updates == 3000
    # Seen from the learned model, positive items are on the right side of 0.5.
    pos = event(item_id=2, user_id=1)
    neg = event(item_id=3, user_id=1)
    assert scorer.proba(feats(pos)) > 0.5 > scorer.proba(feats(neg))


def test_logistic_does_not_invent_a_signal_from_noise():
    # Control for the test above: with labels independent of everything, the same
    # evaluation stays near chance.
    scorer = HashedLogistic()
    value = progressive_auc(synthetic_stream(3000, seed=2, label_noise=True), scorer, skip=1500)
    assert 0.4 < value < 0.6


def test_untrained_logistic_is_uninformed():
    scorer = HashedLogistic()
    ev = event()
    assert scorer.proba(feats(ev)) == 0.5
    assert scorer.score(ev, feats(ev)) == 1.0  # expected gradient is maximal at p = 0.5
    assert scorer.score(event(label=1), feats(ev)) == 0.5


@pytest.mark.parametrize("p", [0.0, 0.01, 0.2, 0.5, 0.77, 0.999, 1.0])
@pytest.mark.parametrize("norm", [0.0, 1.0, math.sqrt(11.0), 3.5])
def test_gradient_formulas(p, norm):
    assert expected_gradient(p, norm) == pytest.approx(2.0 * p * (1.0 - p) * norm)
    assert realised_gradient(p, 1, norm) == pytest.approx((1.0 - p) * norm)
    assert realised_gradient(p, 0, norm) == pytest.approx(p * norm)
    # The expected gradient is the realised one averaged over y ~ Bernoulli(p).
    mean = p * realised_gradient(p, 1, norm) + (1.0 - p) * realised_gradient(p, 0, norm)
    assert expected_gradient(p, norm) == pytest.approx(mean)
    assert expected_gradient(p, norm) <= 0.5 * norm + 1e-12


def test_logistic_score_uses_the_given_probability():
    scorer = HashedLogistic()
    ev, labelled0, labelled1 = event(), event(label=0), event(label=1)
    f = feats(ev)
    for p in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert scorer.score(ev, f, p) == pytest.approx(4.0 * p * (1.0 - p))
        assert scorer.score(ev, f, p) == pytest.approx(expected_gradient(p, 1.0) / 0.5)
        assert scorer.score(labelled1, f, p) == pytest.approx(1.0 - p)
        assert scorer.score(labelled0, f, p) == pytest.approx(p)


def test_logistic_score_in_unit_interval_while_learning():
    scorer = HashedLogistic(learning_rate=0.5)
    for i, (ev, f, y) in enumerate(synthetic_stream(1500, seed=3)):
        labelled = event(item_id=ev.item_id, label=y)
        for s in (scorer.score(ev, f), scorer.score(labelled, f)):
            assert 0.0 <= s <= 1.0, (i, s)
        scorer.learn(ev, f, y)
    # Well-trained on a separable signal, the realised gradient of a correctly
    # predicted example is small.
    ev = event(item_id=2)
    assert scorer.score(event(item_id=2, label=1), feats(ev)) < 0.1


def test_logistic_state_round_trip_gives_identical_probabilities():
    a = HashedLogistic()
    stream = list(synthetic_stream(800, seed=4))
    for ev, f, y in stream[:600]:
        a.learn(ev, f, y)
    b = HashedLogistic()
    b.load_state(json_round_trip(a.to_state()))
    assert b.updates == a.updates == 600
    for _, f, _ in stream[600:]:
        assert b.proba(f) == a.proba(f)
    # Learning continues identically, including on features never seen before.
    for ev, f, y in stream[600:]:
        a.learn(ev, f, y)
        b.learn(ev, f, y)
    novel = feats(event(user_id="never-seen", item_id="never-seen", category_id=77))
    for _, f, _ in stream[:100]:
        assert b.proba(f) == a.proba(f)
    assert b.proba(novel) == a.proba(novel)
    assert a.to_state() == b.to_state()


def test_logistic_load_state_rejects_mismatched_arrays():
    a = HashedLogistic()
    for ev, f, y in synthetic_stream(50, seed=5):
        a.learn(ev, f, y)
    state = json_round_trip(a.to_state())
    state["w"] = HashedLogistic().to_state()["w"]  # empty weights, non-empty indices
    with pytest.raises(ValueError):
        HashedLogistic().load_state(state)
