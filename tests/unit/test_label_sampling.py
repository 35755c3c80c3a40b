"""Label-time samplers: kept fraction, positives, coins, state."""

from __future__ import annotations

import math
import random

import pytest

from models.label_sampling import SAMPLERS, LabelSampler, make_sampler
from models.state import StateError

KEEP_ALL_POSITIVES = [name for name in SAMPLERS if name != "uniform"]


def _stream(n: int, positive_rate: float, seed: int = 1):
    """Labelled examples with a long-tailed item, a p that carries signal, and labels."""
    rng = random.Random(seed)
    for i in range(n):
        item = int(rng.paretovariate(1.0)) % 3000
        p = min(0.9, positive_rate * math.exp(rng.gauss(0.0, 1.0) - 0.5))
        y = int(rng.random() < p)
        yield f"e{i}", y, p, {item: 1.0, 5000 + item % 17: 1.0, 9: 1.0}


def _run(sampler: LabelSampler, n: int, positive_rate: float, burn_in: int):
    kept = seen = lost = 0
    decisions = []
    for i, (eid, y, p, x) in enumerate(_stream(n, positive_rate)):
        d = sampler.decide(eid, y, p, x)
        decisions.append(d)
        if i >= burn_in:
            seen += 1
            kept += d.keep
            lost += y and not d.keep
    return kept / seen, lost, decisions


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize(("rate", "positive_rate"), [(0.02, 0.01), (0.05, 0.003), (0.25, 0.02)])
def test_kept_fraction_follows_target(name: str, rate: float, positive_rate: float) -> None:
    sampler = make_sampler(name, target_rate=rate, salt=5)
    frac, _, _ = _run(sampler, 40_000, positive_rate, burn_in=15_000)
    assert abs(frac - rate) < 0.12 * rate, (name, rate, frac)


@pytest.mark.parametrize("name", KEEP_ALL_POSITIVES)
def test_every_positive_kept(name: str) -> None:
    sampler = make_sampler(name, target_rate=0.03, salt=2)
    _, lost, decisions = _run(sampler, 10_000, 0.01, burn_in=0)
    assert lost == 0
    assert all(d.pi_positive == 1.0 for d in decisions)
    assert all(abs(d.offset - math.log(1.0 / d.pi_negative)) < 1e-9 for d in decisions)


@pytest.mark.parametrize("name", ["pos", "fisher", "fisher-mix", "leverage", "leverage-mix"])
def test_importance_samplers_vary_the_negative_rate(name: str) -> None:
    _, _, decisions = _run(make_sampler(name, target_rate=0.05), 5000, 0.01, burn_in=0)
    rates = {round(d.pi_negative, 6) for d in decisions[1000:]}
    assert len(rates) > 100


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_coin_is_deterministic_per_salt(name: str) -> None:
    a = _run(make_sampler(name, target_rate=0.1, salt=7), 3000, 0.01, 0)[2]
    b = _run(make_sampler(name, target_rate=0.1, salt=7), 3000, 0.01, 0)[2]
    c = _run(make_sampler(name, target_rate=0.1, salt=8), 3000, 0.01, 0)[2]
    assert [d.keep for d in a] == [d.keep for d in b]
    assert [d.pi for d in a] == [d.pi for d in b]
    assert [d.keep for d in a] != [d.keep for d in c]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_state_round_trip(name: str) -> None:
    import json

    first = make_sampler(name, target_rate=0.05, salt=3)
    stream = list(_stream(4000, 0.01))
    for eid, y, p, x in stream[:2000]:
        first.decide(eid, y, p, x)
    second = make_sampler(name, target_rate=0.05, salt=3)
    second.load_state(json.loads(json.dumps(first.to_state())))
    for eid, y, p, x in stream[2000:]:
        d1, d2 = first.decide(eid, y, p, x), second.decide(eid, y, p, x)
        assert d1.keep == d2.keep
        assert d1.pi == pytest.approx(d2.pi, rel=1e-5)


@pytest.mark.parametrize("name", ["fisher", "fisher-mix", "leverage"])
def test_fisher_state_refuses_bad_content(name: str) -> None:
    sampler = make_sampler(name, target_rate=0.05, hash_bits=8)
    for eid, y, p, x in _stream(500, 0.01):
        sampler.decide(eid, y, p, {k & 255: v for k, v in x.items()})
    good = sampler.to_state()
    with pytest.raises(StateError):
        make_sampler(name, target_rate=0.05, hash_bits=10).load_state(good)
    bad = dict(good, fisher_val={**good["fisher_val"], "b64": "AAAA"})
    with pytest.raises(StateError):
        make_sampler(name, target_rate=0.05, hash_bits=8).load_state(bad)
    with pytest.raises(ValueError):
        make_sampler(name, target_rate=0.05, hash_bits=8).load_state(dict(good, kappa=-5.0))
    with pytest.raises(ValueError):
        make_sampler(name, target_rate=0.05, hash_bits=8).load_state(dict(good, n_pos=-1.0))


def test_base_state_refuses_bad_counts() -> None:
    state = dict(make_sampler("negative").to_state(), n=float("nan"))
    with pytest.raises(ValueError):
        make_sampler("negative").load_state(state)


def test_unknown_sampler_named() -> None:
    with pytest.raises(ValueError, match="fisher"):
        make_sampler("nope")
