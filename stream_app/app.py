"""The Faust application: topics, tables and settings shared by the agents.

Importing this module builds the app from the environment (see
:class:`stream_app.config.Settings`). The agents live in :mod:`agents`; the worker entry
point (:mod:`stream_app.worker`) imports both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
from faust.web import drivers as web_drivers

from stream_app.config import Settings
from stream_app.local_store import store_url
from stream_app.output import Output
from stream_app.topics import MODEL_STATE_MAX_BYTES, model_state_topic

__all__ = [
    "app",
    "by_user_topic",
    "client_config",
    "dlq_topic",
    "events_topic",
    "model_topic",
    "output",
    "pending_table",
    "prepare_data_dir",
    "scores_topic",
    "settings",
    "training_topic",
]


def resolve_bootstrap(settings: Settings) -> str:
    """``KAFKA_BOOTSTRAP_SERVERS`` of ``settings`` when set, else the local broker's address
    (:func:`stream_app.broker.bootstrap_servers`)."""
    from stream_app.broker import bootstrap_servers

    return bootstrap_servers(settings.bootstrap_servers)


def client_config(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers and security settings for a confluent-kafka client."""
    return {"bootstrap.servers": resolve_bootstrap(settings), **settings.kafka_client_config()}


#: Faust's aiohttp driver with connection limits and quiet, credential-free errors
web_drivers.DRIVERS.aliases.setdefault("importance", "stream_app.web.server:Web")


def prepare_data_dir(settings: Settings) -> Path:
    """The worker's data directory, created with its parents (Faust creates only the last
    level: a fresh checkout has no ``.cache``). A relative ``IMPORTANCE_DATA_DIR`` is
    relative to the working directory."""
    path = Path(settings.data_dir).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


def create_app(settings: Settings) -> faust.App:
    """A Faust app configured from ``settings``."""
    bootstrap = resolve_bootstrap(settings)
    brokers = ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())
    return faust.App(
        settings.app_id,
        broker=brokers,
        broker_credentials=settings.faust_credentials(),
        store=store_url(settings.table_store),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        datadir=str(prepare_data_dir(settings)),
        web="importance://",
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        # what the group's assignment tells the other workers (fan-out, user routing)
        canonical_url=settings.advertised_url,
        web_enabled=True,
        # Faust's /router/* and /table/* show worker URLs, assignments and table names
        # (and answer unknown names with a 503 and a KeyError); the API's routing to
        # other workers reads the assignment in-process and does not need them
        web_router_enabled=False,
        web_tables_enabled=False,
        # exactly_once is the worker's own (stream_app/transactions.py), not Faust's
        processing_guarantee="at_least_once",
        producer_max_request_size=MODEL_STATE_MAX_BYTES,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=5000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        table_standby_replicas=settings.standby_replicas,
        # A worker that died (SIGKILL, OOM) is noticed within 10 s, so its replacement
        # does not wait a minute for the group to let it in.
        broker_session_timeout=10.0,
        consumer_group_instance_id=settings.group_instance_id_or_none(),
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=30.0,
        stream_recovery_delay=0.5,
    )


settings = Settings.from_env()
app = create_app(settings)
#: The hot path's producer (scores, training samples, dead letters, re-keyed events, table
#: changelogs); Faust commits offsets only after it delivered (see stream_app/output.py).
output = Output(
    resolve_bootstrap(settings),
    settings.kafka_client_config(),
    transactional_id=settings.transactional_id_or_default() if settings.exactly_once else None,
    max_message_bytes=MODEL_STATE_MAX_BYTES,
    # local table stores copy changelog records from their delivery reports
    delivery_reports=settings.table_store == "rocksdb",
)

#: Input: behaviour events, JSON, keyed any way (or not at all).
events_topic = app.topic(settings.topic_events, value_serializer="raw", key_serializer="raw")
#: Internal: valid events re-keyed by user id, so per-user state is co-partitioned.
by_user_topic = app.topic(
    settings.topic_by_user,
    partitions=settings.partitions,
    value_serializer="raw",
    key_serializer="raw",
    internal=True,
)
scores_topic = app.topic(settings.topic_scores, value_serializer="raw", key_serializer="raw")
dlq_topic = app.topic(settings.topic_dlq, value_serializer="raw", key_serializer="raw")
training_topic = app.topic(settings.topic_training, value_serializer="raw", key_serializer="raw")
model_topic = app.topic(
    model_state_topic(settings),
    partitions=settings.partitions,
    value_serializer="raw",
    key_serializer="raw",
    compacting=True,
    internal=True,
    config={"max.message.bytes": str(MODEL_STATE_MAX_BYTES)},
)
#: Pending exposures per user, waiting for their label (changelog-backed).
pending_table = app.Table(
    "pending-labels",
    default=None,
    partitions=settings.partitions,
    schema=faust.Schema(key_serializer="json", value_serializer="json"),
)
