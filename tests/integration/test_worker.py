"""The worker end to end on a real broker: scoring, dead letters, crash recovery."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter

import orjson
import pytest

from stream_app.datasets import read_events, taobao_path
from stream_app.replay import replay
from tests.integration.events import MALFORMED, synthetic_events

pytestmark = pytest.mark.integration

CONTRACT_FIELDS = {
    "event_id",
    "user_id",
    "item_id",
    "type",
    "ts",
    "importance",
    "scores",
    "p",
    "model",
    "scored_at",
}


def check_record(record: dict) -> None:
    """A score record as the README's output contract describes it."""
    missing = CONTRACT_FIELDS - record.keys()
    assert not missing, f"missing {missing} in {record}"
    assert 0.0 <= record["importance"] <= 1.0
    assert set(record["scores"]) == {"behavior", "logistic", "knn"}
    assert all(0.0 <= v <= 1.0 for v in record["scores"].values())
    assert 0.0 <= record["p"] <= 1.0
    assert not {"keep", "weight", "keep_probability"} & record.keys()  # decided at label time
    assert set(record["model"]) >= {"updates", "version"}
    assert record["type"] in {"view", "click", "cart", "fav", "purchase", "impression"}
    assert record["_key"] == record["user_id"].encode()


def ids_seen(expected: set[str]):
    return lambda records: expected <= {r.get("event_id") for r in records}


def test_taobao_replay_every_event_scored(bootstrap, worker_factory):
    """Replay 20,000 events of the Taobao slice; every event id comes out scored."""
    path = taobao_path()
    if path is None:
        pytest.skip("../shared/data/taobao_userbehavior_110k.csv absent: Taobao replay skipped")
    events = list(read_events(path, "taobao", limit=20_000))
    # 20,000 events span about 23 minutes of event time: a 5-minute attribution window
    # lets most exposures resolve (positive or negative) within the replay.
    worker = worker_factory(IMPORTANCE_ATTRIBUTION_WINDOW_S="300")
    worker.start()
    stats = replay(events, bootstrap, topic=worker.settings.topic_events, progress=False)
    assert stats.sent == 20_000
    expected = {e["event_id"] for e in events}
    from tests.integration.conftest import consume_all

    records = consume_all(
        bootstrap, worker.settings.topic_scores, until=ids_seen(expected), timeout=300
    )
    got = {r["event_id"] for r in records}
    assert expected <= got, f"{len(expected - got)} events never scored\n{worker.log_tail()}"
    for record in records:
        check_record(record)
    by_id = {r["event_id"]: r for r in records}
    assert by_id["tb-1"]["type"] == "view"  # the alias pv was normalised
    # Labels resolved and the learners learned while the stream ran.
    assert max(r["model"]["updates"] for r in records) > 1000
    # the kept fraction of labelled examples follows the default target of 0.2
    stats = worker_stats(worker)
    assert stats["totals"]["decided"] > 5000, stats["totals"]
    assert 0.1 < stats["keep_rate"] < 0.3, stats["keep_rate"]
    # replay keys by user with murmur2: every event was scored where it was, no re-keying
    assert stats["totals"]["scored_in_place"] == 20_000
    assert "Traceback" not in worker.log_text()


def worker_stats(worker) -> dict:
    """The worker's ``/api/stats``."""
    url = f"http://127.0.0.1:{worker.settings.web_port}/api/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_events_keyed_otherwise_take_the_by_user_hop(bootstrap, worker_factory):
    """Events keyed by item, or not keyed, or scoring in place switched off: every event
    crosses the by-user topic, and every event is still scored, with its user's key.
    (This worker also runs with rolling importance switched off: its top lists stay
    empty.)"""
    from tests.integration.conftest import consume_all, produce

    events = synthetic_events(3_000, prefix="hop")
    worker = worker_factory(IMPORTANCE_SCORE_IN_PLACE="false", IMPORTANCE_ROLLING="false")
    worker.start()
    produce(bootstrap, worker.settings.topic_events, events, key=lambda i, e: e["item_id"].encode())
    expected = {e["event_id"] for e in events}
    records = consume_all(
        bootstrap, worker.settings.topic_scores, until=ids_seen(expected), timeout=180
    )
    assert expected <= {r["event_id"] for r in records}
    for record in records:
        check_record(record)
    stats = worker_stats(worker)["totals"]
    assert stats["scored"] >= 3_000 and stats["scored_in_place"] == 0
    url = f"http://127.0.0.1:{worker.settings.web_port}/api/top/items?window=1h"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert json.loads(response.read())["entities"] == 0


def test_malformed_messages_go_to_dlq(bootstrap, worker_factory):
    """Each kind of malformed message lands in the DLQ with its code; the valid events
    around them are all scored."""
    from tests.integration.conftest import consume_all

    worker = worker_factory()
    worker.start()
    valid = synthetic_events(3000, prefix="dlq")
    payloads: list[tuple[bytes, bytes | None]] = []
    for i, event in enumerate(valid):
        payloads.append((event["user_id"].encode(), orjson.dumps(event)))
        if i % 100 == 50 and i // 100 < len(MALFORMED):
            name, raw, _ = MALFORMED[i // 100]
            payloads.append((f"bad-{name}".encode(), raw))
    assert sum(k.startswith(b"bad-") for k, _ in payloads) == len(MALFORMED) >= 15
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in payloads:
        producer.produce(worker.settings.topic_events, key=key, value=value)
        producer.poll(0)
    assert producer.flush(60) == 0

    dead = consume_all(
        bootstrap,
        worker.settings.topic_dlq,
        until=lambda recs: len(recs) >= len(MALFORMED),
        timeout=180,
    )
    by_key = {r["_key"].decode(): r for r in dead}
    for name, raw, code in MALFORMED:
        record = by_key.get(f"bad-{name}")
        assert record is not None, f"{name} not in the DLQ"
        assert record["error"] == code, (name, record["error"], record["detail"])
        assert record["topic"] == worker.settings.topic_events
        assert isinstance(record["offset"], int) and isinstance(record["partition"], int)
        assert record["detail"]
        if raw is not None and name != "invalid-utf8":
            if record.get("raw_truncated"):  # a dead letter carries at most 64 KiB
                assert record["raw_bytes"] == len(raw)
                assert raw.decode("utf-8").startswith(record["raw"])
            else:
                assert record["raw"] == raw.decode("utf-8")
    assert by_key["bad-invalid-utf8"]["raw_encoding"] == "base64"
    assert len(dead) == len(MALFORMED)

    expected = {e["event_id"] for e in valid}
    records = consume_all(
        bootstrap, worker.settings.topic_scores, until=ids_seen(expected), timeout=180
    )
    assert expected <= {r["event_id"] for r in records}
    assert worker.proc.poll() is None, "worker died on bad input"


def test_sigkill_mid_stream_loses_nothing_and_keeps_learning(bootstrap, worker_factory):
    """SIGKILL the worker mid-stream and restart it: no valid event is missing from the
    output, and the restored models continue counting updates instead of restarting."""
    from tests.integration.conftest import consume_all, produce

    # 30,000 synthetic events span about 12 hours of event time; a 4-hour attribution
    # window keeps many exposures pending across the crash.
    worker = worker_factory(IMPORTANCE_ATTRIBUTION_WINDOW_S="14400")
    worker.start()
    events = synthetic_events(30_000, prefix="kill")
    expected = {e["event_id"] for e in events}
    by_user = lambda i, e: e["user_id"].encode()  # noqa: E731
    # The first two thirds before the crash, the rest only after the restart: however fast
    # the worker is, exposures are pending at the crash and later events resolve them.
    produce(bootstrap, worker.settings.topic_events, events[:20_000], key=by_user)

    consume_all(
        bootstrap, worker.settings.topic_scores, until=lambda r: len(r) >= 8000, timeout=180
    )
    time.sleep(3)  # let at least one periodic snapshot happen (interval 2 s in tests)
    worker.kill()
    killed_at = time.time()
    worker.start()
    produce(bootstrap, worker.settings.topic_events, events[20_000:], key=by_user)

    records = consume_all(
        bootstrap, worker.settings.topic_scores, until=ids_seen(expected), timeout=300
    )
    got = {r["event_id"] for r in records}
    assert expected <= got, f"{len(expected - got)} events lost\n{worker.log_tail()}"
    duplicates = len(records) - len(got)
    print(f"records {len(records)}, distinct {len(got)}, duplicates after SIGKILL {duplicates}")

    before = [r for r in records if r["scored_at"] < killed_at]
    after = [r for r in records if r["scored_at"] > killed_at]
    assert before and after
    for partition in {r["_partition"] for r in after}:
        first_after = min(
            (r for r in after if r["_partition"] == partition), key=lambda r: r["scored_at"]
        )
        learned_before = max(
            (r["model"]["updates"] for r in before if r["_partition"] == partition), default=0
        )
        if learned_before > 0:
            assert first_after["model"]["updates"] > 0, (
                f"partition {partition}: update count restarted from zero"
            )
            assert first_after["model"]["version"] >= 1
    assert "restored model" in worker.log_text()

    # Pending labels survived the crash: exposures scored once, before the kill, had their
    # label resolved and published as training samples by the restarted worker.
    restarted_at = killed_at
    times_scored = Counter(r["event_id"] for r in records)
    scored_once = {r["event_id"] for r in before if times_scored[r["event_id"]] == 1}
    training = consume_all(
        bootstrap,
        worker.settings.topic_training,
        until=lambda recs: any(
            r["_ts"] > restarted_at
            and r["event_id"] in scored_once
            and r["label_source"] in ("converted", "window_closed")
            for r in recs
        ),
        timeout=60,
    )
    carried = [
        r
        for r in training
        if r["_ts"] > restarted_at
        and r["event_id"] in scored_once
        and r["label_source"] in ("converted", "window_closed")
    ]
    assert carried, "no label pending at the crash was resolved after the restart"
