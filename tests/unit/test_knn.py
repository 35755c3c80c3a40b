"""Tests for the numpy k-NN classifier and the kNN importance scorer."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from river import checks, evaluate, metrics, neighbors, preprocessing
from river.datasets import synth

from models.scorers.knn import FastKNNClassifier, KNNImportance

D = 16


def _float32_stream(n: int, d: int = D, seed: int = 0):
    """Random stream whose values are exactly representable in float32.

    FastKNNClassifier stores float32; feeding river the same (float32-exact) values
    means both models see identical points, so on continuous data (no distance ties)
    their neighbour sets must agree exactly.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    # A label that depends on the position, so predictions are non-trivial.
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.standard_normal(n)) > 0
    names = [f"f{j:02d}" for j in range(d)]
    dicts = [dict(zip(names, map(float, row), strict=True)) for row in X]
    return X, y, dicts, names


def _river_knn(k: int, window: int, weighted: bool) -> neighbors.KNNClassifier:
    return neighbors.KNNClassifier(
        n_neighbors=k, engine=neighbors.LazySearch(window_size=window), weighted=weighted
    )


# ---------------------------------------------------------------------------
# Agreement with river
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "weighted"), [(10, True), (9, False)])
def test_matches_river_neighbours_and_predictions_exactly(k, weighted):
    # Odd k for the unweighted case: with an even k a 5/5 vote is a tie, and the two
    # libraries then pick a class by different (arbitrary) rules.
    window, n = 150, 900
    X, y, dicts, _ = _float32_stream(n)
    ref = _river_knn(k, window, weighted)
    # prior=0: no Laplace smoothing, so probabilities are river's exactly.
    fast = FastKNNClassifier(n_neighbors=k, window_size=window, weighted=weighted, prior=0.0)
    index = {tuple(x.values()): i for i, x in enumerate(dicts)}

    for i, (x, label) in enumerate(zip(dicts, y, strict=True)):
        if i > 0:
            # river has no public neighbour query on the classifier; its engine's
            # `search` is what `predict_proba_one` uses internally.
            items, ref_dist = ref._nn.search((x, None), n_neighbors=k)
            ref_ids = [index[tuple(item[0].values())] for item in items]
            dist, labels, ids = fast.neighbours_vec(X[i], return_ids=True)
            assert ids.tolist() == ref_ids
            np.testing.assert_allclose(dist, ref_dist, rtol=1e-9, atol=1e-12)
            assert labels.tolist() == [bool(item[1]) for item in items]

            ref_proba = ref.predict_proba_one(x)
            proba = fast.predict_proba_one(x)
            if len(ref_proba) == 2:  # river only reports classes it has seen
                assert proba[True] == pytest.approx(ref_proba[True], rel=1e-9, abs=1e-12)
                assert fast.predict_one(x) == ref.predict_one(x)
        ref.learn_one(x, bool(label))
        fast.learn_one(x, bool(label))


def test_default_prior_keeps_river_decisions():
    # The Laplace prior shrinks probabilities towards 0.5 but is symmetric, so the
    # predicted class is unchanged (absent exact vote ties, impossible with
    # continuous inverse-distance weights).
    _, y, dicts, _ = _float32_stream(700, seed=3)
    ref = _river_knn(10, 200, weighted=True)
    fast = FastKNNClassifier(n_neighbors=10, window_size=200)
    for x, label in zip(dicts, y, strict=True):
        if ref.classes == {False, True}:
            assert fast.predict_one(x) == ref.predict_one(x)
        ref.learn_one(x, bool(label))
        fast.learn_one(x, bool(label))


def _agrawal(n: int, seed: int = 7):
    # dict -> float conversion: Agrawal mixes int and float features.
    for x, y in synth.Agrawal(seed=seed).take(n):
        yield {k: float(v) for k, v in x.items()}, bool(y)


def test_accuracy_close_to_river_on_float64_stream():
    # On real float64 features FastKNNClassifier rounds the stored points to float32,
    # which can swap two neighbours whose distances differ by less than the rounding
    # error, and Agrawal's integer features create genuine distance ties, broken by
    # age in both engines but evaluated on slightly different (rounded) values. The
    # predictions therefore need not agree point for point; the accuracies must be
    # within a small margin.
    def run(model):
        pipe = preprocessing.StandardScaler() | model
        return evaluate.progressive_val_score(_agrawal(2000), pipe, metrics.Accuracy()).get()

    acc_ref = run(_river_knn(10, 500, weighted=True))
    acc_fast = run(FastKNNClassifier(n_neighbors=10, window_size=500, prior=0.0))
    assert abs(acc_ref - acc_fast) <= 0.01, (acc_ref, acc_fast)
    assert acc_fast > 0.6  # it actually learns something


# ---------------------------------------------------------------------------
# Window mechanics
# ---------------------------------------------------------------------------


def test_window_eviction_drops_oldest():
    clf = FastKNNClassifier(n_neighbors=5, window_size=3)
    for i in range(5):
        clf.learn_vec(np.array([float(i), 0.0], dtype=np.float32), i % 2)
    assert clf.n_stored == 3
    assert clf.n_seen == 5
    dist, labels, ids = clf.neighbours_vec(np.array([0.0, 0.0], dtype=np.float32), True)
    # Points 0 and 1 were evicted: the nearest surviving point is x=2.
    assert ids.tolist() == [2, 3, 4]
    assert dist.tolist() == [2.0, 3.0, 4.0]
    assert labels.tolist() == [False, True, False]


def test_eviction_matches_a_naive_window():
    rng = np.random.default_rng(5)
    window, k = 37, 6
    clf = FastKNNClassifier(n_neighbors=k, window_size=window, weighted=False)
    history = []
    for step in range(300):
        v = rng.standard_normal(4).astype(np.float32)
        q = rng.standard_normal(4).astype(np.float32)
        if history:
            stored = history[-window:]
            pts = np.array([p for p, _ in stored], dtype=np.float64)
            d = np.sqrt(((pts - q.astype(np.float64)) ** 2).sum(axis=1))
            order = np.argsort(d, kind="stable")[:k]
            dist, _, ids = clf.neighbours_vec(q, return_ids=True)
            first_id = len(history) - len(stored)
            assert ids.tolist() == (order + first_id).tolist()
            np.testing.assert_allclose(dist, d[order], rtol=1e-12)
        label = bool(step % 3 == 0)
        history.append((v, label))
        clf.learn_vec(v, label)


def test_empty_window():
    clf = FastKNNClassifier()
    x = {"a": 1.0, "b": 2.0}
    assert clf.predict_proba_one(x) == {False: 0.5, True: 0.5}
    assert clf.predict_proba_vec(np.zeros(3, dtype=np.float32)) == 0.5
    dist, labels = clf.neighbours_one(x)
    assert dist.shape == (0,) and labels.shape == (0,)
    assert clf.n_stored == 0 and clf.feature_names is None

    fixed = FastKNNClassifier(features=["a", "b"])
    assert fixed.predict_proba_one(x) == {False: 0.5, True: 0.5}
    dist, labels = fixed.neighbours_vec(np.zeros(2, dtype=np.float32))
    assert dist.size == 0 and labels.size == 0

    scorer = KNNImportance()
    assert scorer.score(np.zeros(3, dtype=np.float32)) == 1.0
    assert scorer.score_one(x) == 1.0
    assert scorer.components(np.zeros(3, dtype=np.float32)) == (1.0, 1.0)


def test_fewer_examples_than_neighbours_and_prior():
    clf = FastKNNClassifier(n_neighbors=10, window_size=100)
    clf.learn_one({"a": 0.0}, True)
    clf.learn_one({"a": 1.0}, True)
    dist, _ = clf.neighbours_one({"a": 0.25})
    assert dist.tolist() == [0.25, 0.75]
    # weights 1/0.25 and 1/0.75 rescaled to sum to 2; both positive: (2 + 1) / (2 + 2)
    assert clf.predict_proba_one({"a": 0.25})[True] == pytest.approx(0.75)


def test_exact_match_votes_alone():
    clf = FastKNNClassifier(n_neighbors=3, window_size=10, prior=0.0)
    clf.learn_one({"a": 0.0}, False)
    clf.learn_one({"a": 0.1}, True)
    clf.learn_one({"a": -0.1}, True)
    assert clf.predict_proba_one({"a": 0.0}) == {False: 1.0, True: 0.0}
    assert clf.predict_one({"a": 0.0}) is False


def test_dict_and_vector_paths_agree_and_features_are_sorted():
    rng = np.random.default_rng(2)
    by_dict = FastKNNClassifier(n_neighbors=4, window_size=50)
    by_vec = FastKNNClassifier(n_neighbors=4, window_size=50)
    for _ in range(120):
        v = rng.standard_normal(3).astype(np.float32)
        y = bool(rng.random() < 0.5)
        # keys deliberately out of order: the feature order is sorted(keys)
        by_dict.learn_one({"c": float(v[2]), "a": float(v[0]), "b": float(v[1])}, y)
        by_vec.learn_vec(v, y)
    assert by_dict.feature_names == ("a", "b", "c")
    q = rng.standard_normal(3).astype(np.float32)
    x = {"b": float(q[1]), "a": float(q[0]), "c": float(q[2]), "extra": 99.0}
    assert by_dict.predict_proba_one(x)[True] == by_vec.predict_proba_vec(q)
    # missing keys count as zero
    assert by_dict.predict_proba_one({"a": float(q[0])})[True] == by_vec.predict_proba_vec(
        np.array([q[0], 0.0, 0.0], dtype=np.float32)
    )


def test_input_validation():
    clf = FastKNNClassifier(features=["a", "b"])
    with pytest.raises(ValueError):
        clf.learn_vec(np.zeros(3, dtype=np.float32), 1)
    with pytest.raises(ValueError):
        clf.learn_vec(np.array([np.nan, 0.0]), 1)
    with pytest.raises(ValueError):
        clf.predict_proba_vec(np.array([np.inf, 0.0]))
    with pytest.raises(ValueError):
        clf.learn_one({"a": 1.0, "b": 2.0}, 2)
    with pytest.raises(ValueError):
        clf.learn_vec(np.zeros((2, 2)), 0)
    with pytest.raises(ValueError):
        FastKNNClassifier(n_neighbors=0)
    with pytest.raises(ValueError):
        FastKNNClassifier(prior=-1.0)
    assert clf.n_seen == 0  # nothing half-written

    scorer = KNNImportance()
    with pytest.raises(ValueError):
        scorer.learn(np.zeros(2, dtype=np.float32), 3)
    assert scorer.classifier.n_seen == 0 and scorer.typical_distance is None


def test_caller_can_reuse_the_vector_buffer():
    clf = FastKNNClassifier(n_neighbors=1, window_size=5)
    buf = np.zeros(2, dtype=np.float32)
    clf.learn_vec(buf, 1)
    buf[:] = 10.0  # mutate after learning
    dist, _ = clf.neighbours_vec(np.zeros(2, dtype=np.float32))
    assert dist.tolist() == [0.0]


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------


def _roundtrip(obj):
    # allow_nan=False: the state must be strict JSON.
    return json.loads(json.dumps(obj.to_state(), allow_nan=False))


@pytest.mark.parametrize("n_learnt", [0, 1, 40, 2500])
def test_classifier_state_roundtrip_is_exact(n_learnt):
    _, y, dicts, _ = _float32_stream(n_learnt + 300, seed=11)
    clf = FastKNNClassifier(n_neighbors=7, window_size=1000)
    for x, label in zip(dicts[:n_learnt], y[:n_learnt], strict=True):
        clf.learn_one(x, bool(label))
    clone = FastKNNClassifier.from_state(_roundtrip(clf))
    assert clone.n_stored == clf.n_stored and clone.n_seen == clf.n_seen
    for x in dicts[n_learnt : n_learnt + 100]:
        assert clone.predict_proba_one(x) == clf.predict_proba_one(x)
        d1, l1 = clf.neighbours_one(x)
        d2, l2 = clone.neighbours_one(x)
        assert d1.tolist() == d2.tolist() and l1.tolist() == l2.tolist()
    # Both keep evolving identically (ring position and ids were restored).
    for x, label in zip(dicts[n_learnt + 100 :], y[n_learnt + 100 :], strict=True):
        assert clone.predict_proba_one(x) == clf.predict_proba_one(x)
        clf.learn_one(x, bool(label))
        clone.learn_one(x, bool(label))
    assert clone.to_state() == clf.to_state()


def test_state_rejects_bad_input():
    clf = FastKNNClassifier(n_neighbors=3, window_size=10)
    for i in range(4):
        clf.learn_vec(np.array([i, i], dtype=np.float32), i % 2)
    state = _roundtrip(clf)
    with pytest.raises(ValueError):
        FastKNNClassifier.from_state({**state, "type": "Other"})
    with pytest.raises(ValueError):
        FastKNNClassifier.from_state({**state, "n_stored": 5})
    with pytest.raises(TypeError):
        FastKNNClassifier(features=[("a", 1)]).to_state()


def _as_version_1(state: dict) -> dict:
    """``state`` in the layout the classifier saved before version 2 (arrays as
    ``{"dtype": "<f4", "shape", "data"}``), as snapshots written then hold it."""
    tags = {"float32": "<f4", "uint8": "|u1", "int64": "<i8"}
    out = {**state, "version": 1}
    for key in ("X", "sqnorm", "labels", "ids"):
        a = state[key]
        out[key] = {"dtype": tags[a["dtype"]], "shape": a["shape"], "data": a["b64"]}
    return out


def test_classifier_state_of_version_1_still_loads():
    _, y, dicts, _ = _float32_stream(400, seed=5)
    clf = FastKNNClassifier(n_neighbors=7, window_size=200)
    for x, label in zip(dicts[:300], y[:300], strict=True):
        clf.learn_one(x, bool(label))
    clone = FastKNNClassifier.from_state(_as_version_1(_roundtrip(clf)))
    assert clone.to_state() == clf.to_state()
    for x in dicts[300:]:
        assert clone.predict_proba_one(x) == clf.predict_proba_one(x)
    wrong = _as_version_1(_roundtrip(clf))
    wrong["labels"] = {**wrong["labels"], "dtype": "<f4"}  # bytes of another dtype
    with pytest.raises(ValueError):
        FastKNNClassifier.from_state(wrong)


def test_scorer_state_roundtrip_is_exact():
    rng = np.random.default_rng(4)
    scorer = KNNImportance(n_neighbors=8, window_size=300)
    for _ in range(500):
        v = rng.standard_normal(D).astype(np.float32)
        scorer.learn(v, int(v[0] > 0))
    clone = KNNImportance.from_state(_roundtrip(scorer))
    assert clone.typical_distance == scorer.typical_distance
    for _ in range(100):
        v = rng.standard_normal(D).astype(np.float32)
        assert clone.score(v) == scorer.score(v)
        scorer.learn(v, 1)
        clone.learn(v, 1)
    assert clone.to_state() == scorer.to_state()


# ---------------------------------------------------------------------------
# Importance scorer
# ---------------------------------------------------------------------------


def _fitted_scorer(seed: int = 0, n: int = 600) -> KNNImportance:
    rng = np.random.default_rng(seed)
    scorer = KNNImportance(n_neighbors=10, window_size=500)
    for _ in range(n):
        v = rng.standard_normal(D).astype(np.float32)
        scorer.learn(v, int(v[0] > 0))
    return scorer


def test_novelty_higher_for_outlier_than_inlier():
    scorer = _fitted_scorer()
    inlier = np.zeros(D, dtype=np.float32)
    outlier = np.full(D, 6.0, dtype=np.float32)
    n_in, n_out = scorer.novelty(inlier), scorer.novelty(outlier)
    assert n_out > n_in
    assert n_out > 0.7 and n_in < 0.5
    # a training-like point sits near the typical distance, i.e. novelty ~ 0.5
    typical = np.random.default_rng(99).standard_normal(D).astype(np.float32)
    assert 0.3 < scorer.novelty(typical) < 0.7


def test_disagreement_higher_in_mixed_region():
    rng = np.random.default_rng(1)
    scorer = KNNImportance(n_neighbors=10, window_size=400)
    centre_pure = np.full(D, -5.0, dtype=np.float32)
    centre_mixed = np.full(D, 5.0, dtype=np.float32)
    for i in range(400):
        if i % 2:
            scorer.learn(centre_pure + rng.standard_normal(D).astype(np.float32), 0)
        else:
            noise = rng.standard_normal(D).astype(np.float32)
            scorer.learn(centre_mixed + noise, int(rng.random() < 0.5))
    pure, mixed = scorer.disagreement(centre_pure), scorer.disagreement(centre_mixed)
    assert pure == 0.0
    assert mixed > 0.5
    assert scorer.score(centre_mixed) > scorer.score(centre_pure)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_score_always_in_unit_interval(scale):
    rng = np.random.default_rng(int(np.log10(scale)) + 10)
    scorer = KNNImportance(n_neighbors=5, window_size=60, typical_decay=0.1)
    base_pts = (rng.standard_normal((20, 8)) * scale).astype(np.float32)
    for step in range(400):
        kind = step % 4
        if kind == 0:  # exact duplicate of an earlier point
            v = base_pts[rng.integers(len(base_pts))]
        elif kind == 1:  # far outlier
            v = (rng.standard_normal(8) * scale * 1e3).astype(np.float32)
        elif kind == 2:  # zeros
            v = np.zeros(8, dtype=np.float32)
        else:
            v = (rng.standard_normal(8) * scale).astype(np.float32)
        s = scorer.score(v)
        nov, dis = scorer.components(v)
        assert 0.0 <= s <= 1.0
        assert 0.0 <= nov <= 1.0 and 0.0 <= dis <= 1.0
        scorer.learn(v, int(rng.random() < 0.3))


def test_score_is_pure_and_cache_does_not_change_learning():
    rng = np.random.default_rng(8)
    a = KNNImportance(n_neighbors=6, window_size=100)
    b = KNNImportance(n_neighbors=6, window_size=100)
    for _ in range(250):
        v = rng.standard_normal(D).astype(np.float32)
        y = int(rng.random() < 0.5)
        before = a.to_state()
        s1 = a.score(v)
        assert a.to_state() == before  # scoring does not change the model
        assert a.score(v) == s1
        a.learn(v, y)  # reuses the search cached by score()
        b.learn(v, y)  # computes it afresh
    assert a.to_state() == b.to_state()


def test_scorer_dict_variants_match_vector_variants():
    rng = np.random.default_rng(6)
    names = ["u", "v", "w"]
    by_dict = KNNImportance(n_neighbors=5, window_size=80)
    by_vec = KNNImportance(n_neighbors=5, window_size=80, features=names)
    for _ in range(200):
        v = rng.standard_normal(3).astype(np.float32)
        x = dict(zip(names, map(float, v), strict=True))
        y = int(v[0] > 0)
        assert by_dict.score_one(x) == by_vec.score(v)
        by_dict.learn_one(x, y)
        by_vec.learn(v, y)


def test_blend_weights():
    scorer = _fitted_scorer(seed=3, n=300)
    v = np.full(D, 0.5, dtype=np.float32)
    nov, dis = scorer.components(v)
    assert scorer.score(v) == pytest.approx(0.5 * nov + 0.5 * dis)
    only_novelty = KNNImportance.from_state(
        {**scorer.to_state(), "params": {**scorer.to_state()["params"], "novelty_weight": 1.0}}
    )
    assert only_novelty.score(v) == pytest.approx(nov)


# ---------------------------------------------------------------------------
# river protocol
# ---------------------------------------------------------------------------


def test_river_protocol_with_dicts():
    clf = FastKNNClassifier(n_neighbors=3, window_size=50)
    _, y, dicts, _ = _float32_stream(100, d=4, seed=9)
    for x, label in zip(dicts, y, strict=True):
        proba = clf.predict_proba_one(x)
        assert set(proba) == {False, True}
        assert sum(proba.values()) == pytest.approx(1.0)
        assert clf.predict_one(x) in (False, True)
        clf.learn_one(x, bool(label))
    # np.bool_ and int labels are accepted too
    clf.learn_one(dicts[0], np.bool_(True))
    clf.learn_one(dicts[1], 0)
    # clone() rebuilds from the constructor parameters: an empty model
    fresh = clf.clone()
    assert fresh.n_stored == 0 and fresh.n_neighbors == 3 and fresh.window_size == 50


def test_progressive_val_score_on_agrawal():
    model = preprocessing.StandardScaler() | FastKNNClassifier(n_neighbors=10, window_size=300)
    metric = evaluate.progressive_val_score(_agrawal(1500, seed=3), model, metrics.ROCAUC())
    assert 0.6 < metric.get() <= 1.0


def test_progressive_val_score_on_own_generator():
    def stream():
        rng = np.random.default_rng(0)
        for _ in range(800):
            v = rng.standard_normal(5)
            yield {f"x{i}": float(v[i]) for i in range(5)}, bool(v[0] * v[1] > 0)

    model = FastKNNClassifier(n_neighbors=7, window_size=400)
    acc = evaluate.progressive_val_score(stream(), model, metrics.Accuracy()).get()
    assert acc > 0.7  # an XOR-like concept a linear model cannot learn


def test_river_estimator_checks(monkeypatch):
    # river's dataset-driven checks import scikit-learn's dataset module at the top of
    # their generator (it is only used for multi-output regressors).  scikit-learn is
    # not a dependency of this project, so stand in an empty module for that import.
    if "sklearn" not in sys.modules:
        fake = types.ModuleType("sklearn")
        fake.datasets = types.ModuleType("sklearn.datasets")
        monkeypatch.setitem(sys.modules, "sklearn", fake)
        monkeypatch.setitem(sys.modules, "sklearn.datasets", fake.datasets)
    for params in FastKNNClassifier._unit_test_params():
        model = FastKNNClassifier(**params)
        ran = 0
        for check in checks.yield_checks(model):
            if check.__name__ in model._unit_test_skips():
                continue
            check(model.clone())
            ran += 1
        assert ran > 20


def test_exact_despite_large_common_offset():
    # ||x||² is ~1e8 here while neighbour distances² are ~1e-2: the float32 norm
    # expansion cannot rank such points, so the search must detect it and fall back
    # to exact distances.
    rng = np.random.default_rng(12)
    pts = (1e3 + 0.05 * rng.standard_normal((400, D))).astype(np.float32)
    clf = FastKNNClassifier(n_neighbors=10, window_size=400, weighted=False)
    for i, p in enumerate(pts):
        clf.learn_vec(p, i % 2)
    for q in (1e3 + 0.05 * rng.standard_normal((50, D))).astype(np.float32):
        d = np.sqrt(((pts.astype(np.float64) - q.astype(np.float64)) ** 2).sum(axis=1))
        expected = np.argsort(d, kind="stable")[:10]
        dist, _, ids = clf.neighbours_vec(q, return_ids=True)
        assert ids.tolist() == expected.tolist()
        np.testing.assert_allclose(dist, d[expected], rtol=1e-12)


def test_ties_broken_by_age_like_river():
    # Binary features: many stored points share the same distance to a query.  Both
    # engines order neighbours by (distance, age), oldest first, so the ordered list
    # of neighbour points must be identical.  Equal points are interchangeable, so
    # comparing the points (not their identities) is exact here.
    rng = np.random.default_rng(13)
    window, k = 60, 7
    ref = _river_knn(k, window, weighted=False)
    fast = FastKNNClassifier(n_neighbors=k, window_size=window, weighted=False)
    seen: list[tuple[float, ...]] = []
    for step in range(400):
        v = rng.integers(0, 2, size=4).astype(np.float32)
        x = {f"f{j}": float(val) for j, val in enumerate(v)}
        if step:
            items, ref_dist = ref._nn.search((x, None), n_neighbors=k)
            dist, _, ids = fast.neighbours_vec(v, return_ids=True)
            assert [seen[i] for i in ids.tolist()] == [tuple(it[0].values()) for it in items]
            np.testing.assert_allclose(dist, ref_dist, rtol=1e-12)
            # Predictions are not compared: on exact matches river lets the single
            # oldest duplicate decide, while FastKNNClassifier lets every coinciding
            # neighbour vote (weighted mode) or keeps the plain mean (unweighted).
        y = bool(rng.random() < 0.5)
        ref.learn_one(x, y)
        fast.learn_one(x, y)
        seen.append(tuple(x.values()))
