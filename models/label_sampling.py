"""Label-time sampling of training examples: keep every positive, keep a negative with a
probability ``π⁻(x)`` chosen by the sampler, and say how to correct for it.

A training example (an exposure, or an event that carries its label) is decided once, when
its label is known. Positives are always kept (``π⁺ = 1``) except by ``uniform``; a kept
record carries ``pi`` (the probability it was kept with), ``pi_positive``/``pi_negative``
(what it would have been for y=1 and y=0), ``offset = log(pi_positive / pi_negative)``
(fit ``logit P(y=1 | x, kept) = f(x) + offset`` and serve ``f(x)``) and ``weight = 1/pi``.

Every sampler tunes itself online so that the kept fraction of labelled examples,
positives included, follows ``target_rate``: it tracks the positive rate ``r̂`` and keeps
negatives at the mean rate ``q = (target − r̂) / (1 − r̂)``.

The coin is a hash of the event id and the salt (:func:`uniform_from_id`), so a replay
makes the same decisions and another salt gives an independent replicate.

>>> sampler = make_sampler("negative", target_rate=0.1)
>>> d = sampler.decide("e-1", label=1, p=0.02, x={3: 1.0})
>>> d.keep, d.pi, round(d.pi_negative, 4), round(d.offset, 4)  # offset = log(1 / 0.0909)
(True, 1.0, 0.0909, 2.3979)
>>> d = sampler.decide("e-2", label=0, p=0.02, x={3: 1.0})
>>> d.pi == d.pi_negative < 1.0 and d.pi_positive == 1.0 and d.weight == 1 / d.pi
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from models.sampling import uniform_from_id

__all__ = [
    "SAMPLERS",
    "LabelDecision",
    "LabelSampler",
    "NegativeSampler",
    "UniformSampler",
    "make_sampler",
    "register",
]

#: The floor under every keep probability: unbiasedness needs π > 0, and it bounds 1/π.
PI_MIN = 1e-4


@dataclass(slots=True, frozen=True)
class LabelDecision:
    """One example's decision and how a trainer corrects for it."""

    keep: bool
    pi: float
    pi_positive: float
    pi_negative: float
    offset: float
    weight: float
    sampler: str

    def fields(self) -> dict[str, Any]:
        """The record fields (``training-samples`` contract), to 12 significant digits
        (not decimals: a small ``pi`` rounded to decimals would no longer match its
        ``offset`` and ``weight``).

        >>> d = LabelDecision(True, 1 / 3, 1.0, 0.000123456789012345, 9.0, 3.0, "x")
        >>> d.fields()["pi_negative"]
        0.000123456789012
        """
        out = asdict(self)
        for key in ("pi", "pi_positive", "pi_negative", "offset", "weight"):
            out[key] = float(f"{out[key]:.12g}")
        del out["keep"]
        return out


class LabelSampler:
    """Base of label-time samplers; subclasses give the negatives' keep probability.

    Subclasses implement :meth:`negative_probability` (given the needed mean negative rate
    ``q``) and may override :meth:`observe` (called for every labelled example, kept or
    not, after the decision: the place to update statistics such as a Fisher diagonal).
    """

    name: ClassVar[str] = "base"

    def __init__(self, target_rate: float = 0.2, salt: int = 0, half_life: float = 20_000.0):
        if not (isinstance(target_rate, (int, float)) and 0.0 < target_rate <= 1.0):
            raise ValueError(f"target_rate must be in (0, 1], not {target_rate!r}")
        if not 0 <= salt < 2**63:
            raise ValueError(f"salt must be in [0, 2**63), not {salt!r}")
        self.target_rate = float(target_rate)
        self.salt = int(salt)
        self.decay = 0.5 ** (1.0 / half_life)
        # decayed counts of labelled examples and of positives (a weak prior of 1 %)
        self.n = 100.0
        self.n_pos = 1.0
        self.decided = 0
        self.kept = 0

    @property
    def positive_rate(self) -> float:
        """The tracked fraction of positives among labelled examples."""
        return self.n_pos / self.n

    @property
    def negative_rate(self) -> float:
        """``q``: the mean keep rate of negatives that makes the target kept fraction."""
        r = self.positive_rate
        if r >= 1.0:
            return 1.0
        return min(1.0, max(PI_MIN, (self.target_rate - r) / (1.0 - r)))

    def positive_probability(self, p: float, x: Mapping[int, float]) -> float:
        """π⁺: 1 for every sampler that keeps all positives."""
        return 1.0

    def negative_probability(self, p: float, x: Mapping[int, float], q: float) -> float:
        """π⁻(x) for a negative, given the needed mean negative rate ``q``."""
        raise NotImplementedError

    def observe(self, label: int, p: float, x: Mapping[int, float], pi: float) -> None:
        """Update the sampler's statistics with a labelled example (after deciding)."""

    def decide(self, event_id: str, label: int, p: float, x: Mapping[int, float]) -> LabelDecision:
        """Keep or drop one labelled example; ``p`` is the learner's probability before it
        learned this label and ``x`` the example's hashed features."""
        q = self.negative_rate
        pi_pos = _clip(self.positive_probability(p, x))
        pi_neg = _clip(self.negative_probability(p, x, q))
        pi = pi_pos if label else pi_neg
        keep = uniform_from_id(event_id, self.salt) < pi
        self.n = self.n * self.decay + 1.0
        self.n_pos = self.n_pos * self.decay + (1.0 if label else 0.0)
        self.decided += 1
        self.kept += keep
        self.observe(label, p, x, pi)
        return LabelDecision(
            keep=keep,
            pi=pi,
            pi_positive=pi_pos,
            pi_negative=pi_neg,
            offset=math.log(pi_pos / pi_neg),
            weight=1.0 / pi,
            sampler=self.name,
        )

    def to_state(self) -> dict[str, Any]:
        """Plain-data state (JSON-safe)."""
        return {
            "name": self.name,
            "n": self.n,
            "n_pos": self.n_pos,
            "decided": self.decided,
            "kept": self.kept,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`to_state`; a state of another sampler is ignored (fresh start)."""
        if state.get("name") != self.name:
            return
        n, n_pos = float(state["n"]), float(state["n_pos"])
        if not (math.isfinite(n) and math.isfinite(n_pos) and 0.0 < n_pos <= n):
            raise ValueError("unusable sampler state")
        self.n, self.n_pos = n, n_pos
        self.decided, self.kept = int(state["decided"]), int(state["kept"])


def _clip(pi: float) -> float:
    if math.isnan(pi):
        return 1.0
    return min(1.0, max(PI_MIN, pi))


class NegativeSampler(LabelSampler):
    """Negative downsampling: every positive, negatives at the constant rate ``q``."""

    name = "negative"

    def negative_probability(self, p: float, x: Mapping[int, float], q: float) -> float:
        return q


class UniformSampler(LabelSampler):
    """Every example, positive or negative, at the target rate."""

    name = "uniform"

    def positive_probability(self, p: float, x: Mapping[int, float]) -> float:
        return self.target_rate

    def negative_probability(self, p: float, x: Mapping[int, float], q: float) -> float:
        return self.target_rate


#: name → sampler class (``IMPORTANCE_SAMPLER``, ``--sampler``)
SAMPLERS: dict[str, type[LabelSampler]] = {}


def register(cls: type[LabelSampler]) -> type[LabelSampler]:
    """Add a sampler class under its ``name`` (usable as a class decorator)."""
    SAMPLERS[cls.name] = cls
    return cls


register(NegativeSampler)
register(UniformSampler)


def make_sampler(name: str, target_rate: float = 0.2, salt: int = 0) -> LabelSampler:
    """The sampler called ``name``; ``ValueError`` naming the choices if there is none."""
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None
    return cls(target_rate=target_rate, salt=salt)
