"""Reading a worker's table state and its changelogs, for the restart and failover tests."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

#: the worker's tables (``app.Table`` names)
TABLES = (
    "pending-labels",
    "rolling-category",
    "rolling-clock",
    "rolling-item",
    "rolling-user",
    "rolling-user-top-items",
)


def changelog_topic(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


def read_changelog(bootstrap: str, topic: str, timeout: float = 60.0) -> tuple[int, int]:
    """``(records, live keys)`` of a changelog read from the beginning to its end (live:
    keys whose latest record is not a tombstone)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"changelog-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    latest: dict[tuple[int, bytes], bool] = {}
    records = 0
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        assign = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        consumer.assign(assign)
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(msg.error())
                    done.add(msg.partition())
                    continue
                records += 1
                latest[(msg.partition(), msg.key())] = msg.value() is not None
                if msg.offset() + 1 >= ends[msg.partition()]:
                    done.add(msg.partition())
        assert len(done) == len(ends), f"{topic}: not read to its end in {timeout} s"
    finally:
        consumer.close()
    return records, sum(latest.values())


def changelog_state(bootstrap: str, app_id: str) -> dict[str, tuple[int, int]]:
    """``{table: (records, live keys)}`` of every table's changelog."""
    return {t: read_changelog(bootstrap, changelog_topic(app_id, t)) for t in TABLES}


def get_json(port: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """``(status, JSON body)`` of a GET on the worker's web server."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def stats(port: int) -> dict[str, Any]:
    status, body = get_json(port, "/api/stats")
    assert status == 200, body
    return body


def wait_live(port: int, timeout: float = 120.0) -> dict[str, Any]:
    """The worker's /api/stats once its recovery state is "live"."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            body = stats(port)
            if body["recovery"]["state"] == "live":
                return body
        except (OSError, AssertionError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"worker on port {port} not live after {timeout} s: {body.get('recovery')}")


def settled(port: int, quiet_s: float = 3.0, timeout: float = 120.0) -> dict[str, Any]:
    """/api/stats once the worker is live and neither its table sizes nor its counters
    changed for ``quiet_s`` seconds (messages a predecessor had not committed are
    processed again after a restart)."""

    def signature(body: dict[str, Any]) -> Any:
        return (
            {t: v["keys"] for t, v in body["tables"].items()},
            body["totals"]["events_in"],
            body["totals"]["scored"],
        )

    deadline = time.monotonic() + timeout
    body = wait_live(port, timeout)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = stats(port)
        if again["recovery"]["state"] == "live" and signature(again) == signature(body):
            return again
        body = again
    raise TimeoutError(f"worker on port {port} still busy after {timeout} s")


def within_an_hour(events: list[dict[str, Any]], factor: float = 4.0) -> list[dict[str, Any]]:
    """``events`` with their event times compressed towards the first one (order kept),
    so that they span less than the rolling tables' retention (the longest window plus a
    step): panes older than that are dropped from memory by the periodic sweep but stay
    in the changelog until its retention, and the tables would then hold fewer keys than
    the changelogs."""
    start = min(e["ts"] for e in events)
    out = [{**e, "ts": start + (e["ts"] - start) / factor} for e in events]
    assert max(e["ts"] for e in out) - start < 3600, "more than an hour of event time"
    return out
