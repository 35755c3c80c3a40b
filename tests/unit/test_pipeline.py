"""The per-partition pipeline (models/pipeline.py): event time and labels end to end
without Kafka, and the same records from the worker's agent and from offline scoring."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from pathlib import Path

import orjson
import pytest

from models.events import decode_event, validate_event
from models.labels import LabelAttribution
from models.pipeline import Outcome, PartitionPipeline, PipelineConfig
from stream_app.datasets import read_events, taobao_path
from stream_app.offline import process_events, score_events
from stream_app.output import partition_for

T0 = 1_511_658_000.0
WALL = 1_760_000_000.0


def wall() -> float:
    return WALL


def event(event_id, user, item, etype, ts, **extra):
    obj = {"event_id": event_id, "user_id": user, "item_id": item, "type": etype, "ts": ts}
    return validate_event({**obj, **extra}, now=math.inf)


class Host:
    """Pipelines of several partitions sharing one label store, as a worker runs them."""

    def __init__(self, partitions: int = 4, config: PipelineConfig | None = None) -> None:
        self.partitions = partitions
        self.config = config or PipelineConfig(target_keep_rate=1.0)
        self.labels = self.config.new_labels({})
        self.pipes = [
            PartitionPipeline(p, self.config, labels=self.labels, wall=wall)
            for p in range(partitions)
        ]
        self.outcomes: list[Outcome] = []

    def send(self, ev) -> Outcome:
        p = partition_for(ev.user_id.encode(), self.partitions)
        out = self.pipes[p].process(ev)
        self.outcomes.append(out)
        return out

    def resolved(self):
        return [r for out in self.outcomes for r in out.resolved]


def test_far_future_events_of_a_few_users_close_no_one_elses_window():
    """The issue's scenario without a broker: 200 background users and 12 victims at
    2017 times, 40 users at now + 20 h, then the victims' carts 60 s after their views."""
    host = Host()
    for i in range(200):
        host.send(event(f"bg-{i}", f"bg-{i}", f"bg-item-{i % 20}", "view", T0 + i / 2))
    for i in range(12):
        host.send(event(f"view-{i}", f"victim-{i}", f"item-{i}", "view", T0 + 100 + i))
    clocks = [pipe.engine.clock.time for pipe in host.pipes]
    for i in range(40):
        out = host.send(event(f"attack-{i}", f"attacker-{i}", "x", "view", WALL + 72_000 + i))
        assert out.capped  # beyond the wall clock + 5 min: counted at the cap
    assert host.resolved() == []
    # each clock stays among the honest users' times (at most the latest of them)
    after = [pipe.engine.clock.time for pipe in host.pipes]
    assert all(a <= b <= T0 + 111 for a, b in zip(clocks, after, strict=True)), after
    for i in range(12):
        host.send(event(f"cart-{i}", f"victim-{i}", f"item-{i}", "cart", T0 + 160 + i))
    resolved = host.resolved()
    assert sorted(r.event.event_id for r in resolved) == sorted(f"view-{i}" for i in range(12))
    assert {(r.label, r.reason) for r in resolved} == {(1, "converted")}
    # all of them are published as positives (a positive is always kept)
    samples = [s for out in host.outcomes for _, s in out.training]
    assert sorted(s["event_id"] for s in samples) == sorted(f"view-{i}" for i in range(12))
    assert all(s["label_source"] == "converted" and s["label"] == 1 for s in samples)


def test_a_skewed_client_closes_only_its_own_windows():
    host = Host(partitions=1)
    host.send(event("a-view", "a", "i1", "view", T0))
    host.send(event("b-view", "b", "i1", "view", T0))
    out = host.send(event("a-later", "a", "i2", "click", T0 + 20 * 3600))  # a's clock is off
    assert [(r.event.event_id, r.reason) for r in out.resolved] == [("a-view", "window_closed")]
    out = host.send(event("b-cart", "b", "i1", "cart", T0 + 600))
    assert [(r.event.event_id, r.reason) for r in out.resolved] == [("b-view", "converted")]


def test_the_partition_clock_closes_the_windows_of_users_who_do_not_come_back():
    host = Host(partitions=1)
    host.send(event("gone", "gone", "i", "view", T0))
    rng = random.Random(2)
    closed_at = None
    for i in range(3000):
        out = host.send(event(f"e{i}", f"u{rng.randint(0, 99)}", "j", "click", T0 + i))
        if any(r.event.event_id == "gone" for r in out.resolved):
            closed_at = T0 + i
            break
    assert closed_at is not None  # resolved, as a negative, once most users passed it
    (r,) = [r for r in host.resolved() if r.event.event_id == "gone"]
    assert (r.label, r.reason) == (0, "window_closed")
    # closed once the 32nd latest user time passed its deadline: a little after it
    assert T0 + 1800 < closed_at < T0 + 1800 + 120


def test_a_worker_clock_hours_behind_resolves_late_and_loses_nothing():
    """Live events (event time = real time), a worker whose clock is 3 h slow: every event
    is scored with its own ts and counted as capped; windows close 3 h late; nothing is
    rejected or lost."""
    real = WALL
    config = PipelineConfig(target_keep_rate=1.0)
    pipe = PartitionPipeline(0, config, labels={}, wall=lambda: real - 3 * 3600)
    outs = []
    for i in range(1000):
        ev = event(f"e{i}", f"u{i % 50}", f"i{i % 7}", "view", real + 2 * i)
        outs.append(pipe.process(ev))
    assert [o.record["ts"] for o in outs] == [real + 2 * i for i in range(1000)]
    assert all(o.capped for o in outs)
    assert pipe.engine.clock.capped == 1000
    assert pipe.engine.watermark == real - 3 * 3600 + 300
    assert sum(len(o.resolved) for o in outs) == 0  # late, not lost: all still pending
    assert pipe.labels.pending(0) == 1000


def _stream(n: int, seed: int = 1) -> list:
    rng = random.Random(seed)
    out = []
    ts = T0
    recent: list[tuple[str, str]] = []
    for i in range(n):
        ts += rng.randint(0, 4)
        user, item = f"u{rng.randint(0, 150)}", f"i{rng.randint(0, 60)}"
        etype = rng.choice(["view", "view", "click", "impression", "cart", "purchase"])
        if etype in ("cart", "purchase") and recent and rng.random() < 0.5:
            user, item = rng.choice(recent[-20:])  # converts something seen lately
        elif etype not in ("cart", "purchase"):
            recent.append((user, item))
        obj = {"event_id": f"s{i}", "user_id": user, "item_id": item, "type": etype, "ts": ts}
        if rng.random() < 0.1:
            obj["label"] = rng.randint(0, 1)
        out.append(obj)
    return out


def test_same_events_same_decisions_and_a_restart_continues_them():
    events = [validate_event(o, now=math.inf) for o in _stream(4000)]
    config = PipelineConfig(target_keep_rate=0.3, max_pending_per_user=8)

    def run(evs, pipe):
        return [
            (o.record, o.training, [(r.event.event_id, r.reason) for r in o.resolved], o.decided)
            for o in map(pipe.process, evs)
        ]

    a = PartitionPipeline(0, config, labels={}, wall=wall)
    full = run(events, a)
    b = PartitionPipeline(0, config, labels={}, wall=wall)
    assert run(events, b) == full
    # a restart after 2,500 events: model snapshot and label store (JSON) are all that
    # survives; the restored pipeline makes the same decisions as the uninterrupted one
    store: dict = {}
    first = PartitionPipeline(0, config, labels=store, wall=wall)
    head = run(events[:2500], first)
    state = orjson.loads(orjson.dumps(first.engine.to_state()))
    engine = config.new_engine(wall)
    engine.load_state(state)
    second = PartitionPipeline(
        0, config, labels=orjson.loads(orjson.dumps(store)), engine=engine, wall=wall
    )
    # the sampler restored as it was tuned
    assert second.engine.sampler.to_state() == a_state_after(events[:2500], config)
    tail = run(events[2500:], second)

    def decisions(rows):  # version differs: the snapshot bumped it
        return [
            (r["event_id"], r["importance"], r["p"], r["model"]["updates"], t, res, d)
            for r, t, res, d in rows
        ]

    assert decisions(head + tail) == decisions(full)
    assert sum(len(d) for *_, d in full) > 1000  # labelled examples decided
    assert 0 < sum(len(t) for _, t, _, _ in full) < sum(len(d) for *_, d in full)


def a_state_after(events, config):
    pipe = PartitionPipeline(0, config, labels={}, wall=wall)
    for ev in events:
        pipe.process(ev)
    return pipe.engine.sampler.to_state()


def test_snapshot_cadence():
    ticks = [0.0]
    config = PipelineConfig(snapshot_every=3, snapshot_interval_s=10.0)
    pipe = PartitionPipeline(0, config, labels={}, wall=wall, monotonic=lambda: ticks[0])
    assert not pipe.due()
    for i in range(3):
        pipe.process(event(f"e{i}", "u", "i", "view", T0 + i))
    assert pipe.due()
    state = pipe.snapshot_state()
    assert state["meta"]["version"] == 1 and "clock" in state["meta"]
    assert not pipe.due()
    pipe.process(event("e3", "u", "i", "view", T0 + 3))
    assert not pipe.due()
    ticks[0] = 10.0
    assert pipe.due()


def test_labels_may_be_a_store_or_a_shared_attribution():
    shared = LabelAttribution({}, window_s=60)
    pipe = PartitionPipeline(3, PipelineConfig(), labels=shared, wall=wall)
    assert pipe.labels is shared
    pipe.process(event("v", "u", "i", "view", T0))
    assert shared.pending(3) == 1
    assert PartitionPipeline(0, labels={}).labels.window_s == 1800.0


@pytest.mark.parametrize("name", ["clock_users", "clock_recent_users", "clock_max_skew_s"])
def test_config_refuses_nonsense_clock_settings(name):
    with pytest.raises(ValueError, match=name):
        PipelineConfig(**{name: -1})


# -- the worker's agent and offline scoring give the same records ------------------------


def _files(tmp_path: Path) -> list[tuple[str, Path, str]]:
    synthetic = tmp_path / "events.jsonl"
    lines = [orjson.dumps(o) for o in _stream(3000, seed=9)]
    lines[100:100] = [b"not json", b'{"user_id": 1, "item_id": 2, "type": "teleport", "ts": 1}']
    synthetic.write_bytes(b"\n".join(lines) + b"\n")
    files = [("synthetic", synthetic, "jsonl")]
    path = taobao_path()
    if path is not None:
        files.append(("taobao", path, "taobao"))
    return files


@pytest.mark.parametrize("which", ["synthetic", "taobao"])
def test_agent_and_offline_scoring_publish_the_same_records(which, tmp_path, monkeypatch):
    """A file scored offline, and the same file sent through the worker's score agent
    (``agents.score.process``, as the decode agent feeds it: JSON message payloads, in
    place or through the by-user hop) as one partition, give identical score records and
    identical training records, in the same order."""
    files = {name: (path, fmt) for name, path, fmt in _files(tmp_path)}
    if which not in files:
        pytest.skip("../shared/data/taobao_userbehavior_110k.csv absent: Taobao file skipped")
    path, fmt = files[which]
    limit = 6000
    import agents.score as score

    # a 2-minute window: 6,000 Taobao events span about 8 minutes
    config = dataclasses.replace(
        score.CONFIG,
        target_keep_rate=0.3,
        attribution_window_s=120.0,
        snapshot_every=10**9,
        snapshot_interval_s=math.inf,
    )
    sent: list[tuple[str, bytes, bytes | None, int]] = []
    monkeypatch.setattr(
        score.output,
        "send",
        lambda topic, value, key=None, partition=-1: sent.append((topic, value, key, partition)),
    )
    monkeypatch.setattr(score, "read_snapshot", lambda *a, **k: None)
    monkeypatch.setattr(score, "CONFIG", config)
    monkeypatch.setattr(score, "WALL", wall)
    monkeypatch.setattr(score, "partition_models", {})
    clocks: list[float] = []
    kept_rolled: list[str] = []

    def observe(partition, record, clock):
        if "label_source" in record:  # a kept example, counted as kept by the rolling tables
            kept_rolled.append(record["event_id"])
        else:
            clocks.append(clock)

    monkeypatch.setattr(score.rolling, "observe", observe)
    labels = config.new_labels(score.labels.store)  # the worker's changelog-backed store
    monkeypatch.setattr(score, "labels", labels)
    score.pending_table.data.clear()

    async def drive() -> int:
        n = 0
        for i, obj in enumerate(read_events(path, fmt, limit=limit)):
            raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
            try:
                ev = decode_event(raw)  # as agents/decode.py
            except Exception:
                continue
            n += 1
            if i % 2:
                await score.process(0, ev)  # scored in place
            else:  # through the by-user topic
                await score.score_value(0, orjson.dumps(ev.to_dict()), "test")
        return n

    try:
        n = asyncio.run(drive())
    finally:
        score.pending_table.data.clear()
    agent_scores = [orjson.loads(v) for t, v, _, _ in sent if t == score.SCORES]
    agent_training = [(k, orjson.loads(v)) for t, v, k, _ in sent if t == score.TRAINING]
    assert len(agent_scores) == n > 1000

    outcomes = list(process_events(read_events(path, fmt, limit=limit), config, wall=wall))
    offline = [o for o in outcomes if isinstance(o, Outcome)]
    assert [o.record for o in offline] == agent_scores
    offline_training = [(u.encode(), s) for o in offline for u, s in o.training]
    assert offline_training == agent_training
    assert len(agent_training) > 100
    assert kept_rolled == [s["event_id"] for _, s in agent_training]
    sources = {s["label_source"] for _, s in agent_training}
    assert "window_closed" in sources, sources
    if which == "synthetic":  # (within 2 minutes, Taobao users rarely convert)
        assert {"converted", "explicit"} <= sources
    assert [o.clock for o in offline] == clocks  # the rolling tables got the same clock
    # ``importance score``'s records are the same without the partition field
    records = list(score_events(read_events(path, fmt, limit=limit), config=config, wall=wall))
    valid = [r for r in records if "error" not in r]
    assert valid == [{k: v for k, v in r.items() if k != "partition"} for r in agent_scores]
    if which == "synthetic":
        assert [r["error"] for r in records if "error" in r] == ["not_json", "unknown_type"]
