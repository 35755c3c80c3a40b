"""In-process counters of the worker, read by logs and the web API."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from models.progressive import ProgressiveMetrics

__all__ = ["Counters", "counters", "progressive"]


@dataclass
class Counters:
    """Monotonic counts since the worker started."""

    started_at: float = field(default_factory=time.time)
    events_in: int = 0
    decoded: int = 0
    dlq: int = 0
    scored: int = 0
    kept: int = 0
    training_samples: int = 0
    labels_resolved: int = 0
    labels_evicted: int = 0
    snapshots: int = 0
    snapshots_restored: int = 0
    dlq_by_code: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """A JSON-safe copy."""
        return asdict(self)


counters = Counters()

#: Progressive (test-then-train) AUC and log-loss of the logistic scorer's ``p``.
progressive = ProgressiveMetrics(window=2000)
