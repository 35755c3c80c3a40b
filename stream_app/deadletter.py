"""Dead letters that always fit their topic (no Kafka or Faust imports: unit-testable).

A dead letter on ``events-dlq`` carries the rejected message's payload (text, or base64
when it is not UTF-8) and, as its Kafka key, the message's key. Both are bounded, and the
whole record (key, value and Kafka's framing) is kept under the dead-letter topic's
message limit, whatever the input: the worker reads that limit at start
(:func:`stream_app.topics.topic_limits`) rather than assuming Kafka's default 1 MB. What
is cut is described by its original size and SHA-256, so the original message can still
be identified (and found at ``topic``/``partition``/``offset``).

Besides the input validation codes of :data:`models.events.ERROR_CODES`, the worker
writes dead letters with the codes of :data:`WORKER_ERROR_CODES`: an output record that
Kafka would refuse (``output_too_large``, ``output_rejected``) and an event whose
processing raised (``processing_failed``).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

__all__ = [
    "DLQ_MIN_LIMIT",
    "MAX_DLQ_KEY_BYTES",
    "MAX_DLQ_RAW_BYTES",
    "WORKER_ERROR_CODES",
    "DeadLetters",
    "dlq_record",
    "framing_margin",
]

#: A dead letter carries at most this much of the rejected payload (the input limit).
MAX_DLQ_RAW_BYTES = 64 * 1024
#: ... and at most this much of its key (as the dead letter's Kafka key).
MAX_DLQ_KEY_BYTES = 1024
#: Smallest dead-letter topic limit the worker accepts (``max.message.bytes``).
DLQ_MIN_LIMIT = 2048
#: Longest error detail a dead letter carries (characters).
MAX_DETAIL_CHARS = 1024

#: Dead-letter codes the worker itself writes (the input ones: models.events.ERROR_CODES).
WORKER_ERROR_CODES = {
    "output_too_large": "a record the worker produced for this input is over its topic's "
    "message limit (the record is replaced by this dead letter)",
    "output_rejected": "Kafka refused a record the worker produced for this input because "
    "of its content (invalid or corrupt record)",
    "processing_failed": "processing a valid event raised an unexpected exception (its type "
    "and message are in detail; the original payload in raw)",
}


def framing_margin(limit: int) -> int:
    """Bytes of a message limit left for Kafka's framing (record batch header, record
    header, compression): what a record's key and value must stay under."""
    return 256 + limit // 64


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(raw: bytes, cut: bool) -> tuple[str, str]:
    """``raw`` as (text, "utf-8"), or (base64, "base64") when it is not UTF-8."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if cut and exc.start >= len(raw) - 3:  # the cut split a character
            return raw[: exc.start].decode("utf-8"), "utf-8"
        return base64.b64encode(raw).decode("ascii"), "base64"


def dlq_record(
    error: Any,
    raw: bytes | None,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    *,
    max_raw: int = MAX_DLQ_RAW_BYTES,
) -> dict[str, Any]:
    """The dead-letter record for a rejected message (``raw`` as text, or base64).

    ``error`` has ``code`` and ``detail`` (an :class:`~models.events.InvalidEvent`).
    Payloads over ``max_raw`` bytes are cut, with ``raw_truncated: true``, their full
    size in ``raw_bytes`` and the SHA-256 of the whole payload in ``raw_sha256``.

    >>> from models.events import InvalidEvent
    >>> r = dlq_record(InvalidEvent("too_large", "big"), b"x" * 10, "events", 0, 7, max_raw=4)
    >>> r["raw"], r["raw_truncated"], r["raw_bytes"], r["raw_sha256"][:12]
    ('xxxx', True, 10, 'fc11d6f28e59')
    """
    extra: dict[str, Any] = {}
    payload: str | None
    if raw is None:
        payload, encoding = None, "null"
    else:
        cut = len(raw) > max_raw
        if cut:
            extra = {"raw_truncated": True, "raw_bytes": len(raw), "raw_sha256": sha256(raw)}
            raw = raw[:max_raw]
        payload, encoding = _payload(raw, cut)
    detail = str(error.detail)
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[:MAX_DETAIL_CHARS] + "..."
    return {
        "error": error.code,
        "detail": detail,
        "raw": payload,
        "raw_encoding": encoding,
        **extra,
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }


class _Error:
    __slots__ = ("code", "detail")

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail


class DeadLetters:
    """Builds dead letters (key and value bytes) that fit a topic limit of ``limit`` bytes
    (the smaller of the dead-letter topic's ``max.message.bytes`` and what the producer
    may send)."""

    def __init__(self, limit: int = 1_048_588) -> None:
        self.set_limit(limit)

    def set_limit(self, limit: int) -> None:
        if limit < DLQ_MIN_LIMIT:
            raise ValueError(
                f"the dead-letter topic accepts messages of at most {limit} bytes: "
                f"dead letters need at least {DLQ_MIN_LIMIT}"
            )
        self.limit = limit
        #: what key + value of a dead letter must stay under
        self.budget = limit - framing_margin(limit)

    def build(
        self,
        error: Any,
        raw: bytes | None,
        key: bytes | None,
        topic: str | None,
        partition: int | None,
        offset: int | None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[bytes | None, bytes]:
        """(key, value) of the dead letter of one message; ``len(key) + len(value)`` is
        at most :attr:`budget`, whatever the input.

        A key over :data:`MAX_DLQ_KEY_BYTES` (or over an eighth of the budget) is cut,
        with ``key_truncated``, ``key_bytes`` and ``key_sha256`` in the record; the
        payload is cut further when the record would not fit (JSON escapes and base64
        make it larger than the bytes it carries)."""
        out_key, key_info = self._key(key)
        max_raw = MAX_DLQ_RAW_BYTES
        for _ in range(8):
            record = dlq_record(error, raw, topic, partition, offset, max_raw=max_raw)
            record.update(key_info)
            if extra:
                record.update(extra)
            value = orjson.dumps(record)
            size = len(value) + len(out_key or b"")
            if size <= self.budget:
                return out_key, value
            if not record["raw"]:
                break
            # record bytes per payload byte (JSON escapes, base64), and the room left
            carried = len(orjson.dumps(record["raw"]))
            ratio = carried / max(min(max_raw, len(raw or b"")), 1)
            room = self.budget - (size - carried) - 64
            max_raw = max(0, min(max_raw - 1, int(room / max(ratio, 1.0))))
            if max_raw == 0:
                break
        # nothing of the payload fits (tiny limit, or a very long detail): the minimum
        record = {
            "error": error.code,
            "detail": str(error.detail)[:200],
            "raw": None,
            "raw_encoding": "omitted",
            "raw_truncated": raw is not None,
            "raw_bytes": len(raw or b""),
            "raw_sha256": sha256(raw or b""),
            "topic": topic,
            "partition": partition,
            "offset": offset,
            **key_info,
        }
        if key is not None and "key_sha256" not in record:
            record.update(key_bytes=len(key), key_sha256=sha256(key))
        return None, orjson.dumps(record)

    def _key(self, key: bytes | None) -> tuple[bytes | None, dict[str, Any]]:
        cap = min(MAX_DLQ_KEY_BYTES, self.budget // 8)
        if key is None or len(key) <= cap:
            return key, {}
        info = {"key_truncated": True, "key_bytes": len(key), "key_sha256": sha256(key)}
        return key[:cap], info

    def replacement(
        self,
        code: str,
        detail: str,
        destination: str,
        key: bytes | None,
        value: bytes | None,
        origin: tuple[str, int, int] | None,
    ) -> tuple[bytes | None, bytes]:
        """The compact dead letter that replaces an output record Kafka would refuse
        (``output_too_large``, ``output_rejected``): where it was going, its sizes and
        hashes, and the input message it came from (``origin``, when known); the record
        itself is not carried."""
        topic, partition, offset = origin if origin is not None else (None, None, None)
        info = {
            "destination": destination,
            "value_bytes": len(value or b""),
            "value_sha256": sha256(value or b""),
            "record_key_bytes": len(key or b""),
            "record_key_sha256": sha256(key or b""),
        }
        return self.build(_Error(code, detail), None, key, topic, partition, offset, info)

    def processing_failed(
        self, exc: BaseException, raw: bytes | None, key: bytes | None, origin: tuple[str, int, int]
    ) -> tuple[bytes | None, bytes]:
        """The dead letter of a valid event whose processing raised ``exc``."""
        detail = f"{type(exc).__name__}: {exc}"
        return self.build(_Error("processing_failed", detail), raw, key, *origin)
