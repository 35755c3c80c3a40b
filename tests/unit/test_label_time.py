"""Label-time decisions in the per-partition pipeline (models/pipeline.py): when each
training example is decided, with what, and what its record says."""

from __future__ import annotations

import math
import os
import random

import orjson
import pytest

from models.events import validate_event
from models.label_sampling import SAMPLERS
from models.pipeline import PartitionPipeline, PipelineConfig
from models.sampling import uniform_from_id

T0 = 1_511_658_000.0


def wall() -> float:
    return 1_760_000_000.0


def event(event_id, user, item, etype, ts, **extra):
    obj = {"event_id": event_id, "user_id": user, "item_id": item, "type": etype, "ts": ts}
    return validate_event({**obj, **extra}, now=math.inf)


def pipe(**config) -> PartitionPipeline:
    return PartitionPipeline(0, PipelineConfig(**config), labels={}, wall=wall)


def stream(n: int, seed: int = 1, explicit: float = 0.1) -> list:
    """Views, clicks and impressions of 150 users and 60 items; some converted by the
    same user soon after, some carrying an explicit label."""
    rng = random.Random(seed)
    out, recent, ts = [], [], T0
    for i in range(n):
        ts += rng.randint(0, 4)
        user, item = f"u{rng.randint(0, 150)}", f"i{rng.randint(0, 60)}"
        etype = rng.choice(["view", "view", "click", "impression", "cart"])
        if etype == "cart" and recent and rng.random() < 0.5:
            user, item = rng.choice(recent[-20:])
        elif etype != "cart":
            recent.append((user, item))
        extra = {"label": int(rng.random() < 0.2)} if rng.random() < explicit else {}
        out.append(event(f"s{i}", user, item, etype, ts, **extra))
    return out


def test_an_explicit_label_is_decided_at_once_with_p_from_before_learning():
    p = pipe(target_keep_rate=1.0)
    out = p.process(event("x1", "u", "i", "view", T0, label=1))
    assert [(eid, label) for eid, label, _ in out.decided] == [("x1", 1)]
    ((_, record),) = out.training
    assert record["label"] == 1 and record["label_source"] == "explicit"
    assert record["p"] == pytest.approx(out.record["p"], abs=1e-6)  # scored before learning
    assert record["p"] == 0.5  # an untrained learner
    assert p.engine.updates == 1 and p.labels.pending(0) == 0  # learned, not tracked


def test_an_exposure_is_decided_when_its_label_resolves():
    p = pipe(target_keep_rate=1.0, attribution_window_s=600, max_pending_per_user=2)
    out = p.process(event("v1", "u", "i1", "view", T0))
    assert out.decided == [] and out.training == [] and p.labels.pending(0) == 1
    # what the decision needs is held, and nothing more (the event is the store's)
    (entry,) = p.labels.store.values()
    assert set(entry["info"]) == {"p", "importance"}
    assert entry["info"]["p"] == 0.5
    p_scored = out.record["p"]
    # another event that learns something in between: p in the record stays the p the
    # exposure was scored with
    p.process(event("x", "w", "i1", "view", T0 + 1, label=1))
    out = p.process(event("c1", "u", "i1", "cart", T0 + 60))
    assert [(eid, label) for eid, label, _ in out.decided] == [("v1", 1)]
    ((_, record),) = out.training
    assert record["label_source"] == "converted" and record["p"] == pytest.approx(p_scored)
    # window closed: decided on a later event of the user past the deadline
    p.process(event("v2", "u", "i2", "view", T0 + 100))
    out = p.process(event("v3", "u", "i3", "view", T0 + 800))
    assert [(eid, label) for eid, label, _ in out.decided] == [("v2", 0)]
    assert [r["label_source"] for _, r in out.training] == ["window_closed"]
    # evicted: past the user's bound, the oldest is closed as a negative and decided
    p.process(event("v4", "u", "i4", "view", T0 + 801))
    out = p.process(event("v5", "u", "i5", "view", T0 + 802))
    assert [(eid, label) for eid, label, _ in out.decided] == [("v3", 0)]
    assert [r["label_source"] for _, r in out.training] == ["evicted"]


def test_events_without_a_label_of_their_own_make_no_training_record():
    p = pipe(target_keep_rate=1.0)
    out = p.process(event("c", "u", "i", "cart", T0))  # nothing of the user's pending
    assert out.decided == [] and out.training == []


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"uniform"}))
def test_every_positive_is_kept(name):
    p = pipe(target_keep_rate=0.05, importance_sampler=name, attribution_window_s=300)
    decided = [d for ev in stream(6000) for d in p.process(ev).decided]
    positives = [(eid, d) for eid, label, d in decided if label == 1]
    negatives = [d for _, label, d in decided if label == 0]
    assert len(positives) > 200 and len(negatives) > 2000
    assert all(d.keep and d.pi == d.pi_positive == 1.0 for _, d in positives)
    assert any(not d.keep for d in negatives)


def test_uniform_keeps_positives_at_the_target_rate_too():
    p = pipe(target_keep_rate=0.3, importance_sampler="uniform", attribution_window_s=300)
    decided = [d for ev in stream(6000) for d in p.process(ev).decided]
    positives = [d for _, label, d in decided if label == 1]
    assert all(d.pi_positive == d.pi_negative == 0.3 and d.offset == 0.0 for d in positives)
    assert 0 < sum(d.keep for d in positives) < len(positives)


@pytest.mark.parametrize("target", [0.2, 0.4, 0.7])  # positives: 13 %
def test_the_kept_fraction_of_labelled_examples_follows_the_target(target):
    p = pipe(target_keep_rate=target, attribution_window_s=300)
    outs = [p.process(ev) for ev in stream(12_000, seed=4)]
    decided = [d for out in outs for d in out.decided][2000:]
    kept = sum(d.keep for _, _, d in decided) / len(decided)
    assert abs(kept - target) < 0.03, (kept, target)
    # and what is published is exactly the kept examples
    assert sum(len(o.training) for o in outs) == sum(d.keep for o in outs for *_, d in o.decided)


def test_the_coin_is_the_event_id_and_the_salt():
    events = stream(4000, seed=5)

    def decisions(salt):
        p = pipe(target_keep_rate=0.2, importance_sampler_salt=salt, attribution_window_s=300)
        return {eid: d for ev in events for eid, _, d in p.process(ev).decided}

    a, b, c = decisions(0), decisions(0), decisions(7)
    assert a == b
    for eid, d in c.items():
        assert d.keep == (uniform_from_id(eid, 7) < d.pi)
    # another salt: other negatives kept, the same positives
    assert {e for e, d in a.items() if d.keep} != {e for e, d in c.items() if d.keep}
    assert {e for e, d in a.items() if d.pi == 1.0} == {e for e, d in c.items() if d.pi == 1.0}


def test_a_snapshot_restores_the_sampler_as_it_was_tuned():
    config = PipelineConfig(target_keep_rate=0.1, attribution_window_s=300)
    events = stream(6000, seed=6)
    first = PartitionPipeline(0, config, labels={}, wall=wall)
    for ev in events[:4000]:
        first.process(ev)
    tuned = first.engine.sampler.to_state()
    assert tuned["decided"] > 500
    fresh = config.new_sampler().to_state()
    assert (tuned["n"], tuned["n_pos"]) != (fresh["n"], fresh["n_pos"])
    state = orjson.loads(orjson.dumps(first.snapshot_state()))
    engine = config.new_engine(wall)
    engine.load_state(state)
    assert engine.sampler.to_state() == tuned
    store = orjson.loads(orjson.dumps(first.labels.store))
    second = PartitionPipeline(0, config, labels=store, engine=engine, wall=wall)
    for ev in events[4000:]:
        assert second.process(ev).decided == first.process(ev).decided


def test_a_snapshot_of_another_sampler_starts_this_one_afresh():
    a = PipelineConfig(target_keep_rate=0.1, importance_sampler="negative")
    b = PipelineConfig(target_keep_rate=0.1, importance_sampler="uniform")
    p = PartitionPipeline(0, a, labels={}, wall=wall)
    for ev in stream(2000, seed=8):
        p.process(ev)
    engine = b.new_engine(wall)
    engine.load_state(orjson.loads(orjson.dumps(p.snapshot_state())))
    assert engine.sampler.name == "uniform"
    assert engine.sampler.to_state() == b.new_sampler().to_state()
    assert engine.updates == p.engine.updates  # the rest of the model is restored


def test_exposures_tracked_by_an_earlier_version_are_decided_too():
    """Earlier versions held the whole score record of a kept exposure, and only p (and
    keep: false) of the others: both resolve and are decided."""
    p = pipe(target_keep_rate=1.0, attribution_window_s=600)
    old = {"p": 0.25, "keep": True, "importance": 0.8, "weight": 1.0, "keep_probability": 1.0}
    for eid, item, info in (("o1", "i1", old), ("o2", "i2", {"p": 0.125, "keep": False})):
        ev = event(eid, "u", item, "view", T0)
        p.labels.track(0, ev, info)
    out = p.process(event("c1", "u", "i1", "cart", T0 + 10))
    ((_, record),) = out.training
    assert (record["event_id"], record["p"], record["importance"]) == ("o1", 0.25, 0.8)
    out = p.process(event("c2", "u", "i2", "cart", T0 + 20))
    ((_, record),) = out.training
    assert (record["event_id"], record["p"], record["importance"]) == ("o2", 0.125, None)


def test_an_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        PipelineConfig(importance_sampler="nope")
    with pytest.raises(ValueError, match="salt"):
        PipelineConfig(importance_sampler_salt=-1)


def test_importance_score_writes_the_training_records(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from stream_app.cli import main
    from stream_app.offline import training_events

    for name in list(os.environ):
        if name.startswith("IMPORTANCE_"):
            monkeypatch.delenv(name)
    events = [ev.to_dict() for ev in stream(3000, seed=9)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))

    def run(*options):
        out, train = tmp_path / "scores.jsonl", tmp_path / "train.jsonl"
        args = ["score", str(path), "-o", str(out), "--training", str(train), *options]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert len(out.read_bytes().splitlines()) == len(events)
        return [orjson.loads(line) for line in train.read_bytes().splitlines()], result.output

    records, said = run("--target-rate", "0.3", "--salt", "5")
    config = PipelineConfig(target_keep_rate=0.3, importance_sampler_salt=5)
    assert records == list(training_events(events, config))
    assert "kept" in said and "'fisher-mix'" in said
    other, _ = run("--target-rate", "0.3", "--salt", "6")
    assert {r["event_id"] for r in other} != {r["event_id"] for r in records}
    uniform, _ = run("--sampler", "uniform")
    assert {r["sampler"] for r in uniform} == {"uniform"}
    result = CliRunner().invoke(main, ["score", str(path), "-o", "x", "--sampler", "best"])
    assert result.exit_code == 2
    assert "--sampler (or IMPORTANCE_SAMPLER)='best': unknown sampler 'best'" in result.output
    # the trainer's design (docs/training.md): the same records as the pipeline with it
    designed, _ = run("--target-rate", "0.3", "--sampler-features", "item:3,category")
    config = PipelineConfig(target_keep_rate=0.3, importance_sampler_features="item:3,category")
    assert designed == list(training_events(events, config)) and designed != records
    result = CliRunner().invoke(
        main, ["score", str(path), "-o", "x", "--sampler", "negative", "--sampler-features", "item"]
    )
    assert result.exit_code == 2
    assert "--sampler (or IMPORTANCE_SAMPLER)='negative' has no design" in result.output
