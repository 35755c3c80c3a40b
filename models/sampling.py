"""Importance sampling with unbiased weights.

Each event is kept with probability ``π = clip(scale · importance, pi_min, 1)``; the
``scale`` is tuned online so that the mean of π follows the target keep rate. A kept
event carries the weight ``1/π`` (Horvitz–Thompson), so weighted sums over kept events
are unbiased estimates of the same sums over the full stream. ``pi_min`` keeps every
event's chance above zero, which unbiasedness needs, and bounds weights by ``1/pi_min``.

The coin is the event id's hash, so a replay makes the same decisions.

>>> sampler = ImportanceSampler(target_rate=0.6)
>>> d = sampler.decide("e-1", importance=0.99)
>>> d.probability == 1.0 and d.keep and d.weight == 1.0
True
>>> d = sampler.decide("e-2", importance=0.0)
>>> d.probability == sampler.pi_min
True
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Decision", "ImportanceSampler", "uniform_from_id"]


def uniform_from_id(event_id: str, salt: int = 0) -> float:
    """A deterministic number in [0, 1) from an event id.

    BLAKE2b, not CRC-32: CRC is linear, so the CRCs of ids that differ in a few characters
    (``ev-1``, ``ev-2``, …) are far from independent uniform draws, and a salted CRC is the
    unsalted one XOR a constant. A cryptographic hash gives a fair coin for any ids.
    """
    digest = hashlib.blake2b(
        event_id.encode(), digest_size=8, salt=salt.to_bytes(8, "little")
    ).digest()
    return int.from_bytes(digest, "little") / 18446744073709551616.0


@dataclass(slots=True, frozen=True)
class Decision:
    """Keep or drop, the probability it was made with, and the sample weight."""

    keep: bool
    probability: float
    weight: float


class ImportanceSampler:
    """Keep probability proportional to importance, tuned to a target keep rate."""

    def __init__(self, target_rate: float = 0.2, pi_min: float = 0.01, adapt: float = 0.02):
        if not 0.0 < target_rate <= 1.0:
            raise ValueError("target_rate must be in (0, 1]")
        self.target_rate = target_rate
        self.pi_min = min(pi_min, target_rate)
        self.adapt = adapt
        # For importances uniform on [0, 1] the mean of min(1, s·u) is s/2 when s <= 1 and
        # 1 - 1/(2s) when s >= 1: start at the scale where that mean is the target rate.
        if target_rate <= 0.5:
            self.log_scale = math.log(2.0 * target_rate)
        else:
            self.log_scale = min(10.0, -math.log(max(2.0 * (1.0 - target_rate), 1e-300)))
        self.mean_pi = target_rate

    @property
    def scale(self) -> float:
        """Current multiplier from importance to keep probability."""
        return math.exp(self.log_scale)

    def probability(self, importance: float) -> float:
        """Keep probability for an importance in [0, 1]."""
        return min(1.0, max(self.pi_min, self.scale * importance))

    def decide(self, event_id: str, importance: float) -> Decision:
        """Decide for one event and adapt the scale towards the target rate."""
        pi = self.probability(importance)
        keep = uniform_from_id(event_id) < pi
        # Stochastic approximation on log(scale): raise it when keeping too few.
        self.log_scale += self.adapt * (self.target_rate - pi) / self.target_rate
        self.log_scale = min(max(self.log_scale, -10.0), 10.0)
        self.mean_pi += 0.001 * (pi - self.mean_pi)
        return Decision(keep=keep, probability=pi, weight=1.0 / pi if keep else 0.0)

    def to_state(self) -> dict[str, Any]:
        """Plain-data state."""
        return {
            "target_rate": self.target_rate,
            "log_scale": self.log_scale,
            "mean_pi": self.mean_pi,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the tuned scale (the target rate stays as configured)."""
        self.log_scale = float(state["log_scale"])
        self.mean_pi = float(state["mean_pi"])
