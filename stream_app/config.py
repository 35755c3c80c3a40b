"""Settings, read from environment variables (documented in the README)."""

from __future__ import annotations

import math
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SASL_MECHANISMS", "SECURITY_PROTOCOLS", "Settings", "repo_root"]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def repo_root() -> Path | None:
    """The checkout this package runs from, or None when installed elsewhere."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() else None


def _default_data_dir() -> str:
    root = repo_root()
    base = root / ".cache" if root else Path.home() / ".cache" / "importance-stream"
    return str(base / "worker")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _number(name: str, default: float, kind: type = float) -> Any:
    """A numeric variable; a value that is not a number names the variable."""
    raw = _env(name, str(default))
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None


def _switch(name: str, default: bool = True) -> bool:
    """An on/off variable: ``0``, ``false``, ``no`` and ``off`` (any case) are off."""
    return _env(name, str(default)).strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; ``Settings.from_env()`` reads them from the environment."""

    bootstrap_servers: str | None = None
    app_id: str = "importance-stream"
    topic_events: str = "events"
    topic_scores: str = "importance-scores"
    topic_dlq: str = "events-dlq"
    topic_training: str = "training-samples"
    topic_rolling: str = "importance-rolling"
    partitions: int = 4
    attribution_window_s: float = 1800.0
    target_keep_rate: float = 0.2
    snapshot_every: int = 5000
    snapshot_interval_s: float = 10.0
    max_pending_per_user: int = 64
    max_pending_per_partition: int = 200_000
    #: event-time clock (models/clock.py): an event counts at most as this worker's clock
    #: plus this many seconds (0 to 86400)
    clock_max_skew_s: float = 300.0
    #: the partition's clock is the clock_users-th latest time among its last
    #: clock_recent_users distinct users (1 <= clock_users <= clock_recent_users <= 1024;
    #: clock_users=1: the latest event time of the partition, capped)
    clock_users: int = 32
    clock_recent_users: int = 128
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: str = field(default_factory=_default_data_dir)
    processing_guarantee: str = "at_least_once"
    #: exactly_once only: the worker's Kafka transactional id (default: app id, host
    #: name and web port, stable across restarts of the same worker)
    transactional_id: str | None = None
    #: score events already in their user's partition without the re-keying hop
    score_in_place: bool = True
    # Kafka client security (every client: Faust, admin, producers, consumers).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: keep rolling importance per item, category and user (tables, topic, top lists)
    rolling_enabled: bool = True
    rolling_windows: str = "5m,1h"
    rolling_step_s: float = 60.0
    rolling_publish_s: float = 2.0
    api_token: str | None = field(default=None, repr=False)
    # The web server's limits (stream_app/web/server.py).
    #: (0, 3600] s: a connection on which no complete request arrives for this long (idle
    #: keep-alive, or request headers or an unread body trickled in) is closed
    web_idle_timeout_s: float = 15.0
    #: [1, 65536]: open HTTP connections; past it the least recently used idle one is
    #: closed (also lowered to the file-descriptor limit minus 256 at start)
    web_max_connections: int = 512
    #: [1, 65535]: listen backlog of the web socket (the kernel caps it at somaxconn)
    web_backlog: int = 1024
    #: the URL other workers of the group use to reach this one (default
    #: http://<web_host>:<web_port>); http(s)://host:port, nothing else
    web_advertised_url: str | None = None
    #: >= 16 characters, not the API token: the secret the workers of a group sign their
    #: requests to each other and their answers with (HMAC-SHA256)
    peer_secret: str | None = field(default=None, repr=False)

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

    @property
    def advertised_url(self) -> str:
        """The web URL this worker advertises to its group (Faust's ``canonical_url``)."""
        return (self.web_advertised_url or f"http://{self.web_host}:{self.web_port}").rstrip("/")

    def _check_web(self) -> None:
        if not (math.isfinite(self.web_idle_timeout_s) and 0 < self.web_idle_timeout_s <= 3600):
            raise ValueError(
                f"IMPORTANCE_WEB_IDLE_TIMEOUT_S={self.web_idle_timeout_s!r}: expected seconds "
                "in (0, 3600]"
            )
        if not 1 <= self.web_max_connections <= 65536:
            raise ValueError(
                f"IMPORTANCE_WEB_MAX_CONNECTIONS={self.web_max_connections!r}: expected 1 to 65536"
            )
        if not 1 <= self.web_backlog <= 65535:
            raise ValueError(f"IMPORTANCE_WEB_BACKLOG={self.web_backlog!r}: expected 1 to 65535")
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

    def __post_init__(self) -> None:
        self._check_web()
        if self.processing_guarantee not in PROCESSING_GUARANTEES:
            raise ValueError(
                f"IMPORTANCE_PROCESSING_GUARANTEE={self.processing_guarantee!r}: expected one of "
                + ", ".join(PROCESSING_GUARANTEES)
            )
        protocol = self.security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol!r}: expected one of "
                + ", ".join(SECURITY_PROTOCOLS)
            )
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
    def from_env(cls) -> Settings:
        """Read settings from ``KAFKA_BOOTSTRAP_SERVERS`` and ``IMPORTANCE_*`` variables."""
        return cls(
            bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            app_id=_env("IMPORTANCE_APP_ID", cls.app_id),
            topic_events=_env("IMPORTANCE_TOPIC_EVENTS", cls.topic_events),
            topic_scores=_env("IMPORTANCE_TOPIC_SCORES", cls.topic_scores),
            topic_dlq=_env("IMPORTANCE_TOPIC_DLQ", cls.topic_dlq),
            topic_training=_env("IMPORTANCE_TOPIC_TRAINING", cls.topic_training),
            topic_rolling=_env("IMPORTANCE_TOPIC_ROLLING", cls.topic_rolling),
            partitions=int(_env("IMPORTANCE_PARTITIONS", str(cls.partitions))),
            attribution_window_s=float(
                _env("IMPORTANCE_ATTRIBUTION_WINDOW_S", str(cls.attribution_window_s))
            ),
            target_keep_rate=float(_env("IMPORTANCE_TARGET_KEEP_RATE", str(cls.target_keep_rate))),
            snapshot_every=int(_env("IMPORTANCE_SNAPSHOT_EVERY", str(cls.snapshot_every))),
            snapshot_interval_s=float(
                _env("IMPORTANCE_SNAPSHOT_INTERVAL_S", str(cls.snapshot_interval_s))
            ),
            max_pending_per_user=int(
                _env("IMPORTANCE_MAX_PENDING_PER_USER", str(cls.max_pending_per_user))
            ),
            max_pending_per_partition=int(
                _env("IMPORTANCE_MAX_PENDING_PER_PARTITION", str(cls.max_pending_per_partition))
            ),
            clock_max_skew_s=float(_env("IMPORTANCE_CLOCK_MAX_SKEW_S", str(cls.clock_max_skew_s))),
            clock_users=int(_env("IMPORTANCE_CLOCK_USERS", str(cls.clock_users))),
            clock_recent_users=int(
                _env("IMPORTANCE_CLOCK_RECENT_USERS", str(cls.clock_recent_users))
            ),
            web_host=_env("IMPORTANCE_WEB_HOST", cls.web_host),
            web_port=int(_env("IMPORTANCE_WEB_PORT", str(cls.web_port))),
            data_dir=_env("IMPORTANCE_DATA_DIR", _default_data_dir()),
            processing_guarantee=_env(
                "IMPORTANCE_PROCESSING_GUARANTEE", cls.processing_guarantee
            ).lower(),
            transactional_id=os.environ.get("IMPORTANCE_TRANSACTIONAL_ID") or None,
            score_in_place=_switch("IMPORTANCE_SCORE_IN_PLACE"),
            security_protocol=_env("KAFKA_SECURITY_PROTOCOL", cls.security_protocol).upper(),
            sasl_mechanism=(os.environ.get("KAFKA_SASL_MECHANISM") or "").upper() or None,
            sasl_username=os.environ.get("KAFKA_SASL_USERNAME") or None,
            sasl_password=os.environ.get("KAFKA_SASL_PASSWORD") or None,
            ssl_cafile=os.environ.get("KAFKA_SSL_CAFILE") or None,
            ssl_certfile=os.environ.get("KAFKA_SSL_CERTFILE") or None,
            ssl_keyfile=os.environ.get("KAFKA_SSL_KEYFILE") or None,
            rolling_enabled=_switch("IMPORTANCE_ROLLING"),
            rolling_windows=_env("IMPORTANCE_ROLLING_WINDOWS", cls.rolling_windows),
            rolling_step_s=float(_env("IMPORTANCE_ROLLING_STEP_S", str(cls.rolling_step_s))),
            rolling_publish_s=float(
                _env("IMPORTANCE_ROLLING_PUBLISH_S", str(cls.rolling_publish_s))
            ),
            api_token=os.environ.get("IMPORTANCE_API_TOKEN") or None,
            web_idle_timeout_s=_number("IMPORTANCE_WEB_IDLE_TIMEOUT_S", cls.web_idle_timeout_s),
            web_max_connections=_number(
                "IMPORTANCE_WEB_MAX_CONNECTIONS", cls.web_max_connections, int
            ),
            web_backlog=_number("IMPORTANCE_WEB_BACKLOG", cls.web_backlog, int),
            web_advertised_url=os.environ.get("IMPORTANCE_WEB_ADVERTISED_URL") or None,
            peer_secret=os.environ.get("IMPORTANCE_PEER_SECRET") or None,
        )
