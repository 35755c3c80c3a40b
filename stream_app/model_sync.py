"""The learners' updates between workers: the ``<app id>-model-sync`` topic.

Within one worker, :class:`models.model_sync.SharedLearners` adds each partition's
updates to the other partitions' learners directly. :class:`RemoteSync` carries them to
the other workers of the group: it produces every exported delta (a small JSON record
keyed by this worker's id) and reads every partition of the topic from its end with a
consumer of its own (no group: every worker reads every record), handing the records of
other workers to :meth:`~models.model_sync.SharedLearners.receive` on the event loop.

What a restart may do: a worker reads from the end of the topic when it starts, so the
updates other workers exported while it was down are not added to its learners (its
learners restart from their snapshots, which hold what they had learned). Records that
are malformed or not for this model's size are counted and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer, TopicPartition

from models.model_sync import SharedLearners, WeightDelta
from models.state import StateError

__all__ = ["RemoteSync"]

log = logging.getLogger(__name__)


class RemoteSync:
    """Publishes this worker's learner updates and applies other workers' (see module)."""

    def __init__(
        self,
        hub: SharedLearners,
        topic: str,
        client_config: dict[str, Any],
        n_features: int,
    ) -> None:
        self.hub = hub
        self.topic = topic
        self.client_config = client_config
        self.n_features = n_features
        self.worker_id = uuid.uuid4().hex
        self.published = 0
        self.received = 0
        self.skipped = 0
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None

    def publish(self, partition: int, delta: WeightDelta) -> None:
        """Produce one exported delta (best effort: a full queue drops it, counted)."""
        if self._producer is None:
            self._producer = Producer(
                {**self.client_config, "linger.ms": 20, "enable.idempotence": False}
            )
        record = {"worker": self.worker_id, "partition": partition, **delta.to_state()}
        try:
            self._producer.produce(self.topic, orjson.dumps(record), self.worker_id.encode())
            self.published += 1
        except BufferError:
            self.skipped += 1
        self._producer.poll(0)

    def _open_consumer(self) -> Consumer:
        consumer = Consumer(
            {
                **self.client_config,
                "group.id": f"{self.topic}-{self.worker_id}",  # never joins: assign() only
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        metadata = consumer.list_topics(self.topic, timeout=30.0)
        partitions = sorted(metadata.topics[self.topic].partitions)
        consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in partitions])
        return consumer

    def handle(self, value: bytes | None) -> None:
        """Apply one record, unless it is this worker's own or unusable."""
        try:
            record = orjson.loads(value or b"")
            if record.get("worker") == self.worker_id:
                return
            delta = WeightDelta.from_state(record, self.n_features)
        except (orjson.JSONDecodeError, AttributeError, StateError) as exc:
            self.skipped += 1
            if self.skipped <= 3 or self.skipped % 1000 == 0:
                log.warning("model-sync: skipped an unusable record (%d so far): %s",
                            self.skipped, exc)  # fmt: skip
            return
        self.hub.receive(delta)
        self.received += 1

    async def run(self, poll_s: float = 0.2) -> None:
        """Read other workers' updates until cancelled (a task of the worker)."""
        loop = asyncio.get_running_loop()
        self._consumer = consumer = await loop.run_in_executor(None, self._open_consumer)
        try:
            while True:
                messages = await loop.run_in_executor(None, consumer.consume, 500, poll_s)
                own = self.worker_id.encode()
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("model-sync: %s", error)
                        continue
                    if message.key() != own:  # this worker's own: applied already
                        self.handle(message.value())
                if self._producer is not None:
                    self._producer.poll(0)
        finally:
            await loop.run_in_executor(None, consumer.close)
            if self._producer is not None:
                self._producer.flush(5.0)
