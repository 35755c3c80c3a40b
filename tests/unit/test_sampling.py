"""Importance sampling: keep rate, determinism, weights, and unbiasedness of the
Horvitz–Thompson estimates built from the weights."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from models.sampling import Decision, ImportanceSampler, uniform_from_id

Z99 = 2.5758293035489  # two-sided 99 % normal quantile


def run(sampler: ImportanceSampler, importances, prefix: str) -> list[Decision]:
    return [sampler.decide(f"{prefix}-{i}", float(s)) for i, s in enumerate(importances)]


def test_uniform_from_id_is_deterministic_and_uniform():
    assert uniform_from_id("abc") == uniform_from_id("abc")
    assert uniform_from_id("abc") != uniform_from_id("abd")
    assert uniform_from_id("abc", salt=1) != uniform_from_id("abc")
    u = np.array([uniform_from_id(f"ev-{i}") for i in range(20_000)])
    assert ((u >= 0.0) & (u < 1.0)).all()
    hist, _ = np.histogram(u, bins=20, range=(0.0, 1.0))
    # 1000 expected per bin; a multinomial bin count has sd ~31.
    assert hist.min() > 850 and hist.max() < 1150, hist


@pytest.mark.parametrize("target", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("dist", ["uniform", "beta"])
def test_keep_rate_converges_to_target(target, dist):
    rng = np.random.default_rng(int(target * 1000) + (dist == "beta"))
    n = 50_000
    importances = rng.uniform(size=n) if dist == "uniform" else rng.beta(0.5, 3.0, size=n)
    sampler = ImportanceSampler(target_rate=target)
    decisions = run(sampler, importances, f"{dist}-{target}")
    keep = np.array([d.keep for d in decisions])
    pis = np.array([d.probability for d in decisions])
    assert abs(keep.mean() - target) < 0.02, keep.mean()
    assert abs(pis[n // 2 :].mean() - target) < 0.01, pis[n // 2 :].mean()
    assert abs(sampler.mean_pi - target) < 0.03


@pytest.mark.parametrize("target", [0.05, 0.2, 0.5, 0.8])
def test_initial_scale_matches_target_for_uniform_importances(target):
    # Rank-mapped importances are roughly uniform on [0, 1]; the sampler's starting scale
    # should already give the target keep rate on them, not only after adaptation.
    sampler = ImportanceSampler(target_rate=target, adapt=0.0)
    grid = (np.arange(10_000) + 0.5) / 10_000
    mean_pi = np.mean([sampler.probability(float(u)) for u in grid])
    assert mean_pi == pytest.approx(target, abs=0.01)
    # and the first few hundred events of a fresh sampler keep about the target rate
    rng = np.random.default_rng(int(target * 100))
    adaptive = ImportanceSampler(target_rate=target)
    early = [d.probability for d in run(adaptive, rng.uniform(size=300), "early")]
    assert np.mean(early) == pytest.approx(target, abs=0.05)


def test_decisions_are_deterministic_from_event_id():
    rng = np.random.default_rng(21)
    importances = rng.beta(0.5, 3.0, size=5000)
    a = run(ImportanceSampler(0.2), importances, "same")
    b = run(ImportanceSampler(0.2), importances, "same")
    assert a == b
    for i, d in enumerate(a):
        assert d.keep == (uniform_from_id(f"same-{i}") < d.probability)
    # Other ids with the same importances make other decisions.
    c = run(ImportanceSampler(0.2), importances, "other")
    assert [d.probability for d in c] == [d.probability for d in a]
    assert [d.keep for d in c] != [d.keep for d in a]


def test_weight_is_inverse_probability():
    rng = np.random.default_rng(22)
    sampler = ImportanceSampler(0.2)
    decisions = run(sampler, rng.uniform(size=5000), "w")
    kept = [d for d in decisions if d.keep]
    dropped = [d for d in decisions if not d.keep]
    assert kept and dropped
    for d in kept:
        assert d.weight == pytest.approx(1.0 / d.probability)
        assert 1.0 <= d.weight <= 1.0 / sampler.pi_min
    assert all(d.weight == 0.0 for d in dropped)
    assert all(sampler.pi_min <= d.probability <= 1.0 for d in decisions)


def test_probability_clipping():
    sampler = ImportanceSampler(target_rate=0.2, pi_min=0.05)
    assert sampler.probability(0.0) == 0.05
    assert sampler.probability(1e-9) == 0.05
    sampler.log_scale = math.log(4.0)
    assert sampler.probability(0.1) == pytest.approx(0.4)
    assert sampler.probability(0.9) == 1.0
    # pi_min never exceeds the target rate
    assert ImportanceSampler(target_rate=0.01, pi_min=0.05).pi_min == 0.01
    d = sampler.decide("x", 0.9)
    assert d.keep and d.weight == 1.0 and d.probability == 1.0


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_rejects_bad_target(bad):
    with pytest.raises(ValueError):
        ImportanceSampler(target_rate=bad)


def test_target_rate_one_keeps_everything():
    sampler = ImportanceSampler(target_rate=1.0)
    rng = np.random.default_rng(23)
    decisions = run(sampler, rng.uniform(0.05, 1.0, size=2000), "all")
    assert np.mean([d.keep for d in decisions[500:]]) > 0.99


def test_state_round_trip():
    rng = np.random.default_rng(24)
    a = ImportanceSampler(0.2)
    run(a, rng.beta(0.5, 3.0, size=3000), "s")
    b = ImportanceSampler(0.2)
    b.load_state(orjson.loads(orjson.dumps(a.to_state())))
    assert b.scale == a.scale
    more = rng.uniform(size=500)
    assert run(a, more, "t") == run(b, more, "t")


# --------------------------------------------------------------------------------------
# Unbiasedness of the Horvitz–Thompson weights
# --------------------------------------------------------------------------------------


def _replicate(seed: int, n: int = 2000, target: float = 0.2):
    """One independent stream: importances s ~ Beta(0.5, 3), y = s + noise (so the kept
    events, chosen for their importance, have a larger y than average).

    Returns (HT estimate − true mean, naive kept mean − true mean) of y.
    """
    rng = np.random.default_rng(10_000 + seed)
    s = rng.beta(0.5, 3.0, size=n)
    y = s + 0.1 * rng.standard_normal(n)
    sampler = ImportanceSampler(target_rate=target)
    decisions = run(sampler, s, f"seed{seed}")
    keep = np.array([d.keep for d in decisions])
    weight = np.array([d.weight for d in decisions])
    truth = y.mean()
    ht = float((keep * weight * y).sum() / n)
    naive = float(y[keep].mean())
    return ht - truth, naive - truth, keep.mean()


def _ci(errors: np.ndarray) -> tuple[float, float, float]:
    mean = float(errors.mean())
    half = Z99 * float(errors.std(ddof=1)) / math.sqrt(len(errors))
    return mean, mean - half, mean + half


def test_horvitz_thompson_estimate_is_unbiased_and_naive_is_not():
    results = np.array([_replicate(seed) for seed in range(200)])
    ht_err, naive_err, kept = results[:, 0], results[:, 1], results[:, 2]
    assert 0.15 < kept.mean() < 0.25

    ht_mean, ht_lo, ht_hi = _ci(ht_err)
    naive_mean, naive_lo, naive_hi = _ci(naive_err)
    assert ht_lo <= 0.0 <= ht_hi, (ht_mean, ht_lo, ht_hi)
    # The naive mean of kept y over-weights the important (high-y) events.
    assert naive_lo > 0.0, (naive_mean, naive_lo, naive_hi)
    # The test has power: the HT interval is far narrower than the naive bias, so a
    # wrong weight (see below) would be detected.
    assert ht_hi - ht_lo < 0.1 * naive_mean


def test_wrong_weights_would_be_detected():
    """The same design rejects weights that are not 1/π: with the constant 1/target
    (what a uniform sample would use), the estimate is biased and the CI excludes 0."""
    errors = []
    for seed in range(200):
        rng = np.random.default_rng(10_000 + seed)
        n, target = 2000, 0.2
        s = rng.beta(0.5, 3.0, size=n)
        y = s + 0.1 * rng.standard_normal(n)
        decisions = run(ImportanceSampler(target_rate=target), s, f"seed{seed}")
        keep = np.array([d.keep for d in decisions])
        errors.append(float((keep * y).sum() / target / n - y.mean()))
    _, lo, hi = _ci(np.array(errors))
    assert not lo <= 0.0 <= hi, (lo, hi)
