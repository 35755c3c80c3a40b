"""Hostile input through a real worker: every message of the corpus in
``tests/hostile.py`` (88 kinds, one over 1 MB, and 3 with keys of up to 982,652 bytes)
lands in the dead-letter topic with its stable code, none stops the worker, and the
valid events around them are all scored; ids that are not in NFC are scored as their
NFC form. A poison message whose dead letter would not fit its topic (a 982,652-byte
key) is dead-lettered within the topic's limit, also when the dead-letter and score
topics accept much less than 1 MB."""

from __future__ import annotations

import base64
import hashlib
import os

import orjson
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.hostile import HOSTILE, HOSTILE_KEYED, LOOKALIKE_VALID, MAX_PAYLOAD_BYTES
from tests.integration.conftest import consume_all, produce
from tests.integration.events import synthetic_events

pytestmark = pytest.mark.integration

#: The input topic and the test producer accept the corpus' 1 MB messages.
BIG = 4 * 1024 * 1024


def allow_big_messages(bootstrap: str, topic: str, size: int = BIG) -> None:
    """Set the topic's ``max.message.bytes`` (larger or smaller than the default)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry("max.message.bytes", str(size), incremental_operation=AlterConfigOpType.SET)
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
    for _name, key, raw, _code in HOSTILE_KEYED:  # hostile keys (the poison message)
        keys.append(key)
        values.append(raw)
    for name, raw, _user in LOOKALIKE_VALID:  # valid, but their ids are not in NFC
        keys.append(f"lookalike-{name}".encode())
        values.append(raw.replace(b'"item_id": 2', b'"item_id": "%s"' % name.encode()))
    produce(
        bootstrap,
        topic,
        values,
        key=lambda i, _value: keys[i],
        config={"message.max.bytes": BIG, "compression.type": "lz4"},
    )

    keyed = [h for h in HOSTILE_KEYED if h[3] is not None]
    dead = consume_all(
        bootstrap,
        worker.settings.topic_dlq,
        until=lambda records: len(records) >= len(HOSTILE) + len(keyed),
        timeout=240,
    )
    by_hash = {r.get("key_sha256"): r for r in dead}
    for name, key, raw, code in keyed:
        record = by_hash.get(hashlib.sha256(key).hexdigest())
        assert record is not None and record["error"] == code, (name, record)
        assert record["key_bytes"] == len(key) and key.startswith(record["_key"])
        assert len(record["_key"]) <= 1024
        if record.get("raw_truncated"):
            assert record["raw_bytes"] == len(raw)
            assert record["raw_sha256"] == hashlib.sha256(raw).hexdigest()
        else:  # a 64 KiB value fits a 1 MB dead letter whole (base64)
            assert base64.b64decode(record["raw"]) == raw
    dead = [r for r in dead if not r.get("key_truncated")]
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

    expected = {e["event_id"] for e in valid} | {"keyed-valid-1"}  # valid, huge key
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

    # the decomposed and the precomposed "é" are one user, published in NFC
    lookalikes = consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=lambda recs: sum(r["item_id"] in NAMES for r in recs) >= len(NAMES),
        timeout=60,
    )
    users = {r["item_id"]: r["user_id"] for r in lookalikes if r["item_id"] in NAMES}
    assert users == {name: user for name, _, user in LOOKALIKE_VALID}
    assert {r["_key"] for r in lookalikes if r["item_id"] in NAMES} == {"ren\u00e9".encode()}


NAMES = {name for name, _, _ in LOOKALIKE_VALID}

#: the poison message of issue 9: it fits the default 1 MB topic limit, but its dead
#: letter (the key, plus the value in base64, plus metadata) did not
POISON_KEY_BYTES = 982_652
POISON_VALUE_BYTES = 65_536


def produce_around_poison(bootstrap: str, topic: str, prefix: str) -> tuple[set[str], bytes]:
    """Valid events, the poison message, valid events; returns the valid ids and the key."""
    before = synthetic_events(400, prefix=f"{prefix}-before")
    after = synthetic_events(400, prefix=f"{prefix}-after", seed=11)
    by_user = lambda _i, e: e["user_id"].encode()  # noqa: E731
    produce(bootstrap, topic, before, key=by_user)
    key = os.urandom(POISON_KEY_BYTES)
    produce(
        bootstrap,
        topic,
        [os.urandom(POISON_VALUE_BYTES)],
        key=key,
        config={"message.max.bytes": 2 * 1024 * 1024},
    )
    produce(bootstrap, topic, after, key=by_user)
    return {e["event_id"] for e in before + after}, key


def check_poison_dead_letter(record: dict, key: bytes, limit: int) -> None:
    """The poison message's dead letter: bounded key with its size and hash, under the
    topic's limit."""
    assert record["error"] in ("bad_encoding", "not_json"), record["error"]
    assert record["key_truncated"] is True
    assert record["key_bytes"] == POISON_KEY_BYTES
    assert record["key_sha256"] == hashlib.sha256(key).hexdigest()
    assert len(record["_key"]) <= 1024 and key.startswith(record["_key"])
    assert (
        len(orjson.dumps({k: v for k, v in record.items() if not k.startswith("_")}))
        + len(record["_key"])
        < limit
    )


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_poison_message_with_a_huge_key_is_dead_lettered(bootstrap, worker_factory, guarantee):
    """Issue 9, item 1: the dead letter of a message with a 982,652-byte key and a
    65,536-byte random value was over 1 MB; the DLQ produce failed ("Message size too
    large"), the worker crashed, and crashed again at every restart."""
    worker = worker_factory(IMPORTANCE_PROCESSING_GUARANTEE=guarantee)
    worker.start()
    expected, key = produce_around_poison(bootstrap, worker.settings.topic_events, guarantee)

    dead = consume_all(
        bootstrap, worker.settings.topic_dlq, until=lambda records: len(records) >= 1, timeout=120
    )
    assert len(dead) == 1, f"{len(dead)} dead letters\n{worker.log_tail()}"
    check_poison_dead_letter(dead[0], key, 1_048_588)
    records = consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=lambda recs: expected <= {r["event_id"] for r in recs},
        timeout=180,
    )
    missing = expected - {r["event_id"] for r in records}
    assert not missing, f"{len(missing)} valid events not scored\n{worker.log_tail()}"
    assert worker.proc.poll() is None, f"the worker died\n{worker.log_tail()}"
    assert "DeliveryError" not in worker.log_text()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_small_topic_limits_still_take_every_dead_letter(bootstrap, worker_factory, guarantee):
    """The dead-letter topic accepts 4,096 bytes, the score topic 2,048: dead letters
    (the poison message's, a 70 KB payload's) are cut to fit, and a score record over
    2,048 bytes (an event with four 256-character non-ASCII ids) is replaced by an
    ``output_too_large`` dead letter; every other event is scored."""
    worker = worker_factory(IMPORTANCE_PROCESSING_GUARANTEE=guarantee)
    allow_big_messages(bootstrap, worker.settings.topic_dlq, 4096)
    allow_big_messages(bootstrap, worker.settings.topic_scores, 2048)
    worker.start()
    long_id = "\u00e9" * 256  # 512 bytes of UTF-8
    wide = {
        "event_id": "wide-1",
        "user_id": long_id,
        "item_id": long_id,
        "category_id": long_id,
        "type": "view",
        "ts": 1_700_000_000,
    }
    produce(bootstrap, worker.settings.topic_events, [wide], key=long_id.encode())
    _, big, _ = next(h for h in HOSTILE if h[0] == "payload-70kb")
    produce(bootstrap, worker.settings.topic_events, [big], key=b"hostile-70kb")
    expected, key = produce_around_poison(bootstrap, worker.settings.topic_events, "small")

    dead = consume_all(
        bootstrap, worker.settings.topic_dlq, until=lambda records: len(records) >= 3, timeout=120
    )
    by_code = {r["error"]: r for r in dead}
    assert len(dead) == 3 and set(by_code) >= {"too_large", "output_too_large"}, (
        [r["error"] for r in dead],
        worker.log_tail(),
    )
    poison = next(r for r in dead if r.get("key_bytes") == POISON_KEY_BYTES)
    check_poison_dead_letter(poison, key, 4096)
    cut = by_code["too_large"]
    assert cut["raw_truncated"] and cut["raw_bytes"] == len(big) and len(cut["raw"]) < 4096
    assert cut["raw_sha256"] == hashlib.sha256(big).hexdigest()
    replaced = by_code["output_too_large"]
    assert replaced["destination"] == worker.settings.topic_scores
    assert replaced["value_bytes"] > 2048 - 300
    # the input message it came from (this one took the re-keying hop)
    assert replaced["topic"] in (worker.settings.topic_events, worker.settings.topic_by_user)
    assert isinstance(replaced["offset"], int)

    records = consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=lambda recs: expected <= {r["event_id"] for r in recs},
        timeout=180,
    )
    missing = expected - {r["event_id"] for r in records}
    assert not missing, f"{len(missing)} valid events not scored\n{worker.log_tail()}"
    assert "wide-1" not in {r["event_id"] for r in records}
    assert worker.proc.poll() is None, f"the worker died\n{worker.log_tail()}"
