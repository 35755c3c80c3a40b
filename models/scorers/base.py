"""The protocol every scorer follows, and the per-event features they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from models.events import Event

__all__ = ["EventFeatures", "Scorer"]


@dataclass(slots=True)
class EventFeatures:
    """Everything the scorers read about one event, computed once.

    ``sparse`` is the hashed indicator vector of the linear learner, ``dense`` the
    embedding of the nearest-neighbour scorer, ``lateness_s`` how far the event lies
    behind the partition's event-time watermark.
    """

    sparse: dict[int, float]
    dense: np.ndarray
    lateness_s: float = 0.0


@runtime_checkable
class Scorer(Protocol):
    """A scorer maps an event to a score in [0, 1] and may learn from resolved labels."""

    name: str

    def score(self, event: Event, features: EventFeatures) -> float:
        """Importance of the event according to this scorer, in [0, 1]."""

    def learn(self, event: Event, features: EventFeatures, label: int) -> None:
        """Update from an event whose label is now known."""

    def to_state(self) -> dict[str, Any]:
        """Plain-data (JSON-safe) state."""
