"""Settings, read from environment variables (documented in docs/configuration.md) and
validated.

:class:`Settings` is a pydantic-settings model: every field says which environment
variable sets it, its type, its allowed range and what it means (``description``;
``tests/unit/test_config.py`` checks that docs/configuration.md lists every variable
with its default). :meth:`Settings.from_env` reads and checks them all at once and
raises :class:`SettingsError`, one line per wrong variable naming the variable, the
value given (never a secret's) and what is allowed; ``importance worker`` shows it and
exits before it creates a topic or joins the consumer group.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from stream_app.clients import SASL_MECHANISMS
from stream_app.paths import repo_root

__all__ = [
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "Settings",
    "SettingsError",
    "env_name",
    "repo_root",
    "unknown_variables",
]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")
#: fields whose values never appear in an error, a log line or the repr
SECRET_FIELDS = frozenset({"sasl_password", "api_token", "peer_secret"})
#: a Kafka topic name (and the app id, which prefixes internal topics and is the group)
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,200}$"
#: timers (snapshots, rolling publication) fire at most this often: shorter intervals
#: only make Faust warn that the timer overlaps itself, many times a second
MIN_TIMER_INTERVAL_S = 0.1


def _default_data_dir() -> str:
    root = repo_root()
    base = root / ".cache" if root else Path.home() / ".cache" / "importance-stream"
    return str(base / "worker")


class SettingsError(ValueError):
    """Invalid settings: one line per problem, naming the variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _var(
    env: str,
    default: Any,
    description: str,
    allowed: str | None = None,
    **constraints: Any,
) -> Any:
    """A settings field set by the environment variable ``env``."""
    extra = {"env": env, **({"allowed": allowed} if allowed else {})}
    factory = default if callable(default) else None
    return Field(
        **({"default_factory": factory} if factory else {"default": default}),
        validation_alias=AliasChoices(env),
        description=description,
        json_schema_extra=extra,
        **constraints,
    )


class Settings(BaseSettings):
    """Every knob of the service; ``Settings.from_env()`` reads them from the environment.

    ``Settings(field=value, ...)`` builds them from field names (environment ignored)."""

    model_config = SettingsConfigDict(
        frozen=True,
        populate_by_name=True,
        extra="forbid",
        hide_input_in_errors=True,  # a secret's value must never appear in an error
        case_sensitive=True,
        env_ignore_empty=True,  # VAR= means "the default", as before
    )

    bootstrap_servers: str | None = _var(
        "KAFKA_BOOTSTRAP_SERVERS",
        None,
        "Kafka to use (comma-separated host:port); unset: the local broker",
        "host:port[,host:port...] with ports 1-65535",
    )
    app_id: str = _var(
        "IMPORTANCE_APP_ID",
        "importance-stream",
        "Faust app id = consumer group, prefix of internal topics",
        "1-200 characters of A-Z a-z 0-9 . _ -",
        pattern=TOPIC_PATTERN,
    )
    topic_events: str = _var(
        "IMPORTANCE_TOPIC_EVENTS", "events", "input topic", "a Kafka topic name",
        pattern=TOPIC_PATTERN,
    )  # fmt: skip
    topic_scores: str = _var(
        "IMPORTANCE_TOPIC_SCORES", "importance-scores", "output topic", "a Kafka topic name",
        pattern=TOPIC_PATTERN,
    )  # fmt: skip
    topic_dlq: str = _var(
        "IMPORTANCE_TOPIC_DLQ", "events-dlq", "dead-letter topic", "a Kafka topic name",
        pattern=TOPIC_PATTERN,
    )  # fmt: skip
    topic_training: str = _var(
        "IMPORTANCE_TOPIC_TRAINING", "training-samples", "kept events with labels",
        "a Kafka topic name", pattern=TOPIC_PATTERN,
    )  # fmt: skip
    topic_rolling: str = _var(
        "IMPORTANCE_TOPIC_ROLLING", "importance-rolling",
        "rolling importance per item, category and user", "a Kafka topic name",
        pattern=TOPIC_PATTERN,
    )  # fmt: skip
    partitions: int = _var(
        "IMPORTANCE_PARTITIONS",
        4,
        "partitions of the topics the service creates (and of its state)",
        "an integer from 1 to 10000",
        ge=1,
        le=10_000,
    )
    attribution_window_s: float = _var(
        "IMPORTANCE_ATTRIBUTION_WINDOW_S",
        1800.0,
        "attribution window (event time, seconds)",
        "a finite number of seconds > 0",
        gt=0.0,
        allow_inf_nan=False,
    )
    target_keep_rate: float = _var(
        "IMPORTANCE_TARGET_KEEP_RATE",
        0.2,
        "target kept fraction of labelled training examples (positives included)",
        "a number > 0 and <= 1",
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
    )
    importance_sampler: str = _var(
        "IMPORTANCE_SAMPLER",
        "fisher-mix",
        "label-time sampler of training examples (models/label_sampling.py)",
        "one of the samplers of models.label_sampling.SAMPLERS",
    )
    importance_sampler_salt: int = _var(
        "IMPORTANCE_SAMPLER_SALT",
        0,
        "salt of the sampling coin (another salt: an independent replicate)",
        "an integer from 0 to 2**63 - 1",
        ge=0,
        lt=2**63,
    )
    importance_sampler_features: str | None = _var(
        "IMPORTANCE_SAMPLER_FEATURES",
        None,
        "the trainer's feature groups, each with its vocabulary's minimum count, for the "
        "fisher and leverage samplers (unset: the engine's hashed features)",
        "comma-separated groups of models.sampler_design.GROUPS, each optionally :N, "
        "e.g. item:15,category:60,hour",
    )
    model_sync_every: int = _var(
        "IMPORTANCE_MODEL_SYNC_EVERY",
        10,
        "labelled examples a partition learns between two exports of its learner's updates "
        "to the other partitions, in this worker and (topic <app id>-model-sync) in others; "
        "0: every partition learns alone (models/model_sync.py)",
        "an integer >= 0",
        ge=0,
    )
    snapshot_every: int = _var(
        "IMPORTANCE_SNAPSHOT_EVERY",
        5000,
        "events per partition between model snapshots",
        "an integer >= 1",
        ge=1,
    )
    snapshot_interval_s: float = _var(
        "IMPORTANCE_SNAPSHOT_INTERVAL_S",
        10.0,
        "seconds between model snapshots",
        f"a finite number of seconds >= {MIN_TIMER_INTERVAL_S:g}",
        ge=MIN_TIMER_INTERVAL_S,
        allow_inf_nan=False,
    )
    max_pending_per_user: int = _var(
        "IMPORTANCE_MAX_PENDING_PER_USER",
        64,
        "pending exposures per user",
        "an integer >= 1",
        ge=1,
    )
    max_pending_per_partition: int = _var(
        "IMPORTANCE_MAX_PENDING_PER_PARTITION",
        200_000,
        "pending exposures per partition",
        "an integer >= 1",
        ge=1,
    )
    clock_max_skew_s: float = _var(
        "IMPORTANCE_CLOCK_MAX_SKEW_S",
        300.0,
        "event-time clock (models/clock.py): an event counts at most as this worker's clock "
        "plus this many seconds",
        "a finite number of seconds from 0 to 86400",
        ge=0.0,
        le=86400.0,
        allow_inf_nan=False,
    )
    clock_users: int = _var(
        "IMPORTANCE_CLOCK_USERS",
        32,
        "the partition's clock is the clock_users-th latest time among its last "
        "clock_recent_users distinct users (1: the latest event time of the partition, capped)",
        "an integer from 1 to IMPORTANCE_CLOCK_RECENT_USERS",
        ge=1,
        le=1024,
    )
    clock_recent_users: int = _var(
        "IMPORTANCE_CLOCK_RECENT_USERS",
        128,
        "how many of the partition's most recent distinct users the clock looks at",
        "an integer from IMPORTANCE_CLOCK_USERS to 1024",
        ge=1,
        le=1024,
    )
    max_consecutive_failures: int = _var(
        "IMPORTANCE_MAX_CONSECUTIVE_FAILURES",
        10,
        "events of one partition whose processing raises in a row before the worker stops "
        "(exit code 70) instead of dead-lettering them as processing_failed",
        "an integer >= 1",
        ge=1,
    )
    web_host: str = _var(
        "IMPORTANCE_WEB_HOST", "127.0.0.1", "the worker's web server address",
        "a host name or IP address", min_length=1,
    )  # fmt: skip
    web_port: int = _var(
        "IMPORTANCE_WEB_PORT", 6066, "the worker's web server port", "an integer from 1 to 65535",
        ge=1, le=65535,
    )  # fmt: skip
    data_dir: str = _var(
        "IMPORTANCE_DATA_DIR",
        _default_data_dir,
        "the worker's local data",
        "a directory path",
        min_length=1,
    )
    table_store: Literal["memory", "rocksdb"] = _var(
        "IMPORTANCE_TABLE_STORE",
        "rocksdb",
        "where table state lives: rocksdb (memory plus a local copy of each changelog "
        "partition under IMPORTANCE_DATA_DIR: a restart reads only the changelog tail) or "
        "memory (every start reads the whole changelog)",
        "rocksdb or memory",
    )
    standby_replicas: int = _var(
        "IMPORTANCE_STANDBY_REPLICAS",
        0,
        "standby replicas of every table partition kept by other workers of the group (a "
        "standby takes over a dead worker's partitions reading only the changelog tail; "
        "with IMPORTANCE_TABLE_STORE=rocksdb)",
        "an integer from 0 to 10",
        ge=0,
        le=10,
    )
    group_instance_id: str | None = _var(
        "IMPORTANCE_GROUP_INSTANCE_ID",
        None,
        "static membership of the consumer group: a restarted worker with the same id takes "
        "its partitions back at once instead of waiting for the group to drop its "
        "predecessor (the session timeout); 'auto': app id, host name and web port. A worker "
        "that stops is then also replaced only after the session timeout",
        "auto, or 1-200 characters of A-Z a-z 0-9 . _ -",
        pattern=TOPIC_PATTERN,
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = _var(
        "IMPORTANCE_PROCESSING_GUARANTEE",
        "at_least_once",
        "at_least_once, or exactly_once: outputs, table changelogs, snapshots and input "
        "offsets committed together in Kafka transactions",
        "at_least_once or exactly_once",
    )
    transactional_id: str | None = _var(
        "IMPORTANCE_TRANSACTIONAL_ID",
        None,
        "exactly_once only: the worker's Kafka transactional id (default: app id, host "
        "name and web port, stable across restarts of the same worker)",
    )
    score_in_place: bool = _var(
        "IMPORTANCE_SCORE_IN_PLACE",
        True,
        "score events already in their user's partition without the re-keying hop",
        "true/false, 1/0, yes/no, on/off",
    )
    # Kafka client security (every client: Faust, admin, producers, consumers).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = _var(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "security protocol of every Kafka client",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    sasl_mechanism: str | None = _var(
        "KAFKA_SASL_MECHANISM",
        None,
        "SASL mechanism (SASL protocols; default PLAIN)",
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    )
    sasl_username: str | None = _var("KAFKA_SASL_USERNAME", None, "SASL user name")
    sasl_password: str | None = Field(
        default=None,
        repr=False,
        validation_alias=AliasChoices("KAFKA_SASL_PASSWORD"),
        description="SASL password (never shown)",
        json_schema_extra={"env": "KAFKA_SASL_PASSWORD", "secret": True},
    )
    ssl_cafile: str | None = _var(
        "KAFKA_SSL_CAFILE", None, "PEM file of the CA(s) that signed the brokers' certificates"
    )
    ssl_certfile: str | None = _var(
        "KAFKA_SSL_CERTFILE", None, "client certificate (PEM) for mutual TLS"
    )
    ssl_keyfile: str | None = _var(
        "KAFKA_SSL_KEYFILE", None, "client private key (PEM, unencrypted) for mutual TLS"
    )
    rolling_enabled: bool = _var(
        "IMPORTANCE_ROLLING",
        True,
        "keep rolling importance per item, category and user (tables, topic, top lists)",
        "true/false, 1/0, yes/no, on/off",
    )
    rolling_windows: str = _var(
        "IMPORTANCE_ROLLING_WINDOWS",
        "5m,1h",
        "rolling window sizes",
        "comma-separated durations (30s, 5m, 1h, 1d), each a multiple of the step",
    )
    rolling_step_s: float = _var(
        "IMPORTANCE_ROLLING_STEP_S",
        60.0,
        "how far rolling windows advance (the pane size), seconds",
        "a finite number of seconds >= 1",
        ge=1.0,
        allow_inf_nan=False,
    )
    rolling_publish_s: float = _var(
        "IMPORTANCE_ROLLING_PUBLISH_S",
        2.0,
        "seconds between publications of changed entities to the rolling topic",
        f"a finite number of seconds >= {MIN_TIMER_INTERVAL_S:g}",
        ge=MIN_TIMER_INTERVAL_S,
        allow_inf_nan=False,
    )
    api_token: str | None = Field(
        default=None,
        repr=False,
        validation_alias=AliasChoices("IMPORTANCE_API_TOKEN"),
        description="bearer token the API, /metrics and the dashboard require (never shown)",
        json_schema_extra={"env": "IMPORTANCE_API_TOKEN", "secret": True},
    )

    # The web server's limits (stream_app/web/server.py) and the group's peers.
    web_idle_timeout_s: float = _var(
        "IMPORTANCE_WEB_IDLE_TIMEOUT_S",
        15.0,
        "a connection on which no complete request arrives for this long (idle keep-alive, "
        "or request headers or an unread body trickled in) is closed",
        "a finite number of seconds > 0 and <= 3600",
        gt=0.0,
        le=3600.0,
        allow_inf_nan=False,
    )
    web_max_connections: int = _var(
        "IMPORTANCE_WEB_MAX_CONNECTIONS",
        512,
        "open HTTP connections; past it the least recently used idle one is closed (also "
        "lowered to the file-descriptor limit minus 256 at start)",
        "an integer from 1 to 65536",
        ge=1,
        le=65536,
    )
    web_backlog: int = _var(
        "IMPORTANCE_WEB_BACKLOG",
        1024,
        "listen backlog of the web socket (the kernel caps it at somaxconn)",
        "an integer from 1 to 65535",
        ge=1,
        le=65535,
    )
    web_advertised_url: str | None = _var(
        "IMPORTANCE_WEB_ADVERTISED_URL",
        None,
        "the URL other workers of the group use to reach this one (default "
        "http://<web host>:<web port>)",
        "http(s)://host:port, without path, query or credentials",
    )
    peer_secret: str | None = Field(
        default=None,
        repr=False,
        validation_alias=AliasChoices("IMPORTANCE_PEER_SECRET"),
        description="the secret the workers of a group sign their requests to each other and "
        "their answers with (HMAC-SHA256; never shown)",
        json_schema_extra={
            "env": "IMPORTANCE_PEER_SECRET",
            "secret": True,
            "allowed": "at least 16 characters, not the API token",
        },
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args: Any, **kwargs: Any):
        """Only what is passed in: the environment is read by :meth:`from_env`."""
        return (init_settings,)

    @field_validator("processing_guarantee", "table_store", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("importance_sampler")
    @classmethod
    def _sampler(cls, value: str) -> str:
        from models.label_sampling import SAMPLERS

        if value not in SAMPLERS:
            raise ValueError(
                f"unknown sampler {value!r}; choose one of {', '.join(sorted(SAMPLERS))}"
            )
        return value

    @field_validator("importance_sampler_features")
    @classmethod
    def _sampler_features(cls, value: str | None) -> str | None:
        from models.sampler_design import parse_design

        if value is None or not value.strip():
            return None
        parse_design(value)
        return value.strip()

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{server.strip()!r} is not host:port with a port 1-65535")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        from models.rolling import parse_windows

        try:
            parse_windows(self.rolling_windows, self.rolling_step_s)
        except ValueError as exc:
            raise ValueError(
                f"IMPORTANCE_ROLLING_WINDOWS={self.rolling_windows!r}: {exc} "
                f"(IMPORTANCE_ROLLING_STEP_S={self.rolling_step_s:g}); allowed: "
                "comma-separated durations (30s, 5m, 1h, 1d), each a multiple of the step"
            ) from None
        if self.clock_users > self.clock_recent_users:
            raise ValueError(
                f"IMPORTANCE_CLOCK_USERS={self.clock_users} is more than "
                f"IMPORTANCE_CLOCK_RECENT_USERS={self.clock_recent_users}; allowed: "
                "IMPORTANCE_CLOCK_USERS <= IMPORTANCE_CLOCK_RECENT_USERS"
            )
        if self.importance_sampler_features is not None:
            from models.label_sampling import SAMPLERS, FisherSampler

            if not issubclass(SAMPLERS[self.importance_sampler], FisherSampler):
                raise ValueError(
                    f"IMPORTANCE_SAMPLER_FEATURES={self.importance_sampler_features!r} is set "
                    f"but IMPORTANCE_SAMPLER={self.importance_sampler!r} has no design; "
                    "allowed: unset, or a fisher or leverage sampler"
                )
        self._check_security()
        self._check_web()
        self._check_store()
        return self

    def _check_store(self) -> None:
        if self.table_store == "rocksdb":
            try:
                import rocksdict  # noqa: F401
            except ImportError:
                raise ValueError(
                    "IMPORTANCE_TABLE_STORE='rocksdb' needs the rocksdict package "
                    "(pip install rocksdict); allowed without it: memory"
                ) from None
        if self.standby_replicas and self.table_store == "memory":
            raise ValueError(
                f"IMPORTANCE_STANDBY_REPLICAS={self.standby_replicas} needs "
                "IMPORTANCE_TABLE_STORE=rocksdb (the memory store reads a standby's whole "
                "changelog again when it takes over)"
            )

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (field names), validated like any settings."""
        return type(self)(**{**self.model_dump(), **changes})

    @property
    def topic_by_user(self) -> str:
        """Internal topic holding valid events repartitioned by user id."""
        return f"{self.app_id}-events-by-user"

    @property
    def exactly_once(self) -> bool:
        """Outputs, changelogs and consumed offsets are committed in Kafka transactions."""
        return self.processing_guarantee == "exactly_once"

    def transactional_id_or_default(self) -> str:
        """The worker's transactional id: the same after a restart, so the restarted
        worker aborts what its predecessor left open instead of waiting for the timeout."""
        if self.transactional_id:
            return self.transactional_id
        import socket

        return f"{self.app_id}-{socket.gethostname()}-{self.web_port}"

    def group_instance_id_or_none(self) -> str | None:
        """The consumer's ``group.instance.id`` (None: dynamic membership)."""
        if self.group_instance_id == "auto":
            import socket

            return f"{self.app_id}-{socket.gethostname()}-{self.web_port}"[:249]
        return self.group_instance_id

    @property
    def advertised_url(self) -> str:
        """The web URL this worker advertises to its group (Faust's ``canonical_url``)."""
        return (self.web_advertised_url or f"http://{self.web_host}:{self.web_port}").rstrip("/")

    def _check_web(self) -> None:
        if self.web_advertised_url is not None:
            from urllib.parse import urlsplit

            url = self.web_advertised_url
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError:
                parts, port = None, None
            if (
                parts is None
                or parts.scheme not in ("http", "https")
                or not parts.hostname
                or port is None
                or parts.username is not None
                or parts.path not in ("", "/")
                or parts.query
                or parts.fragment
            ):
                # the value is not echoed: it may hold credentials
                raise ValueError(
                    "IMPORTANCE_WEB_ADVERTISED_URL: expected http(s)://host:port (no path, "
                    "query or credentials)"
                )
        if self.peer_secret is not None:
            if len(self.peer_secret) < 16:
                raise ValueError("IMPORTANCE_PEER_SECRET: expected at least 16 characters")
            if self.peer_secret == self.api_token:
                raise ValueError(
                    "IMPORTANCE_PEER_SECRET must differ from IMPORTANCE_API_TOKEN (clients know "
                    "the token; only the workers know the peer secret)"
                )

    def _check_security(self) -> None:
        protocol = self.security_protocol
        sasl = protocol.startswith("SASL_")
        if sasl:
            if self.sasl_mechanism not in (None, *SASL_MECHANISMS):
                raise ValueError(
                    f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r}: expected one of "
                    + ", ".join(SASL_MECHANISMS)
                )
            if not self.sasl_username or not self.sasl_password:
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                    "KAFKA_SASL_PASSWORD"
                )
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ValueError(
                f"KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is {protocol}: "
                "use SASL_PLAINTEXT or SASL_SSL (credentials are never ignored silently)"
            )
        tls = protocol in ("SSL", "SASL_SSL")
        if not tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError(
                f"KAFKA_SSL_* is set but KAFKA_SECURITY_PROTOCOL is {protocol}: use SSL or SASL_SSL"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (mTLS)")

    @property
    def sasl_mechanism_or_default(self) -> str:
        """The SASL mechanism in use (PLAIN unless ``KAFKA_SASL_MECHANISM`` says otherwise)."""
        return self.sasl_mechanism or "PLAIN"

    def kafka_client_config(self) -> dict[str, str]:
        """Security settings for confluent-kafka (librdkafka) clients.

        Merge it into any client config: ``{"bootstrap.servers": ..., **this}``. Holds the
        SASL password: never log it.
        """
        config = {"security.protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL_"):
            config["sasl.mechanism"] = self.sasl_mechanism_or_default
            config["sasl.username"] = self.sasl_username or ""
            config["sasl.password"] = self.sasl_password or ""
        if self.ssl_cafile:
            config["ssl.ca.location"] = self.ssl_cafile
        if self.ssl_certfile:
            config["ssl.certificate.location"] = self.ssl_certfile
        if self.ssl_keyfile:
            config["ssl.key.location"] = self.ssl_keyfile
        return config

    def faust_credentials(self) -> Any:
        """Faust's ``broker_credentials`` for these settings (None for PLAINTEXT)."""
        protocol = self.security_protocol
        if protocol == "PLAINTEXT":
            return None
        import faust

        context = None
        if protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        if protocol == "SSL":
            return faust.SSLCredentials(context)
        return faust.SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password,
            mechanism=self.sasl_mechanism_or_default,
            ssl_context=context,
        )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read and validate the settings from ``KAFKA_*`` and ``IMPORTANCE_*`` variables
        (``environ``, else the process environment); :class:`SettingsError` names every
        wrong variable."""
        env = dict(os.environ if environ is None else environ)
        values = _EnvReader(env)()
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(_problems(exc, env)) from None


#: IMPORTANCE_* variables read elsewhere (the local broker, the data sets)
OTHER_VARIABLES = frozenset(
    {
        "IMPORTANCE_BROKER_PORT",
        "IMPORTANCE_BROKER_CONTROLLER_PORT",
        "IMPORTANCE_KAFKA_VERSION",
        "IMPORTANCE_KAFKA_DIR",
        "IMPORTANCE_KAFKA_DATA_DIR",
        "IMPORTANCE_KAFKA_HEAP",
        "IMPORTANCE_SHARED_DATA",
        "IMPORTANCE_CACHE_DIR",
    }
)


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """``IMPORTANCE_*`` variables that nothing reads (a typo is otherwise ignored)."""
    env = os.environ if environ is None else environ
    known = {env_name(name) for name in Settings.model_fields} | OTHER_VARIABLES
    return sorted(n for n in env if n.startswith("IMPORTANCE_") and n not in known)


def env_name(field: str) -> str:
    """The environment variable of a :class:`Settings` field."""
    extra = Settings.model_fields[field].json_schema_extra
    return str(extra["env"]) if isinstance(extra, dict) else field.upper()


def _allowed(field: str) -> str | None:
    extra = Settings.model_fields[field].json_schema_extra
    return str(extra["allowed"]) if isinstance(extra, dict) and "allowed" in extra else None


def _problems(exc: ValidationError, env: dict[str, str]) -> list[str]:
    """One line per error: the variable, the value given (hidden for secrets), what is
    allowed."""
    by_env = {env_name(name): name for name in Settings.model_fields}
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error.get("loc") or ()
        message = str(error.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if not loc:  # a check across variables: its message names them
            problems.append(message)
            continue
        field = by_env.get(str(loc[0]), str(loc[0]))
        if field not in Settings.model_fields:
            problems.append(f"{loc[0]}: {message}")
            continue
        name = env_name(field)
        value = "<hidden>" if field in SECRET_FIELDS else repr(env.get(name, ""))
        allowed = _allowed(field)
        line = f"{name}={value}: {message}"
        if allowed and allowed.lower() not in message.lower():
            line += f" (allowed: {allowed})"
        problems.append(line)
    return problems


class _EnvReader(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping, empty values unset."""

    def __init__(self, env: dict[str, str]) -> None:
        self._given = env
        super().__init__(Settings, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> dict[str, str | None]:
        return {k: v for k, v in self._given.items() if v != ""}
