"""Decode and validate behaviour events.

One function, :func:`decode_event`, turns the raw bytes of a Kafka message into a
validated :class:`Event` or raises :class:`InvalidEvent` carrying a stable error code.
The codes are part of the public contract (they appear in ``events-dlq``):

>>> ev = decode_event(b'{"user_id": 7, "item_id": "a1", "type": "pv", "ts": 1511658000}')
>>> ev.type, ev.user_id, ev.ts
('view', '7', 1511658000.0)
>>> try:
...     decode_event(b'{"user_id": 7, "item_id": "a1", "type": "teleport", "ts": 1511658000}')
... except InvalidEvent as exc:
...     print(exc.code)
unknown_type
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

__all__ = [
    "CONVERSION_TYPES",
    "ERROR_CODES",
    "EVENT_TYPES",
    "EXPOSURE_TYPES",
    "MAX_MESSAGE_BYTES",
    "Event",
    "InvalidEvent",
    "decode_event",
    "validate_event",
]

#: Canonical event types.
EVENT_TYPES = ("view", "click", "cart", "fav", "purchase", "impression")
#: Accepted spellings, mapped to the canonical type.
TYPE_ALIASES = {t: t for t in EVENT_TYPES} | {
    "pv": "view",
    "buy": "purchase",
    "addtocart": "cart",
    "transaction": "purchase",
}
#: Events whose label is decided by what the user does next.
EXPOSURE_TYPES = frozenset({"view", "click", "impression"})
#: Events that make an earlier exposure of the same item positive.
CONVERSION_TYPES = frozenset({"cart", "fav", "purchase"})

MAX_MESSAGE_BYTES = 64 * 1024
MAX_STRING_CHARS = 256
MAX_CONTEXT_KEYS = 64
#: Deepest nesting of JSON objects and arrays accepted (the event itself is level 1).
MAX_DEPTH = 64
MAX_POSITION = 1_000_000
MIN_TS = 946684800.0  # 2000-01-01T00:00:00Z
MAX_FUTURE_S = 86400.0
# Numbers above this are taken as epoch milliseconds (year 2286 in seconds).
_MS_THRESHOLD = 1e10

#: Stable error codes published in the dead-letter topic, with their meaning.
ERROR_CODES = {
    "too_large": "message over 64 KiB",
    "bad_encoding": "message is not valid UTF-8 (or has a byte order mark or lone surrogate)",
    "not_json": "message is not valid JSON",
    "not_object": "message is JSON but not an object",
    "missing_field": "a required field is absent",
    "null_field": "a required field is null",
    "wrong_type": "a field has the wrong type",
    "unknown_type": "the event type is not one of the known types or aliases",
    "not_finite": "a number is NaN or infinite",
    "out_of_range": "a value is outside its allowed range",
    "string_too_long": "a string is longer than 256 characters",
    "bad_timestamp": "the timestamp cannot be parsed",
    "ts_out_of_range": "the timestamp is before 2000 or more than a day in the future",
    "bad_context": "context is not a flat object of at most 64 string keys",
    "duplicate_key": "a JSON object has the same key more than once",
    "too_deep": "JSON objects and arrays are nested more than 64 levels deep",
    "bad_id": (
        "an id contains a control, format (invisible or direction-changing), line or "
        "paragraph separator, surrogate, private-use or unassigned character"
    ),
}

_REQUIRED = ("user_id", "item_id", "type", "ts")


class InvalidEvent(ValueError):
    """An event that fails validation; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class Event:
    """A validated behaviour event. Ids are normalised to strings, ``ts`` to epoch seconds."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    category_id: str | None = None
    session_id: str | None = None
    query: str | None = None
    position: int | None = None
    price: float | None = None
    propensity: float | None = None
    label: int | None = None
    context: dict[str, str | float] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (drops absent optionals); :func:`validate_event` accepts it back."""
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.type,
            "ts": self.ts,
        }
        for name in (
            "category_id",
            "session_id",
            "query",
            "position",
            "price",
            "propensity",
            "label",
            "context",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def decode_event(raw: bytes, *, now: float | None = None) -> Event:
    """Parse and validate one message payload.

    Raises :class:`InvalidEvent` with a stable code for any problem; never anything else.
    """
    if raw is None:
        raise InvalidEvent("not_json", "empty message (null value)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if raw[:3] == b"\xef\xbb\xbf":
            raise InvalidEvent("bad_encoding", "UTF-8 byte order mark is not allowed") from None
        if "utf-8" in msg.lower() or "surrogate" in msg.lower():
            raise InvalidEvent("bad_encoding", msg[:200]) from None
        if "depth limit" in msg:
            raise InvalidEvent("too_deep", f"nested more than {MAX_DEPTH} levels") from None
        raise InvalidEvent("not_json", msg[:200]) from None
    if type(obj) is dict:
        # orjson silently keeps the last of duplicate keys. Every key in the raw text is
        # followed by a colon: when the raw text has no more colons than the object has
        # keys (the usual flat event), there is no duplicate and no nested key, and
        # arrays alone cannot nest deeper than their count of "[" + 2.
        colons = raw.count(b":")
        if colons != len(obj) or raw.count(b"[") > MAX_DEPTH - 2:
            _check_structure(raw, obj, colons)
    return validate_event(obj, now=now)


# A "\u003a" escape (a colon) not itself escaped by a preceding backslash.
_ESCAPED_COLON = re.compile(rb"(?<!\\)(?:\\\\)*\\u003[aA]")


def _check_structure(raw: bytes, obj: dict, colons: int) -> None:
    """Reject nesting deeper than :data:`MAX_DEPTH` and duplicate keys, anywhere.

    Exact, without a second parse: each colon of the raw text separates a key from its
    value or is inside a string (literally or escaped as ``\\u003a``). orjson writes one
    colon per key and colons in strings literally, so re-encoding the parsed value gives
    as many colons as the raw text has unless a duplicate key (with its value) was dropped.
    """
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # else fewer containers than that
        level: list[Any] = [obj]
        depth = 1
        while level:
            if depth > MAX_DEPTH:
                raise InvalidEvent("too_deep", f"nested more than {MAX_DEPTH} levels")
            level = [
                item
                for container in level
                for item in (container.values() if type(container) is dict else container)
                if type(item) is dict or type(item) is list
            ]
            depth += 1
    if b"\\u" in raw:
        colons += len(_ESCAPED_COLON.findall(raw))
    if colons != orjson.dumps(obj).count(b":"):
        raise InvalidEvent("duplicate_key", "an object has the same key more than once")


def validate_event(obj: Any, *, now: float | None = None) -> Event:
    """Validate an already-parsed JSON value and build an :class:`Event`."""
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", f"top-level JSON value is {_json_type(obj)}")
    for name in _REQUIRED:
        if name not in obj:
            raise InvalidEvent("missing_field", f"'{name}' is required")
        if obj[name] is None:
            raise InvalidEvent("null_field", f"'{name}' is null")
    user_id = _id(obj, "user_id")
    item_id = _id(obj, "item_id")
    raw_type = obj["type"]
    if not isinstance(raw_type, str):
        raise InvalidEvent("wrong_type", f"'type' must be a string, got {_json_type(raw_type)}")
    etype = TYPE_ALIASES.get(raw_type.strip().lower())
    if etype is None:
        raise InvalidEvent("unknown_type", f"'type' {raw_type[:64]!r} is not a known event type")
    ts = _timestamp(obj["ts"], time.time() if now is None else now)
    category_id = _optional_id(obj, "category_id")
    session_id = _optional_id(obj, "session_id")

    event_id = obj.get("event_id")
    event_id = _derived_id(obj) if event_id is None else _checked_id(event_id, "event_id")

    position = obj.get("position")
    if position is not None:
        position = _int(position, "position")
        if not 1 <= position <= MAX_POSITION:
            raise InvalidEvent(
                "out_of_range", f"'position' must be in [1, {MAX_POSITION}], got {position:.6g}"
            )
    price = obj.get("price")
    if price is not None:
        price = _number(price, "price")
        if price < 0:
            raise InvalidEvent("out_of_range", f"'price' must be >= 0, got {price}")
    propensity = obj.get("propensity")
    if propensity is not None:
        propensity = _number(propensity, "propensity")
        if not 0.0 < propensity <= 1.0:
            raise InvalidEvent("out_of_range", f"'propensity' must be in (0, 1], got {propensity}")
    label = obj.get("label")
    if label is not None:
        label = _int(label, "label")
        if label not in (0, 1):
            raise InvalidEvent("out_of_range", f"'label' must be 0 or 1, got {label}")

    return Event(
        event_id=event_id,
        user_id=user_id,
        item_id=item_id,
        type=etype,
        ts=ts,
        category_id=category_id,
        session_id=session_id,
        query=_optional_string(obj, "query"),
        position=position,
        price=price,
        propensity=propensity,
        label=label,
        context=_context(obj.get("context")),
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"'{name}' must be a string, got {_json_type(value)}")
    if len(value) > MAX_STRING_CHARS:
        raise InvalidEvent(
            "string_too_long", f"'{name}' has {len(value)} characters > {MAX_STRING_CHARS}"
        )
    return value


def _id(obj: dict, name: str) -> str:
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(
            "wrong_type", f"'{name}' must be a string or integer, got {_json_type(value)}"
        )
    if isinstance(value, int):
        return str(value)
    if not value:
        raise InvalidEvent("out_of_range", f"'{name}' is an empty string")
    return _checked_id(value, name)


#: Unicode general categories an id may not contain: control (C0, DEL, C1), format
#: (zero-width space and joiners, bidirectional overrides and isolates, the byte order
#: mark, soft hyphen, tag characters...), line and paragraph separators, surrogates,
#: private use and unassigned code points. Each is invisible, changes the direction of
#: the text around it, or has no agreed meaning, so two ids that look the same could
#: otherwise be two users (and would carry the character into keys, logs and features).
BAD_ID_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def normalize_id(value: str, name: str = "id") -> str:
    """An id in Unicode normal form NFC, or :class:`InvalidEvent` ``bad_id`` when it
    contains a character of :data:`BAD_ID_CATEGORIES`.

    A precomposed and a decomposed "é" are the same id:

    >>> normalize_id("caf\u00e9") == normalize_id("cafe\u0301") == "caf\u00e9"
    True
    >>> try:
    ...     normalize_id("user\u200b42", "user_id")
    ... except InvalidEvent as exc:
    ...     print(exc.code, exc.detail)
    bad_id 'user_id' contains U+200B (category Cf), which is not allowed in an id
    """
    if value.isascii():  # the usual id: NFC already; only controls can be wrong
        if value.isprintable():
            return value
    elif value.isprintable() and unicodedata.is_normalized("NFC", value):
        return value  # printable excludes every category above (and other spaces)
    for char in value:
        category = unicodedata.category(char)
        if category in BAD_ID_CATEGORIES:
            raise InvalidEvent(
                "bad_id",
                f"'{name}' contains U+{ord(char):04X} (category {category}), "
                "which is not allowed in an id",
            )
    return unicodedata.normalize("NFC", value)


def _checked_id(value: Any, name: str) -> str:
    """A string id: NFC, at most 256 characters, none of :data:`BAD_ID_CATEGORIES`."""
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"'{name}' must be a string, got {_json_type(value)}")
    if len(value) > MAX_STRING_CHARS:  # before normalising: bounds the work
        raise InvalidEvent(
            "string_too_long", f"'{name}' has {len(value)} characters > {MAX_STRING_CHARS}"
        )
    value = normalize_id(value, name)
    if len(value) > MAX_STRING_CHARS:  # NFC can lengthen a few characters (U+0958...)
        raise InvalidEvent(
            "string_too_long",
            f"'{name}' has {len(value)} characters > {MAX_STRING_CHARS} in NFC",
        )
    return value


def _optional_id(obj: dict, name: str) -> str | None:
    return None if obj.get(name) is None else _id(obj, name)


def _optional_string(obj: dict, name: str) -> str | None:
    value = obj.get(name)
    return None if value is None else _string(value, name)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent("wrong_type", f"'{name}' must be a number, got {_json_type(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidEvent("not_finite", f"'{name}' is not finite")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidEvent("not_finite", f"'{name}' is not finite")
        raise InvalidEvent("wrong_type", f"'{name}' must be an integer, got {_json_type(value)}")
    return value


def _timestamp(value: Any, now: float) -> float:
    if isinstance(value, bool):
        raise InvalidEvent("wrong_type", "'ts' must be a number or an ISO-8601 string, got boolean")
    if isinstance(value, (int, float)):
        ts = float(value)
        if not math.isfinite(ts):
            raise InvalidEvent("not_finite", "'ts' is not finite")
        if abs(ts) >= _MS_THRESHOLD:
            ts /= 1000.0
    elif isinstance(value, str):
        if len(value) > 64:
            raise InvalidEvent("bad_timestamp", "'ts' string is too long for a timestamp")
        try:
            text = value.strip()
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEvent("bad_timestamp", f"'ts' {value!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        ts = parsed.timestamp()
    else:
        raise InvalidEvent(
            "wrong_type", f"'ts' must be a number or an ISO-8601 string, got {_json_type(value)}"
        )
    if ts < MIN_TS or ts > now + MAX_FUTURE_S:
        raise InvalidEvent(
            "ts_out_of_range", f"'ts' {ts:.0f} is before 2000 or more than a day in the future"
        )
    return ts


def _context(value: Any) -> dict[str, str | float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidEvent("bad_context", f"'context' must be an object, got {_json_type(value)}")
    if len(value) > MAX_CONTEXT_KEYS:
        raise InvalidEvent("bad_context", f"'context' has {len(value)} keys > {MAX_CONTEXT_KEYS}")
    out: dict[str, str | float] = {}
    for key, item in value.items():
        if len(key) > MAX_STRING_CHARS:
            raise InvalidEvent("string_too_long", "a 'context' key is over 256 characters")
        if isinstance(item, str):
            out[key] = _string(item, f"context.{key[:32]}")
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            out[key] = _number(item, f"context.{key[:32]}")
        else:
            raise InvalidEvent(
                "bad_context",
                f"'context.{key[:32]}' must be a string or number, got {_json_type(item)}",
            )
    return out


def _derived_id(obj: dict) -> str:
    """A content hash, so that replaying the same message yields the same id."""
    try:
        content = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # only Python objects get here: JSON is checked
        code = "too_deep" if "recursion" in str(exc).lower() else "wrong_type"
        raise InvalidEvent(code, f"cannot derive an event id from the content: {exc}") from None
    digest = hashlib.blake2b(content, digest_size=12)
    return "h-" + digest.hexdigest()
