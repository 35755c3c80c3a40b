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

import logging

import orjson

from agents.failures import agent_failed, dead_letters, handle, send_dead_letter
from agents.score import process
from models.events import InvalidEvent, decode_event
from stream_app.app import app, events_topic, output, settings
from stream_app.deadletter import MAX_DLQ_RAW_BYTES, dlq_record
from stream_app.failures import set_path
from stream_app.metrics import counters
from stream_app.offset_guard import guard_topic
from stream_app.output import partition_for
from stream_app.topics import partition_counts

__all__ = ["MAX_DLQ_RAW_BYTES", "decode", "dlq_record"]

log = logging.getLogger(__name__)


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
    try:
        async for event in stream.events():
            message = event.message
            missed = await events_guard.missed(message.partition, message.offset)
            if missed is None:
                continue  # handled already (delivered twice)
            partition = message.partition
            await handle(event, missed, lambda p=partition: events_guard.handled(p), decode_one)
    except Exception as exc:  # outside the handling of one event: stop, commit nothing
        agent_failed("decode", exc)
        raise


async def decode_one(message, value: bytes | None = None) -> None:
    """Decode one input message (a Faust message, or one the offset guard read back)."""
    counters.events_in += 1
    value = message.value if value is None else value
    try:
        ev = decode_event(value)
    except InvalidEvent as exc:
        key, record = dead_letters.build(
            exc, value, message.key, message.topic, message.partition, message.offset
        )
        send_dead_letter(key, record, exc.code)
        return
    counters.decoded += 1
    key = ev.user_id.encode()
    partition = message.partition
    if IN_PLACE and partition_for(key, settings.partitions) == partition:
        counters.scored_in_place += 1
        set_path(("score", partition))  # its failures count with the scoring's
        await process(partition, ev)
    else:
        output.send(settings.topic_by_user, orjson.dumps(ev.to_dict()), key)
