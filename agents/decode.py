"""Decode and validate input events; route invalid ones to the dead-letter topic; score
valid ones in place when they already sit in their user's partition, else re-key them by
user id.

An input message keyed by its user id with the Java client's partitioner (murmur2, what
Kafka Streams, Faust and ``importance replay`` use) is in the partition that the by-user
topic would give it, and the events topic is co-partitioned with the by-user topic (same
partition count, so Faust assigns partition *p* of both to the same worker): it is scored
right here, saving a produce and a consume per event. Any other message (unkeyed, keyed
otherwise, or an events topic with another partition count) goes through the by-user
topic as before. ``IMPORTANCE_SCORE_IN_PLACE=false`` sends every event through it.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson

from agents.score import process
from models.events import MAX_MESSAGE_BYTES, InvalidEvent, decode_event
from stream_app.app import app, events_topic, output, settings
from stream_app.metrics import counters
from stream_app.offset_guard import guard_topic
from stream_app.output import partition_for
from stream_app.topics import partition_counts

__all__ = ["MAX_DLQ_RAW_BYTES", "decode", "dlq_record"]

log = logging.getLogger(__name__)


#: A dead letter carries at most this much of the rejected payload (``too_large`` ones
#: are cut here), so it always fits a topic's default 1 MB message limit.
MAX_DLQ_RAW_BYTES = MAX_MESSAGE_BYTES


def dlq_record(
    error: InvalidEvent, raw: bytes | None, topic: str, partition: int, offset: int
) -> dict[str, Any]:
    """The dead-letter record for a rejected message (``raw`` as text, or base64).

    Payloads over :data:`MAX_DLQ_RAW_BYTES` are cut to that many bytes, with
    ``raw_truncated: true`` and the full size in ``raw_bytes``.
    """
    extra: dict[str, Any] = {}
    if raw is None:
        payload: str | None = None
        encoding = "null"
    else:
        if len(raw) > MAX_DLQ_RAW_BYTES:
            extra = {"raw_truncated": True, "raw_bytes": len(raw)}
            raw = raw[:MAX_DLQ_RAW_BYTES]
        try:
            payload, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError as exc:
            if extra and exc.start >= len(raw) - 3:  # the cut split a character
                payload, encoding = raw[: exc.start].decode("utf-8"), "utf-8"
            else:
                payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return {
        "error": error.code,
        "detail": error.detail,
        "raw": payload,
        "raw_encoding": encoding,
        **extra,
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }


def score_in_place() -> bool:
    """Whether events already in their user's partition are scored without re-keying."""
    return (
        settings.score_in_place
        and partition_counts.get(settings.topic_events) == settings.partitions
    )


IN_PLACE = score_in_place()

#: re-reads input messages Faust skips after a rebalance (see stream_app/offset_guard.py)
events_guard = guard_topic(app, events_topic.get_topic_name(), settings)


@app.agent(events_topic)
async def decode(stream):
    """events → (events-by-user | events-dlq)."""
    async for event in stream.events():
        message = event.message
        missed = await events_guard.missed(message.partition, message.offset)
        if missed is None:
            continue  # handled already (delivered twice)
        for earlier in missed:
            await decode_one(earlier)
        await events_guard.handled(message.partition)
        await decode_one(message, event.value)


async def decode_one(message, value: bytes | None = None) -> None:
    """Decode one input message (a Faust message, or one the offset guard read back)."""
    counters.events_in += 1
    value = message.value if value is None else value
    try:
        ev = decode_event(value)
    except InvalidEvent as exc:
        record = dlq_record(exc, value, message.topic, message.partition, message.offset)
        output.send(settings.topic_dlq, orjson.dumps(record), message.key)
        counters.dlq += 1
        counters.dlq_by_code[exc.code] = counters.dlq_by_code.get(exc.code, 0) + 1
        return
    counters.decoded += 1
    key = ev.user_id.encode()
    partition = message.partition
    if IN_PLACE and partition_for(key, settings.partitions) == partition:
        counters.scored_in_place += 1
        await process(partition, ev)
    else:
        output.send(settings.topic_by_user, orjson.dumps(ev.to_dict()), key)
