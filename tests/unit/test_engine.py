"""The importance engine, its state, offline scoring, and the plain-data array codec."""

from __future__ import annotations

import base64
import copy
import subprocess
import sys

import numpy as np
import orjson
import pytest

from models.clock import EventClock
from models.engine import ImportanceEngine
from models.events import ERROR_CODES, validate_event
from models.pipeline import PipelineConfig
from models.sampling import uniform_from_id
from models.state import STATE_SCHEMA, StateError, decode_array, encode_array
from stream_app.offline import process_events, score_events

TS = 1_511_658_000

#: The output contract (docs/contracts.md, "Output contract"); the worker adds ``partition``.
RECORD_FIELDS = {
    "event_id",
    "user_id",
    "item_id",
    "category_id",
    "type",
    "ts",
    "importance",
    "scores",
    "p",
    "label",
    "model",
    "scored_at",
}


def make_events(n: int, seed: int, *, labelled_every: int = 0):
    """A synthetic stream over 30 users and 60 items; even items tend to convert."""
    rng = np.random.default_rng(seed)
    types = ["view", "click", "impression", "cart", "fav", "purchase"]
    out = []
    for i in range(n):
        item = int(rng.integers(60))
        obj = {
            "event_id": f"s{seed}-{i}",
            "user_id": int(rng.integers(30)),
            "item_id": item,
            "category_id": item % 7,
            "type": str(rng.choice(types, p=[0.5, 0.2, 0.15, 0.07, 0.04, 0.04])),
            "ts": TS + 5 * i + int(rng.integers(0, 3)),
            "position": int(rng.integers(1, 20)),
            "price": float(rng.uniform(0, 500)),
        }
        if labelled_every and i % labelled_every == 0:
            obj["label"] = int(item % 2 == 0)
        out.append(validate_event(obj, now=float("inf")))
    return out


def check_record(rec: dict) -> None:
    assert set(rec) == RECORD_FIELDS
    assert isinstance(rec["event_id"], str) and rec["event_id"]
    assert isinstance(rec["user_id"], str) and isinstance(rec["item_id"], str)
    assert rec["type"] in {"view", "click", "cart", "fav", "purchase", "impression"}
    assert isinstance(rec["ts"], float)
    assert 0.0 <= rec["importance"] <= 1.0
    assert set(rec["scores"]) == {"behavior", "logistic", "knn"}
    assert all(0.0 <= v <= 1.0 for v in rec["scores"].values())
    assert 0.0 <= rec["p"] <= 1.0
    assert rec["label"] in (None, 0, 1)
    assert set(rec["model"]) == {"updates", "version"}
    assert isinstance(rec["model"]["updates"], int) and rec["model"]["updates"] >= 0
    assert isinstance(rec["model"]["version"], int) and rec["model"]["version"] >= 0
    assert isinstance(rec["scored_at"], float)
    orjson.dumps(rec)  # JSON-safe


def test_record_fields_and_ranges():
    engine = ImportanceEngine()
    for ev in make_events(400, seed=1, labelled_every=3):
        scored = engine.score(ev)
        rec = scored.record(updates=engine.updates, version=engine.version, scored_at=123.5)
        check_record(rec)
        assert rec["event_id"] == ev.event_id
        assert rec["user_id"] == ev.user_id and rec["item_id"] == ev.item_id
        assert rec["ts"] == ev.ts and rec["type"] == ev.type
        assert rec["label"] == ev.label
        assert rec["scored_at"] == 123.5
        assert rec["importance"] == round(scored.importance, 6)
    rec = engine.score(make_events(1, seed=2)[0]).record(updates=0, version=0)
    check_record(rec)
    assert rec["scored_at"] > 1.6e9  # defaults to the wall clock


def test_explicit_label_is_learned_at_once():
    engine = ImportanceEngine()
    unlabelled, labelled = make_events(2, seed=3)
    engine.score(unlabelled)
    assert engine.updates == 0
    ev = validate_event({**labelled.to_dict(), "label": 1}, now=float("inf"))
    scored = engine.score(ev)
    assert engine.updates == 1
    assert engine.knn.classifier.n_seen == 1
    # Scored with the realised gradient |y - p|, p taken before learning.
    assert scored.scores["logistic"] == pytest.approx(1.0 - scored.p)
    # The learner moved towards the label.
    assert engine.logistic.proba(engine.features(ev)) > scored.p


def test_learn_after_the_fact():
    engine = ImportanceEngine()
    ev = make_events(1, seed=4)[0]
    scored = engine.score(ev)
    assert scored.scores["logistic"] == pytest.approx(4 * scored.p * (1 - scored.p))
    for _ in range(5):
        engine.learn(ev, 0)
    assert engine.updates == 5
    assert engine.logistic.proba(engine.features(ev)) < scored.p


def test_watermark_and_lateness():
    engine = ImportanceEngine()
    evs = make_events(3, seed=5)
    engine.score(evs[2])
    assert engine.watermark == evs[2].ts
    engine.score(evs[0])  # late: the watermark does not go back
    assert engine.watermark == evs[2].ts
    assert engine.features(evs[0]).lateness_s == evs[2].ts - evs[0].ts
    assert engine.features(evs[2]).lateness_s == 0.0
    assert engine.seen == 2


def test_scoring_is_deterministic_and_the_coin_is_the_event_id():
    evs = make_events(500, seed=6, labelled_every=4)
    a, b = ImportanceEngine(), ImportanceEngine()
    sa = [a.score(ev) for ev in evs]
    sb = [b.score(ev) for ev in evs]
    ra = [s.record(updates=0, version=0, scored_at=0.0) for s in sa]
    rb = [s.record(updates=0, version=0, scored_at=0.0) for s in sb]
    assert ra == rb  # a replay of the same stream makes the same records and decisions
    assert [s.decision for s in sa] == [s.decision for s in sb]
    decided = [(ev, s.decision) for ev, s in zip(evs, sa, strict=True) if ev.label is not None]
    assert all(s.decision is None for ev, s in zip(evs, sa, strict=True) if ev.label is None)
    for ev, d in decided:
        assert d.keep == (uniform_from_id(ev.event_id) < d.pi)
        assert d.pi == (d.pi_positive if ev.label else d.pi_negative)
        if ev.label:
            assert d.keep and d.pi == 1.0  # every positive kept
    negatives = [d.keep for ev, d in decided if not ev.label]
    assert 0 < sum(negatives) < len(negatives)


def test_resolve_decides_with_the_given_p_then_learns():
    engine = ImportanceEngine(target_rate=0.05)
    ev = make_events(1, seed=11)[0]
    scored = engine.score(ev)
    before = engine.sampler.decided
    d = engine.resolve(ev, 0, scored.p)
    assert engine.sampler.decided == before + 1 and engine.updates == 1
    assert d.pi == d.pi_negative < 1.0 and d.pi_positive == 1.0
    assert d.keep == (uniform_from_id(ev.event_id) < d.pi)


def _warm_engine(seed: int) -> tuple[ImportanceEngine, list]:
    engine = ImportanceEngine(knn_window=200, rank_window=256)
    evs = make_events(900, seed=seed, labelled_every=2)
    for ev in evs[:600]:
        engine.score(ev)
    return engine, evs[600:]


def test_state_round_trip_through_json_gives_identical_scores():
    a, rest = _warm_engine(seed=7)
    assert a.updates > 200
    state = orjson.loads(orjson.dumps(a.to_state()))
    assert a.version == 1
    b = ImportanceEngine(knn_window=200, rank_window=256)
    b.load_state(state)
    assert (b.updates, b.version, b.seen, b.watermark) == (
        a.updates,
        a.version,
        a.seen,
        a.watermark,
    )
    for ev in rest:
        ra, rb = a.score(ev), b.score(ev)
        assert ra.scores == rb.scores
        assert (ra.importance, ra.p, ra.decision) == (rb.importance, rb.p, rb.decision)
        if ev.label is None and ev.type in {"view", "click"}:
            assert a.resolve(ev, 1, ra.p) == b.resolve(ev, 1, rb.p)
    assert a.updates == b.updates
    # Each snapshot bumps the version.
    assert a.to_state()["meta"]["version"] == 2


def test_state_parts_are_json_objects():
    engine, _ = _warm_engine(seed=8)
    state = engine.to_state()
    assert set(state) == {"meta", "logistic", "knn", "behavior", "sampler"}
    assert state["sampler"]["name"] == "fisher-mix"
    for part in state.values():
        assert isinstance(orjson.loads(orjson.dumps(part)), dict)
    assert state["meta"]["schema"] == STATE_SCHEMA


def _garbage_states():
    good = orjson.loads(orjson.dumps(_warm_engine(seed=9)[0].to_state()))

    def mutated(fn):
        s = copy.deepcopy(good)
        fn(s)
        return s

    return {
        "none": None,
        "string": "garbage",
        "number": 42,
        "list": [1, 2, 3],
        "empty": {},
        "meta_string": {**good, "meta": "x"},
        "meta_list": {**good, "meta": []},
        "wrong_schema": mutated(lambda s: s["meta"].update(schema=STATE_SCHEMA + 1)),
        "no_schema": mutated(lambda s: s["meta"].pop("schema")),
        "wrong_hash_bits": mutated(lambda s: s["meta"].update(hash_bits=10)),
        "missing_logistic": mutated(lambda s: s.pop("logistic")),
        "missing_knn": mutated(lambda s: s.pop("knn")),
        "knn_string": mutated(lambda s: s.update(knn="x")),
        "knn_list": mutated(lambda s: s.update(knn=[])),
        "knn_wrong_type": mutated(lambda s: s["knn"].update(type="Pickle")),
        "behavior_bad_b64": mutated(lambda s: s["behavior"]["items"].update(b64="***")),
        "behavior_object_dtype": mutated(lambda s: s["behavior"]["items"].update(dtype="object")),
        "behavior_wrong_buckets": mutated(
            lambda s: s["behavior"].update(items=encode_array(np.zeros(8, np.float32)))
        ),
        "logistic_length_mismatch": mutated(
            lambda s: s["logistic"].update(w=encode_array(np.zeros(1, np.float64)))
        ),
        "rank_values_not_list": mutated(lambda s: s["meta"]["rank"].update(values=5)),
        "sampler_list": mutated(lambda s: s.update(sampler=[])),
        "sampler_counts": mutated(lambda s: s["sampler"].update(n_pos=-1.0)),
        "version_string": mutated(lambda s: s["meta"].update(version="v1")),
        "huge_shape": mutated(lambda s: s["behavior"]["items"].update(shape=[1e300])),
        "wrapping_shape": mutated(lambda s: s["logistic"]["idx"].update(shape=[2**62, 4], b64="")),
    }


GARBAGE = _garbage_states()


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_load_state_rejects_garbage_with_state_error(name):
    with pytest.raises(StateError):
        ImportanceEngine(knn_window=200, rank_window=256).load_state(GARBAGE[name])


# --------------------------------------------------------------------------------------
# Offline scoring
# --------------------------------------------------------------------------------------


def _offline_stream():
    """Exposures, some converted within the window, some not, and a few invalid
    messages; time runs far enough that all early windows close."""
    out: list = []
    t = TS
    for u in range(20):
        out.append({"event_id": f"v{u}", "user_id": u, "item_id": u, "type": "pv", "ts": t})
        t += 10
        if u % 2 == 0:  # half convert
            out.append(
                {"event_id": f"c{u}", "user_id": u, "item_id": u, "type": "cart", "ts": t + 60}
            )
    out.append(b"not json at all")
    out.append(b'{"user_id": 1, "item_id": 2, "type": "teleport", "ts": 1511658000}')
    out.append({"user_id": 1, "item_id": 2, "type": "pv"})
    out.append(orjson.dumps({"user_id": 3, "item_id": 4, "type": "view", "ts": t, "label": 1}))
    # Far later: closes all windows.
    late = t + 4000
    out.append({"event_id": "late", "user_id": 99, "item_id": 99, "type": "view", "ts": late})
    out.append({"event_id": "late2", "user_id": 98, "item_id": 98, "type": "view", "ts": late})
    return out


def test_offline_score_events():
    # A clock that follows the latest event time (one user suffices to move it), so the
    # two late events close every window; the default clock needs 32 users to agree
    # (tests/unit/test_pipeline.py).
    engine = ImportanceEngine(clock=EventClock(users=1))
    stream = _offline_stream()
    records = list(score_events(stream, window_s=1800.0, engine=engine))
    assert len(records) == len(stream)  # one record per message, in order
    errors = [r for r in records if "error" in r]
    scored = [r for r in records if "error" not in r]
    assert [e["error"] for e in errors] == ["not_json", "unknown_type", "missing_field"]
    assert all(e["error"] in ERROR_CODES and e["detail"] for e in errors)
    assert len(scored) == 20 + 10 + 1 + 2
    for rec in scored:
        check_record(rec)
    ids = [r["event_id"] for r in scored]
    assert len(set(ids)) == len(ids)
    # Learned: 10 conversions at once, the explicit label, then 10 negatives when the
    # late event's watermark closes the unconverted windows.
    updates = [r["model"]["updates"] for r in scored]
    assert updates == sorted(updates)  # never decreases
    by_id = {r["event_id"]: r for r in scored}
    assert by_id["late"]["model"]["updates"] == 11
    assert by_id["late2"]["model"]["updates"] == 21
    assert engine.updates == 21


def test_offline_default_engine_and_target_rate():
    stream = [r.to_dict() for r in make_events(3000, seed=10, labelled_every=2)]
    records = list(score_events(stream, target_rate=0.3))
    assert len(records) == 3000
    assert records[-1]["model"]["updates"] > 500
    # the kept fraction of labelled examples follows the target rate (explicit labels
    # here: half the events; about half of them positive, all kept)
    outcomes = list(process_events(stream, PipelineConfig(target_keep_rate=0.3)))
    decided = [d for out in outcomes for d in out.decided]
    kept = np.mean([d.keep for _, _, d in decided[500:]])
    assert 0.25 < kept < 0.35, kept


# --------------------------------------------------------------------------------------
# models.state
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", ["float32", "float64", "int32", "int64", "uint8", "uint32", "int8"]
)
def test_array_round_trip(dtype):
    a = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    b = decode_array(orjson.loads(orjson.dumps(encode_array(a))))
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    b[0, 0, 0] = 7  # a writable copy
    empty = decode_array(encode_array(np.zeros((0, 16), dtype=dtype)))
    assert empty.shape == (0, 16)


def test_big_endian_input_is_stored_little_endian():
    a = np.arange(5, dtype=">f4")
    enc = encode_array(a)
    assert base64.b64decode(enc["b64"]) == np.arange(5, dtype="<f4").tobytes()
    assert np.array_equal(decode_array(enc), np.arange(5, dtype=np.float32))


def _enc(**changes):
    return {**encode_array(np.arange(6, dtype=np.float32).reshape(2, 3)), **changes}


@pytest.mark.parametrize(
    "data",
    [
        _enc(dtype="object"),
        _enc(dtype="float16"),
        _enc(dtype="<U8"),
        _enc(dtype="V8"),
        _enc(shape=[2, 4]),  # size mismatch
        _enc(shape=[7]),
        _enc(shape=[-2, -3]),
        _enc(shape=[]),
        _enc(shape="2x3"),
        _enc(b64="this is not base64!"),
        _enc(b64="AAAA" * 5 + "A"),  # bad padding
        _enc(b64="ÄÖÜ"),
        _enc(b64=None),
        {"dtype": "float32", "shape": [1]},  # no data
        {},
        # Hostile sizes must not overflow into a match or escape as another error.
        _enc(shape=[10**30]),
        _enc(shape=[1e300]),
        _enc(shape=[2**62, 4], b64=""),  # 2**64 elements: wraps to 0 in int64
        _enc(shape=[2**62, 4, 0], b64=""),
        _enc(shape=[2**61, 2**3]),
    ],
    ids=lambda d: str(d)[:60],
)
def test_decode_array_rejects_bad_input(data):
    with pytest.raises(StateError):
        decode_array(data)


# --------------------------------------------------------------------------------------
# models/ does not import Kafka
# --------------------------------------------------------------------------------------


def test_models_import_no_kafka_or_faust():
    code = (
        "import sys\n"
        "import models, models.engine, models.labels, models.events, models.features, "
        "models.importance, models.sampling, models.state, models.scorers.base, "
        "models.scorers.behavior, models.scorers.logistic, models.scorers.knn\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} "
        "& {'faust', 'aiokafka', 'confluent_kafka', 'mode', 'kafka'})\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_import_check_would_notice_kafka():
    # Control: the same check fails when a Kafka client is imported.
    code = (
        "import sys, confluent_kafka\n"
        "bad = {m.split('.')[0] for m in sys.modules} & {'confluent_kafka'}\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "AssertionError" in proc.stderr
