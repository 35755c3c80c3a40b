"""Settings, read from environment variables (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings", "repo_root"]


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


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; ``Settings.from_env()`` reads them from the environment."""

    bootstrap_servers: str | None = None
    app_id: str = "importance-stream"
    topic_events: str = "events"
    topic_scores: str = "importance-scores"
    topic_dlq: str = "events-dlq"
    topic_training: str = "training-samples"
    partitions: int = 4
    attribution_window_s: float = 1800.0
    target_keep_rate: float = 0.2
    snapshot_every: int = 5000
    snapshot_interval_s: float = 10.0
    max_pending_per_user: int = 64
    max_pending_per_partition: int = 200_000
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: str = field(default_factory=_default_data_dir)
    processing_guarantee: str = "at_least_once"

    @property
    def topic_by_user(self) -> str:
        """Internal topic holding valid events repartitioned by user id."""
        return f"{self.app_id}-events-by-user"

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
            web_host=_env("IMPORTANCE_WEB_HOST", cls.web_host),
            web_port=int(_env("IMPORTANCE_WEB_PORT", str(cls.web_port))),
            data_dir=_env("IMPORTANCE_DATA_DIR", _default_data_dir()),
            processing_guarantee=_env("IMPORTANCE_PROCESSING_GUARANTEE", cls.processing_guarantee),
        )
