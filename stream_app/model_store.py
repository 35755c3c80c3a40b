"""Per-partition model snapshots on a compacted Kafka topic.

Partition ``P`` of the by-user topic has its model saved on partition ``P`` of the
model-state topic, one message per state part, keyed ``"<P>:<part>"``. Values are JSON
(see :mod:`models.state`): loading never unpickles anything.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from models.state import StateError

__all__ = ["decode_parts", "encode_parts", "read_snapshot"]

log = logging.getLogger(__name__)


def encode_parts(partition: int, parts: dict[str, dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """Kafka (key, value) pairs for a snapshot; ``meta`` goes last, marking it complete."""
    order = [name for name in parts if name != "meta"] + ["meta"]
    return [(f"{partition}:{name}".encode(), orjson.dumps(parts[name])) for name in order]


def decode_parts(raw: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Parse the raw values of a snapshot: JSON objects only, else :class:`StateError`.

    The bytes come from a Kafka topic anyone with write access can fill, so they are
    only ever parsed as JSON (never unpickled or evaluated).
    """
    parts: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        try:
            part = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise StateError(f"model-state part {name[:64]!r} is not JSON: {exc}") from None
        if not isinstance(part, dict):
            raise StateError(f"model-state part {name[:64]!r} is not a JSON object")
        parts[name] = part
    return parts


def read_snapshot(
    bootstrap: str, topic: str, partition: int, timeout: float = 30.0, **client_config: Any
) -> dict[str, dict[str, Any]] | None:
    """Read the latest snapshot of one partition, or None when there is none.

    Blocking (run it in an executor from async code). Reads the partition from the
    beginning to its end offset and keeps the newest value per part. A snapshot counts
    only when all parts written before its ``meta`` are present. Raises
    :class:`~models.state.StateError` when a part is not a JSON object.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"model-state-reader-{topic}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.message.max.bytes": 64 * 1024 * 1024,
            "receive.message.max.bytes": 128 * 1024 * 1024,
            **client_config,
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout
        )
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        parts: dict[str, bytes] = {}
        complete: dict[str, bytes] | None = None
        while True:
            msg = consumer.poll(timeout)
            if msg is None:
                raise TimeoutError(f"timed out reading {topic}[{partition}]")
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    break
                raise RuntimeError(f"reading {topic}[{partition}]: {msg.error()}")
            key = (msg.key() or b"").decode("utf-8", "replace")
            prefix, _, name = key.partition(":")
            if prefix != str(partition) or msg.value() is None:
                continue
            parts[name] = msg.value()
            if name == "meta":
                complete = dict(parts)
            if msg.offset() >= high - 1:
                break
        if complete is None:
            return None
        return decode_parts(complete)
    finally:
        consumer.close()
