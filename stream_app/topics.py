"""Create the service's Kafka topics when they are missing."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from stream_app.config import Settings

__all__ = [
    "MODEL_STATE_MAX_BYTES",
    "ensure_topics",
    "model_state_topic",
    "model_sync_topic",
    "partition_counts",
    "topic_limits",
]

log = logging.getLogger(__name__)

#: Largest model-state part the service writes (the topic and producer allow this much).
MODEL_STATE_MAX_BYTES = 32 * 1024 * 1024

#: topic name → number of partitions, as :func:`ensure_topics` found or made them
partition_counts: dict[str, int] = {}


def model_state_topic(settings: Settings) -> str:
    """Compacted topic holding per-partition model snapshots."""
    return f"{settings.app_id}-model-state"


def model_sync_topic(settings: Settings) -> str:
    """Topic of the learners' updates shared between workers (short retention: an update
    is useful for seconds)."""
    return f"{settings.app_id}-model-sync"


#: retention of the model-sync topic (its records are read within seconds, or never)
MODEL_SYNC_RETENTION_MS = 10 * 60 * 1000


def ensure_topics(settings: Settings, bootstrap: str, timeout: float = 30.0) -> list[str]:
    """Create the input, output, dead-letter, training and internal topics if absent.

    Returns the names of the topics it created. Existing topics are left as they are.
    Connects with the security settings of ``settings``; raises ``ConnectionError`` saying
    why (e.g. "authentication failed: ...") when the broker cannot be used.
    """
    wanted = {
        settings.topic_events: {},
        settings.topic_scores: {},
        settings.topic_dlq: {},
        settings.topic_training: {},
        settings.topic_rolling: {},
        settings.topic_by_user: {},
        model_state_topic(settings): {
            "cleanup.policy": "compact",
            "max.message.bytes": str(MODEL_STATE_MAX_BYTES),
        },
        model_sync_topic(settings): {"retention.ms": str(MODEL_SYNC_RETENTION_MS)},
    }
    admin = AdminClient({"bootstrap.servers": bootstrap, **settings.kafka_client_config()})
    failure = None
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        failure = str(exc)
    if failure is not None:
        from stream_app.broker import metadata_error

        # The raised error's traceback keeps this frame (hence `admin`, deleted here) and,
        # if chained, the KafkaException's, whose list_topics frame holds the client as
        # `self`: either would keep the client reconnecting (and logging) for as long as
        # the error is referenced. So: no chaining, and no client left in this frame.
        del admin
        reason = metadata_error(bootstrap, 5.0, settings.kafka_client_config()) or failure
        raise ConnectionError(
            f"cannot use Kafka at {bootstrap} ({settings.security_protocol}): {reason}"
        )
    existing = set(metadata.topics)
    for name in wanted:
        if name in existing:
            partition_counts[name] = len(metadata.topics[name].partitions)
        else:
            partition_counts[name] = settings.partitions
    new = [
        NewTopic(name, num_partitions=settings.partitions, replication_factor=1, config=config)
        for name, config in wanted.items()
        if name not in existing
    ]
    if not new:
        return []
    created = []
    for name, future in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
        except Exception as exc:  # a concurrent creator wins the race: fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    log.info("created topics: %s", ", ".join(created))
    return created


#: Kafka's default message limit (``message.max.bytes``), when the broker does not say
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


def topic_limits(
    settings: Settings, bootstrap: str, topics: list[str], timeout: float = 30.0
) -> tuple[dict[str, int], int]:
    """The message limit of each of ``topics`` (its ``max.message.bytes``), and the
    broker's ``message.max.bytes`` (the limit of topics created later, e.g. Faust's
    changelogs), read with the admin API at start rather than assumed."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **settings.kafka_client_config()})
    metadata = admin.list_topics(timeout=timeout)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    broker_ids = sorted(metadata.brokers)
    if broker_ids:
        resources.append(ConfigResource(ConfigResource.Type.BROKER, str(broker_ids[0])))
    limits: dict[str, int] = {}
    broker_limit = KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    for resource, future in admin.describe_configs(resources).items():
        try:
            configs = future.result(timeout)
        except Exception as exc:  # e.g. no DescribeConfigs permission: assume the default
            log.warning(
                "cannot read the message limit of %s %s (%s); assuming %d bytes",
                resource.restype.name.lower(),
                resource.name,
                exc,
                KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
            )
            continue
        if resource.restype == ConfigResource.Type.BROKER:
            entry = configs.get("message.max.bytes")
            if entry is not None and entry.value:
                broker_limit = int(entry.value)
        else:
            entry = configs.get("max.message.bytes")
            if entry is not None and entry.value:
                limits[resource.name] = int(entry.value)
    return limits, broker_limit
