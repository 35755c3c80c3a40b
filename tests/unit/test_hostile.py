"""Hostile input: the shared corpus (``tests/hostile.py``) decodes to its stable codes,
duplicate-key and depth detection agree with a slow reference on generated JSON text,
mutated hostile messages never raise anything but ``InvalidEvent``, and dead letters of
any payload stay small and faithful."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import ERROR_CODES, MAX_DEPTH, Event, InvalidEvent, decode_event
from tests.hostile import HOSTILE, HOSTILE_KEYED, MAX_PAYLOAD_BYTES

NOW = 1_700_003_600.0


def code_of(raw: bytes | None) -> str | None:
    """The error code of ``raw``, or None when it is a valid event."""
    try:
        decode_event(raw, now=NOW)
    except InvalidEvent as exc:
        assert exc.code in ERROR_CODES
        return exc.code
    return None


def test_corpus_is_big_distinct_and_covers_the_codes():
    names = [name for name, _, _ in HOSTILE]
    assert len(names) == len(set(names)) >= 30
    codes = {code for _, _, code in HOSTILE}
    assert codes <= set(ERROR_CODES)
    # not_finite cannot come from JSON: orjson refuses NaN, Infinity and 1e400.
    assert codes == set(ERROR_CODES) - {"not_finite"}
    assert max(len(raw or b"") for _, raw, _ in HOSTILE) == MAX_PAYLOAD_BYTES
    assert any(len(raw or b"") > 1024 * 1024 for _, raw, _ in HOSTILE)


@pytest.mark.parametrize(("name", "raw", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_message_has_its_stable_code(name, raw, code):
    assert code_of(raw) == code, name


# --------------------------------------------------------------------------------------
# Duplicate keys and nesting depth against a slow, obviously right reference
# --------------------------------------------------------------------------------------

# JSON string bodies (already escaped) with colons written literally, escaped
# (\u003a, \u003A) and not escaped (\\u003a is a backslash and "u003a"), plus keys that
# collide only after unescaping.
_bodies = st.sampled_from(
    [
        "a",
        "b",
        "user_id",
        "u\\u0073er_id",
        "a:b",
        ":",
        "\\u003a",
        "\\u003A",
        "\\\\u003a",
        "\\\\\\u003a",
        "x\\\\",
        "\\u0061",
        '\\"',
    ]
)
_strings = _bodies.map(lambda body: f'"{body}"')
_scalars = st.one_of(_strings, st.sampled_from(["1", "-0", "2.5", "true", "null", "[]", "{}"]))


def _object(members: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{key}:{value}" for key, value in members) + "}"


_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(_strings, children), max_size=4).map(_object),
    ),
    max_leaves=12,
)
_HEAD = '"user_id":1,"item_id":2,"type":"view","ts":1700000000,"event_id":"e"'
_events = st.lists(st.tuples(_strings, _values), max_size=5).map(
    lambda members: "{" + _HEAD + "".join(f",{k}:{v}" for k, v in members) + "}"
)


def _reference(text: str) -> tuple[bool, int]:
    """(has a duplicate key anywhere, nesting depth) with the standard library."""
    duplicate = False

    def pairs(items):
        nonlocal duplicate
        keys = [key for key, _ in items]
        duplicate = duplicate or len(keys) != len(set(keys))
        return dict(items)

    value = json.loads(text, object_pairs_hook=pairs)

    def depth(v) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    return duplicate, depth(value)


fuzz = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(_events)
def test_duplicate_keys_are_found_exactly(text):
    duplicate, depth = _reference(text)
    assert depth <= MAX_DEPTH
    code = code_of(text.encode())
    if duplicate:
        assert code == "duplicate_key", text
    else:
        assert code != "duplicate_key", text


@fuzz
@given(st.integers(min_value=1, max_value=130), st.sampled_from(["[", '{"k":', '[{"k":']))
def test_depth_limit_is_exact(levels, opener):
    closer = {"[": "]", '{"k":': "}", '[{"k":': "}]"}[opener]
    inner = opener * levels + "1" + closer * levels
    text = "{" + _HEAD + ',"x":' + inner + "}"
    _, depth = _reference(text)
    code = code_of(text.encode())
    if depth > MAX_DEPTH:
        assert code == "too_deep"
    else:
        assert code is None, (depth, code)


def test_duplicate_detection_is_not_fooled_by_escaped_colons():
    base = "{" + _HEAD
    # One duplicate key plus one escaped colon: a naive colon count would balance out.
    assert code_of((base + ',"a":1,"a":"\\u003a"}').encode()) == "duplicate_key"
    assert code_of((base + ',"a":"\\u003a","b":":"}').encode()) is None
    assert code_of((base + ',"a":"\\\\u003a"}').encode()) is None


# --------------------------------------------------------------------------------------
# Mutations of hostile messages: InvalidEvent with a published code, or a valid Event
# --------------------------------------------------------------------------------------

_small = [raw for _, raw, _ in HOSTILE if raw is not None and len(raw) < 4096]


@fuzz
@given(
    st.sampled_from(_small),
    st.integers(min_value=0, max_value=4096),
    st.integers(min_value=0, max_value=8),
    st.binary(max_size=8),
)
def test_mutated_hostile_messages_never_raise_anything_else(raw, at, cut, junk):
    at = min(at, len(raw))
    mutated = raw[:at] + junk + raw[at + cut :]
    try:
        ev = decode_event(mutated, now=NOW)
    except InvalidEvent as exc:
        assert exc.code in ERROR_CODES
        return
    assert isinstance(ev, Event)
    orjson.dumps(ev.to_dict())  # what the decode agent publishes must serialise


# --------------------------------------------------------------------------------------
# Dead-letter records
# --------------------------------------------------------------------------------------


def _dlq():
    from agents.decode import MAX_DLQ_RAW_BYTES, dlq_record

    return dlq_record, MAX_DLQ_RAW_BYTES


def _raw_back(record: dict) -> bytes:
    if record["raw_encoding"] == "base64":
        return base64.b64decode(record["raw"])
    return record["raw"].encode("utf-8")


@pytest.mark.parametrize(("name", "raw", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_dead_letter_of_every_hostile_message_is_small_and_faithful(name, raw, code):
    dlq_record, limit = _dlq()
    record = dlq_record(InvalidEvent(code, "detail"), raw, "events", 3, 42)
    encoded = orjson.dumps(record)
    assert len(encoded) < 2 * limit + 1024  # base64 grows by 4/3, JSON escapes up to 2x
    if raw is None:
        assert record["raw"] is None and record["raw_encoding"] == "null"
        return
    back = _raw_back(record)
    if len(raw) > limit:
        assert record["raw_truncated"] is True and record["raw_bytes"] == len(raw)
        assert raw.startswith(back) and limit - 3 <= len(back) <= limit
    else:
        assert back == raw and "raw_truncated" not in record


@fuzz
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=70_000))
def test_dead_letter_cut_keeps_a_prefix(head, pad):
    dlq_record, limit = _dlq()
    raw = head + "é€".encode() * (pad // 5)
    record = dlq_record(InvalidEvent("too_large", "x"), raw, "events", 0, 0)
    back = _raw_back(record)
    assert raw.startswith(back)
    assert len(back) == len(raw) if len(raw) <= limit else limit - 3 <= len(back) <= limit


@pytest.mark.parametrize(
    ("name", "key", "value", "code"), HOSTILE_KEYED, ids=[h[0] for h in HOSTILE_KEYED]
)
def test_hostile_keyed_message_has_its_code_and_a_dead_letter_that_fits(name, key, value, code):
    from stream_app.deadletter import DeadLetters

    assert code_of(value) == code, name
    if code is None:
        return
    letters = DeadLetters()  # Kafka's default 1 MB limit
    out_key, record = letters.build(InvalidEvent(code, "detail"), value, key, "events", 0, 1)
    assert len(out_key or b"") + len(record) < 1_000_000
    assert orjson.loads(record)["key_bytes"] == len(key)
