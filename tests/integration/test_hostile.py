"""Hostile input through a real worker: every message of the corpus in
``tests/hostile.py`` (77 kinds, one over 1 MB) lands in the dead-letter topic with its
stable code, none stops the worker, and the valid events around them are all scored."""

from __future__ import annotations

import base64

import orjson
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.hostile import HOSTILE, MAX_PAYLOAD_BYTES
from tests.integration.conftest import consume_all, produce
from tests.integration.events import synthetic_events

pytestmark = pytest.mark.integration

#: The input topic and the test producer accept the corpus' 1 MB messages.
BIG = 4 * 1024 * 1024


def allow_big_messages(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry("max.message.bytes", str(BIG), incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def test_every_hostile_message_goes_to_the_dlq_with_its_code(bootstrap, worker_factory):
    worker = worker_factory()
    topic = worker.settings.topic_events
    allow_big_messages(bootstrap, topic)
    assert MAX_PAYLOAD_BYTES < BIG
    worker.start()

    valid = synthetic_events(3000, prefix="hostile")
    keys: list[bytes] = []
    values: list[bytes | None] = []
    step = len(valid) // len(HOSTILE)
    for i, event in enumerate(valid):
        keys.append(event["user_id"].encode())
        values.append(orjson.dumps(event))
        if i % step == step // 2 and i // step < len(HOSTILE):
            name, raw, _ = HOSTILE[i // step]
            keys.append(f"hostile-{name}".encode())
            values.append(raw)
    assert sum(k.startswith(b"hostile-") for k in keys) == len(HOSTILE)
    produce(
        bootstrap,
        topic,
        values,
        key=lambda i, _value: keys[i],
        config={"message.max.bytes": BIG, "compression.type": "lz4"},
    )

    dead = consume_all(
        bootstrap,
        worker.settings.topic_dlq,
        until=lambda records: len(records) >= len(HOSTILE),
        timeout=240,
    )
    by_key = {r["_key"].decode(): r for r in dead}
    wrong = {}
    for name, raw, code in HOSTILE:
        record = by_key.get(f"hostile-{name}")
        if record is None or record["error"] != code:
            wrong[name] = (code, record and record["error"], record and record["detail"])
            continue
        assert record["detail"] and record["topic"] == topic
        if raw is None:
            assert record["raw"] is None and record["raw_encoding"] == "null"
            continue
        back = (
            base64.b64decode(record["raw"])
            if record["raw_encoding"] == "base64"
            else record["raw"].encode("utf-8")
        )
        if record.get("raw_truncated"):
            assert record["raw_bytes"] == len(raw) > 64 * 1024 and raw.startswith(back), name
        else:
            assert back == raw, name
    assert not wrong, f"{wrong}\n{worker.log_tail()}"
    assert len(dead) == len(HOSTILE)
    assert by_key["hostile-payload-1mb"]["raw_bytes"] > 1024 * 1024

    expected = {e["event_id"] for e in valid}
    records = consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=lambda recs: expected <= {r["event_id"] for r in recs},
        timeout=240,
    )
    missing = expected - {r["event_id"] for r in records}
    assert not missing, f"{len(missing)} valid events not scored\n{worker.log_tail()}"
    assert worker.proc.poll() is None, "the worker died on hostile input"
    assert "Traceback" not in worker.log_text(), worker.log_tail()
