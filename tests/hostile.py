"""A corpus of malformed and hostile input messages with the dead-letter code each must get.

Shared by the unit tests (``tests/unit/test_hostile.py``: ``decode_event`` alone) and the
integration test (``tests/integration/test_hostile.py``: through a real worker, where every
message must end in ``events-dlq`` with its code while the valid events around it are
scored). Payloads are raw bytes (``None`` is a Kafka null value); one is over 1 MB, so
the input topic needs a larger ``max.message.bytes`` (:data:`MAX_PAYLOAD_BYTES`).
:data:`HOSTILE_KEYED` adds messages whose key is hostile as well (982,652 bytes: the
poison message of issue 9); :data:`LOOKALIKE_VALID` valid events whose ids are not NFC.
"""

from __future__ import annotations

import pickle
import random

import orjson

BASE_TS = 1_700_000_000
_BASE = {"user_id": 1, "item_id": 2, "type": "view", "ts": BASE_TS}
_HEAD = b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 1700000000'


def event(**overrides) -> bytes:
    """A valid event (as JSON bytes) with some fields replaced."""
    return orjson.dumps({**_BASE, **overrides})


def raw_event(extra: bytes) -> bytes:
    """A valid event's JSON text with ``extra`` (raw JSON members) appended."""
    return _HEAD + b", " + extra + b"}"


def with_field(name: bytes, value: bytes) -> bytes:
    """A valid event's JSON text whose field ``name`` is replaced by the raw ``value``."""
    fields = {b"user_id": b"1", b"item_id": b"2", b"type": b'"view"', b"ts": b"1700000000"}
    fields[name] = value
    return b"{" + b", ".join(b'"%s": %s' % (k, v) for k, v in fields.items()) + b"}"


ONE_MB = 1024 * 1024
#: Largest payload in the corpus (the 1 MB + 100 bytes one).
MAX_PAYLOAD_BYTES = ONE_MB + 100
_DEEP = 10_000
_BIG_INT = str(2**80).encode()

#: (name, raw payload, expected stable error code)
HOSTILE: list[tuple[str, bytes | None, str]] = [
    # --- not JSON at all, or not one JSON value
    ("truncated-json", _HEAD[:-7], "not_json"),
    ("trailing-garbage", event() + b" trailing", "not_json"),
    ("two-documents", event() + event(), "not_json"),
    ("empty-message", b"", "not_json"),
    ("whitespace-only", b" \n\t ", "not_json"),
    ("null-message", None, "not_json"),
    ("single-quotes", b"{'user_id': 1, 'item_id': 2, 'type': 'view', 'ts': 1}", "not_json"),
    ("json-with-comment", raw_event(b'/* hi */ "x": 1'), "not_json"),
    ("hex-number", with_field(b"ts", b"0x6553F100"), "not_json"),
    ("leading-zero-number", with_field(b"user_id", b"0123"), "not_json"),
    ("raw-control-char-in-string", with_field(b"user_id", b'"a\x01b"'), "not_json"),
    ("raw-newline-in-string", with_field(b"item_id", b'"a\nb"'), "not_json"),
    ("nan-literal", with_field(b"ts", b"NaN"), "not_json"),
    ("infinity-literal", raw_event(b'"price": Infinity'), "not_json"),
    ("number-1e400", with_field(b"ts", b"1e400"), "not_json"),
    ("number-minus-1e400", raw_event(b'"price": -1e400'), "not_json"),
    # --- encoding
    ("binary-garbage", bytes(range(256)) * 8, "bad_encoding"),
    ("pickle-payload", pickle.dumps({"user_id": 1, "item_id": 2}, protocol=4), "bad_encoding"),
    ("invalid-utf8-in-string", with_field(b"user_id", b'"\xff\xfe"'), "bad_encoding"),
    ("overlong-utf8", with_field(b"user_id", b'"\xc0\xaf"'), "bad_encoding"),
    ("utf8-encoded-surrogate", with_field(b"user_id", b'"\xed\xa0\x80"'), "bad_encoding"),
    ("lone-surrogate-escape", with_field(b"user_id", b'"\\ud800"'), "bad_encoding"),
    ("lone-low-surrogate-escape", with_field(b"item_id", b'"x\\udc00y"'), "bad_encoding"),
    ("bom-prefix", b"\xef\xbb\xbf" + event(), "bad_encoding"),
    # --- size and shape
    ("payload-70kb", raw_event(b'"pad": "' + b"p" * 70_000 + b'"'), "too_large"),
    ("payload-1mb", raw_event(b'"pad": "' + b"p" * ONE_MB + b'"'), "too_large"),
    ("binary-1mb", bytes(range(256)) * (ONE_MB // 256) + b"\xff" * 100, "too_large"),
    ("deep-array-10000", b"[" * _DEEP + b"]" * _DEEP, "too_deep"),
    ("deep-field-10000", raw_event(b'"x": ' + b"[" * _DEEP + b"]" * _DEEP), "too_deep"),
    ("deep-object-300", raw_event(b'"x": ' + b'{"a": ' * 300 + b"1" + b"}" * 300), "too_deep"),
    ("deep-array-65", raw_event(b'"x": ' + b"[" * 64 + b"]" * 64), "too_deep"),
    ("top-level-array", b"[" + event() + b"]", "not_object"),
    ("top-level-string", b'"view"', "not_object"),
    ("top-level-null", b"null", "not_object"),
    ("top-level-number", b"1e5", "not_object"),
    # --- duplicate keys (orjson would silently keep the last)
    ("duplicate-user-id", raw_event(b'"user_id": 2'), "duplicate_key"),
    ("duplicate-type", raw_event(b'"type": "purchase"'), "duplicate_key"),
    ("duplicate-key-in-context", raw_event(b'"context": {"a": "x", "a": "y"}'), "duplicate_key"),
    ("duplicate-key-escaped", raw_event(b'"\\u0075ser_id": 3'), "duplicate_key"),
    ("duplicate-key-in-extra", raw_event(b'"extra": [{"k": 1, "k": 2}]'), "duplicate_key"),
    # --- fields
    ("missing-user-id", b'{"item_id": 2, "type": "view", "ts": 1700000000}', "missing_field"),
    ("null-user-id", event(user_id=None), "null_field"),
    ("null-item-id", event(item_id=None), "null_field"),
    ("null-ts", event(ts=None), "null_field"),
    ("bool-user-id", event(user_id=True), "wrong_type"),
    ("object-item-id", event(item_id={"id": 2}), "wrong_type"),
    ("int-type", event(type=3), "wrong_type"),
    ("string-price", event(price="9.99"), "wrong_type"),
    ("bool-ts", event(ts=False), "wrong_type"),
    ("huge-int-user-id", with_field(b"user_id", _BIG_INT), "wrong_type"),
    ("unknown-type", event(type="teleport"), "unknown_type"),
    ("type-10000-chars", event(type="v" * 10_000), "unknown_type"),
    ("user-id-10000-chars", event(user_id="u" * 10_000), "string_too_long"),
    ("item-id-257-chars", event(item_id="i" * 257), "string_too_long"),
    ("nul-in-user-id", with_field(b"user_id", b'"u\\u0000"'), "bad_id"),
    ("escape-in-item-id", with_field(b"item_id", b'"\\u001b[31mred"'), "bad_id"),
    ("c1-control-in-event-id", raw_event(b'"event_id": "e\\u0085"'), "bad_id"),
    ("newline-in-category-id", raw_event(b'"category_id": "c\\n1"'), "bad_id"),
    ("negative-zero-position", raw_event(b'"position": -0'), "out_of_range"),
    ("negative-zero-float-position", raw_event(b'"position": -0.0'), "out_of_range"),
    ("huge-int-position", raw_event(b'"position": ' + _BIG_INT), "out_of_range"),
    ("position-1e300", raw_event(b'"position": 1e300'), "out_of_range"),
    ("negative-price", event(price=-0.01), "out_of_range"),
    ("label-2", event(label=2), "out_of_range"),
    ("propensity-0", event(propensity=0), "out_of_range"),
    ("empty-user-id", event(user_id=""), "out_of_range"),
    ("ts-epoch-1", event(ts=1), "ts_out_of_range"),
    ("ts-negative", event(ts=-1), "ts_out_of_range"),
    ("ts-year-1999-iso", event(ts="1999-12-31T23:59:59Z"), "ts_out_of_range"),
    ("ts-year-9999-iso", event(ts="9999-12-31T23:59:59Z"), "ts_out_of_range"),
    ("ts-1e18", with_field(b"ts", b"1e18"), "ts_out_of_range"),
    ("ts-huge-int", with_field(b"ts", _BIG_INT), "ts_out_of_range"),
    ("ts-not-a-date", event(ts="yesterday"), "bad_timestamp"),
    ("ts-month-13", event(ts="2023-13-01T00:00:00Z"), "bad_timestamp"),
    ("ts-long-string", event(ts="2023-11-14T22:13:20" + " " * 100), "bad_timestamp"),
    ("context-nested", event(context={"a": {"b": 1}}), "bad_context"),
    ("context-65-keys", event(context={f"k{i}": i for i in range(65)}), "bad_context"),
]

# --- ids that look alike (invisible, format or direction-changing characters): bad_id
HOSTILE += [
    ("zero-width-space-in-user-id", with_field(b"user_id", b'"u\\u200b1"'), "bad_id"),
    ("raw-zero-width-space-user-id", with_field(b"user_id", '"u\u200b1"'.encode()), "bad_id"),
    ("rtl-override-in-item-id", with_field(b"item_id", b'"gpj.\\u202eexe"'), "bad_id"),
    ("bom-inside-user-id", with_field(b"user_id", b'"u\\ufeff1"'), "bad_id"),
    ("line-separator-in-item-id", with_field(b"item_id", b'"a\\u2028b"'), "bad_id"),
    ("paragraph-separator-user-id", with_field(b"user_id", b'"a\\u2029b"'), "bad_id"),
    (
        "tag-characters-in-user-id",
        with_field(b"user_id", b'"u\\udb40\\udc41\\udb40\\udc7f"'),
        "bad_id",
    ),
    ("soft-hyphen-in-event-id", raw_event(b'"event_id": "e\\u00ad1"'), "bad_id"),
    ("private-use-in-session-id", raw_event(b'"session_id": "s\\ue000"'), "bad_id"),
    ("noncharacter-in-category-id", raw_event(b'"category_id": "c\\uffff"'), "bad_id"),
    ("bidi-isolate-in-item-id", with_field(b"item_id", b'"a\\u2066b\\u2069"'), "bad_id"),
]

#: Valid events whose ids are not in NFC, with the user id the worker must give them:
#: a precomposed and a decomposed "é" are one user. (name, raw payload, NFC user id)
LOOKALIKE_VALID: list[tuple[str, bytes, str]] = [
    ("precomposed-e-acute", with_field(b"user_id", b'"ren\\u00e9"'), "ren\u00e9"),
    ("decomposed-e-acute", with_field(b"user_id", b'"rene\\u0301"'), "ren\u00e9"),
    ("raw-decomposed-e-acute", with_field(b"user_id", '"rene\u0301"'.encode()), "ren\u00e9"),
]

_rng = random.Random(982_652)
#: the poison message of issue 9: its dead letter (key + value in base64) was over 1 MB
POISON_KEY = _rng.randbytes(982_652)
POISON_VALUE = _rng.randbytes(65_536)

#: Messages whose key is hostile too: (name, key, value, expected code or None when the
#: event is valid and must be scored). The dead letter's key is the message's key, cut.
HOSTILE_KEYED: list[tuple[str, bytes, bytes, str | None]] = [
    ("huge-key-random-value", POISON_KEY, POISON_VALUE, "bad_encoding"),
    ("huge-key-huge-value", _rng.randbytes(500_000), b"\x01" * 500_000, "too_large"),
    ("huge-key-valid-event", _rng.randbytes(900_000), event(event_id="keyed-valid-1"), None),
]
