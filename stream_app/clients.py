"""What every Kafka client of the service does the same way (no dependencies).

:data:`SASL_MECHANISMS` are the SASL mechanisms the clients may use
(``KAFKA_SASL_MECHANISM``) and the local broker enables. :func:`produce` is
``Producer.produce`` with back-pressure: when librdkafka's local queue is full
(``BufferError``) it serves delivery reports for a moment, which empties the queue, and
tries again, instead of failing the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SASL_MECHANISMS", "produce"]

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: seconds a full local queue is served (``poll``) before the next attempt
FULL_QUEUE_WAIT_S = 0.05


def produce(
    producer: Any,
    topic: str,
    value: bytes | None,
    key: bytes | str | None = None,
    partition: int = -1,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """``producer.produce(topic, value, key, partition, on_delivery=...)``, waiting while
    librdkafka's local queue is full (partition ``-1``: the producer's partitioner).

    >>> class Full:  # a producer whose queue is full once
    ...     full, sent, polls = True, [], 0
    ...     def produce(self, *args, **kwargs):
    ...         if self.full:
    ...             self.full = False
    ...             raise BufferError("queue full")
    ...         self.sent.append(args)
    ...     def poll(self, timeout):
    ...         self.polls += 1
    >>> p = Full()
    >>> produce(p, "t", b"v", b"k")
    >>> p.sent, p.polls
    ([('t', b'v', b'k', -1)], 1)
    """
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value, key, partition)
            else:
                producer.produce(topic, value, key, partition, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(FULL_QUEUE_WAIT_S)
