"""Dead letters fit their topic whatever the input (stream_app/deadletter.py)."""

from __future__ import annotations

import hashlib
import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import InvalidEvent
from stream_app.deadletter import DLQ_MIN_LIMIT, MAX_DLQ_KEY_BYTES, DeadLetters

LIMITS = [DLQ_MIN_LIMIT, 4096, 16_384, 1_048_588]
POISON_KEY = os.urandom(982_652)
POISON_VALUE = os.urandom(65_536)


@pytest.mark.parametrize("limit", LIMITS)
def test_the_poison_message_of_issue_9_fits(limit):
    letters = DeadLetters(limit)
    key, value = letters.build(
        InvalidEvent("bad_encoding", "x"), POISON_VALUE, POISON_KEY, "events", 0, 1
    )
    assert len(key or b"") + len(value) <= letters.budget < limit
    record = orjson.loads(value)
    assert record["key_bytes"] == len(POISON_KEY)
    assert record["key_sha256"] == hashlib.sha256(POISON_KEY).hexdigest()
    if key is not None:
        assert len(key) <= MAX_DLQ_KEY_BYTES and POISON_KEY.startswith(key)
    if limit < 200_000:  # base64 of 64 KiB does not fit: cut, with size and hash
        assert record["raw_truncated"] and record["raw_bytes"] == len(POISON_VALUE)
        assert record["raw_sha256"] == hashlib.sha256(POISON_VALUE).hexdigest()
    else:  # the whole value, in base64
        assert record["raw_encoding"] == "base64" and "raw_truncated" not in record


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(LIMITS),
    st.one_of(st.none(), st.binary(max_size=3000)),
    st.one_of(st.none(), st.binary(max_size=5000)),
    st.sampled_from([b"\x01", b"\xff", "é".encode(), b"a", b'"']),
    st.integers(min_value=0, max_value=80_000),
)
def test_any_dead_letter_fits(limit, raw, key, filler, pad):
    letters = DeadLetters(limit)
    if raw is not None:
        raw = raw + filler * pad
    out_key, value = letters.build(InvalidEvent("too_large", "d" * 300), raw, key, "t", 1, 2)
    assert len(out_key or b"") + len(value) <= letters.budget
    record = orjson.loads(value)
    assert record["error"] == "too_large" and record["offset"] == 2
    if raw is not None and record["raw"] is not None and not record.get("raw_truncated"):
        assert record["raw_encoding"] in ("utf-8", "base64")


def test_a_replaced_output_record_keeps_its_sizes_and_hashes():
    letters = DeadLetters(4096)
    value = b"x" * 10_000
    key, out = letters.replacement(
        "output_too_large", "too big", "scores", b"user-1", value, ("events", 2, 40)
    )
    record = orjson.loads(out)
    assert record["error"] == "output_too_large" and record["destination"] == "scores"
    assert record["value_bytes"] == 10_000
    assert record["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert (record["topic"], record["partition"], record["offset"]) == ("events", 2, 40)
    assert key == b"user-1" and len(out) < 4096


def test_processing_failed_carries_the_exception_and_the_payload():
    letters = DeadLetters()
    _key, out = letters.processing_failed(
        KeyError("boom"), b'{"user_id": 1}', b"1", ("events", 0, 3)
    )
    record = orjson.loads(out)
    assert record["error"] == "processing_failed"
    assert record["detail"] == "KeyError: 'boom'" and record["raw"] == '{"user_id": 1}'


def test_a_dead_letter_topic_too_small_is_refused():
    with pytest.raises(ValueError, match="at least"):
        DeadLetters(1000)
