"""In-process counters of the worker, read by logs and the web API."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from models.progressive import ProgressiveMetrics

__all__ = ["Counters", "Health", "counters", "health", "progressive"]


@dataclass
class Counters:
    """Monotonic counts since the worker started."""

    started_at: float = field(default_factory=time.time)
    events_in: int = 0
    decoded: int = 0
    dlq: int = 0
    scored: int = 0
    #: events scored by the decode agent because they were already in their user's partition
    scored_in_place: int = 0
    #: labelled training examples decided by the label-time sampler (kept or not), of
    #: them positive, and kept (each published on training-samples)
    decided: int = 0
    decided_positive: int = 0
    kept: int = 0
    training_samples: int = 0
    labels_resolved: int = 0
    labels_evicted: int = 0
    #: events whose ts was beyond this worker's clock plus IMPORTANCE_CLOCK_MAX_SKEW_S
    #: (scored with their ts; the event-time clock counted them as the cap)
    clock_capped: int = 0
    snapshots: int = 0
    snapshots_restored: int = 0
    #: learner updates exported by this worker's partitions / received from other
    #: workers / unusable records skipped (models/model_sync.py, stream_app/model_sync.py)
    model_sync_exported: int = 0
    model_sync_received: int = 0
    model_sync_skipped: int = 0
    dlq_by_code: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """A JSON-safe copy."""
        return asdict(self)


counters = Counters()

#: Progressive (test-then-train) AUC and log-loss of the logistic scorer's ``p``.
progressive = ProgressiveMetrics(window=2000)


@dataclass
class Health:
    """Whether the worker can reach Kafka, as its periodic broker check last saw it
    (``agents/health.py``); served by ``/healthz`` and logged on every change."""

    broker_connected: bool = False
    #: wall time of the last successful check
    last_broker_ok: float | None = None
    #: the last check's failure, kept after the broker is back (for diagnosis)
    last_broker_error: str | None = None
    last_broker_error_at: float | None = None
    #: wall time the current outage began (None while connected)
    broker_down_since: float | None = None
    #: outages seen since start, and how long the last finished one lasted
    broker_outages: int = 0
    last_outage_s: float | None = None
    checks: int = 0
    #: why the worker is stopping (a systemic processing failure), None while it is not
    failed: str | None = None

    def as_dict(self) -> dict:
        """A JSON-safe copy."""
        return asdict(self)


health = Health()
