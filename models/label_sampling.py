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
from array import array
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from models.events import Event
from models.sampler_design import SamplerDesign, intercept_bucket
from models.sampling import uniform_from_id
from models.state import StateError, decode_array, encode_array

__all__ = [
    "SAMPLERS",
    "FisherMixSampler",
    "FisherSampler",
    "LabelDecision",
    "LabelSampler",
    "LeverageMixSampler",
    "LeverageSampler",
    "NegativeSampler",
    "POSSampler",
    "ScoredSampler",
    "UniformSampler",
    "make_sampler",
    "pos_score",
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

    def features(self, event: Event, x: Mapping[int, float]) -> Mapping[int, float]:
        """The columns the sampler measures ``event`` on; ``x`` is the engine's hashed
        features (the default design)."""
        return x

    def observe_event(self, event: Event) -> None:
        """Update what depends on the event itself (a design's level counts)."""

    def decide_event(
        self, event: Event, label: int, p: float, x: Mapping[int, float]
    ) -> LabelDecision:
        """:meth:`decide` for an event: its columns from :meth:`features`, then
        :meth:`observe_event`. This is what the engine calls."""
        decision = self.decide(event.event_id, label, p, self.features(event, x))
        self.observe_event(event)
        return decision

    def decide(self, event_id: str, label: int, p: float, x: Mapping[int, float]) -> LabelDecision:
        """Keep or drop one labelled example; ``p`` is the learner's probability before it
        learned this label and ``x`` the example's columns (:meth:`features`)."""
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


class ScoredSampler(LabelSampler):
    """Negatives kept in proportion to a score ``s(p, x)``, mixed with the constant rate.

    ``π⁻(x) = (1 − mix)·q + mix·min(1, q·e^κ·s(x)/s̄)``: ``s̄`` is the decayed mean score of
    negatives, so the proportional part has mean ``q·e^κ``, and ``κ`` is tuned by
    stochastic approximation so that, after capping at 1, the mean over negatives is ``q``.
    ``floor`` (a fraction of ``q``) bounds ``π⁻`` from below, so that no negative's weight
    exceeds ``1/(floor·q)``. κ also absorbs the lag of ``s̄`` when scores drift, so it may
    be negative.
    """

    mix: ClassVar[float] = 1.0
    floor: ClassVar[float] = 0.0
    #: step of the cap correction κ (per negative, relative to q)
    adapt: ClassVar[float] = 0.01
    #: half-life, in negatives, of the mean score s̄ (short: scores drift as D̂ fills)
    score_half_life: ClassVar[float] = 2_000.0
    KAPPA_MIN: ClassVar[float] = -3.0
    KAPPA_MAX: ClassVar[float] = 10.0

    def __init__(self, target_rate: float = 0.2, salt: int = 0, half_life: float = 20_000.0):
        super().__init__(target_rate=target_rate, salt=salt, half_life=half_life)
        self.mean_score = 0.0  # decayed mean of s over negatives (0: none seen yet)
        self.negatives = 0  # negatives decided (the mean is a plain one over the first ones)
        self.kappa = 0.0
        self._last: tuple[float, float] | None = None  # (s, proportional part) of last call

    def score(self, p: float, x: Mapping[int, float]) -> float:
        """The relative importance of keeping a negative (any positive scale)."""
        raise NotImplementedError

    def negative_probability(self, p: float, x: Mapping[int, float], q: float) -> float:
        s = self.score(p, x)
        if not math.isfinite(s) or s < 0.0:
            s = self.mean_score if self.mean_score > 0.0 else 1.0
        ref = self.mean_score if self.mean_score > 0.0 else s
        prop = 1.0 if ref <= 0.0 else min(1.0, q * math.exp(self.kappa) * s / ref)
        if ref <= 0.0 and s <= 0.0:
            prop = q
        self._last = (s, prop)
        pi = (1.0 - self.mix) * q + self.mix * prop
        return max(pi, self.floor * q)

    def decide(self, event_id: str, label: int, p: float, x: Mapping[int, float]) -> LabelDecision:
        q = self.negative_rate
        decision = super().decide(event_id, label, p, x)
        if not label and self._last is not None:
            s, prop = self._last
            self.negatives += 1
            w = max(1.0 - 0.5 ** (1.0 / self.score_half_life), 1.0 / self.negatives)
            if self.mean_score <= 0.0:
                self.mean_score = s
            else:
                self.mean_score += w * (s - self.mean_score)
            self.kappa += self.adapt * (q - prop) / q
            self.kappa = min(self.KAPPA_MAX, max(self.KAPPA_MIN, self.kappa))
        return decision

    def to_state(self) -> dict[str, Any]:
        state = super().to_state()
        state.update(mean_score=self.mean_score, kappa=self.kappa, negatives=self.negatives)
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            return
        mean_score, kappa = float(state["mean_score"]), float(state["kappa"])
        if not (
            math.isfinite(mean_score)
            and mean_score >= 0.0
            and self.KAPPA_MIN <= kappa <= self.KAPPA_MAX
        ):
            raise StateError("unusable sampler state: mean_score or kappa out of range")
        super().load_state(state)
        self.mean_score, self.kappa = mean_score, kappa
        # a state saved before the count existed is past its first negatives
        self.negatives = max(0, min(int(state.get("negatives", 2**31)), 2**31))


def pos_score(p: float) -> float:
    """The P-OS factor ``p̂·√(1 − p̂)`` (Wang, Zhang & Wang 2021) of a probability.

    >>> round(pos_score(0.01), 6), pos_score(1.0)
    (0.00995, 0.0)
    """
    p = min(1.0, max(0.0, p))
    return p * math.sqrt(1.0 - p)


class POSSampler(ScoredSampler):
    """P-OS without the design factor: negatives ∝ ``p̂·√(1 − p̂)``.

    >>> sampler = make_sampler("pos", target_rate=0.1)
    >>> low = sampler.decide("a", 0, p=0.001, x={}).pi
    >>> high = sampler.decide("b", 0, p=0.05, x={}).pi
    >>> low < high
    True
    """

    name = "pos"

    def score(self, p: float, x: Mapping[int, float]) -> float:
        return pos_score(p)


class FisherSampler(ScoredSampler):
    """Negatives ∝ ``p̂·√(1 − p̂)·‖D̂⁻¹x‖``, ``D̂`` the diagonal of the pilot's Fisher
    information: for each column the decayed sum of ``p̂(1 − p̂)·x_j²`` over labelled
    examples (the online learner's ``p̂`` before it learned the label), plus ``prior``.
    ``‖D̂⁻¹x‖`` is the A-optimal factor (it targets the coefficients' squared error).

    The columns are the trainer's when ``features`` describes them
    (:class:`models.sampler_design.SamplerDesign`, e.g. ``"item:15,category:60,hour"``),
    else the engine's hashed features; an intercept column is always there, so an example
    with no other column is not mistaken for one with no information.

    Rare columns have little information, so their examples' negatives are kept more
    often; an array of ``2**hash_bits`` floats bounds the memory (buckets fold by mask).

    >>> sampler = make_sampler("fisher", target_rate=0.1, hash_bits=4)
    >>> for i in range(200):
    ...     _ = sampler.decide(f"c{i}", 0, p=0.02, x={1: 1.0})  # bucket 1 is common
    >>> rare = sampler.decide("r", 0, p=0.02, x={2: 1.0}).pi
    >>> common = sampler.decide("c", 0, p=0.02, x={1: 1.0}).pi
    >>> rare > common
    True
    """

    name = "fisher"
    #: D̂ prior per column (the information of one example at p(1 − p) = 0.001)
    PRIOR: ClassVar[float] = 1e-3
    #: the power of D̂ in the design factor: ‖D̂^(−power)·x‖
    power: ClassVar[float] = 1.0

    def __init__(
        self,
        target_rate: float = 0.2,
        salt: int = 0,
        half_life: float = 20_000.0,
        hash_bits: int = 18,
        features: str | None = None,
        prior: float | None = None,
    ):
        super().__init__(target_rate=target_rate, salt=salt, half_life=half_life)
        if not (isinstance(hash_bits, int) and 1 <= hash_bits <= 24):
            raise ValueError(f"hash_bits must be an int in [1, 24], not {hash_bits!r}")
        prior = self.PRIOR if prior is None else prior
        if not (isinstance(prior, (int, float)) and 0.0 < prior < math.inf):
            raise ValueError(f"prior must be a number > 0, not {prior!r}")
        self.prior = float(prior)
        self.hash_bits = hash_bits
        self.mask = (1 << hash_bits) - 1
        self.design = SamplerDesign(features, hash_bits) if features else None
        self.intercept = intercept_bucket(hash_bits)
        # D̂ = info * scale: decaying every bucket per example would cost 2**bits, so the
        # decay goes into the common scale and additions are divided by it.
        self.info = array("d", bytes(8 << hash_bits))
        self.scale = 1.0

    def features(self, event: Event, x: Mapping[int, float]) -> Mapping[int, float]:
        if self.design is not None:
            return self.design.encode(event)
        return {**x, self.intercept: 1.0}

    def observe_event(self, event: Event) -> None:
        if self.design is not None:
            self.design.observe(event)

    def fisher_diagonal(self, x: Mapping[int, float]) -> list[float]:
        """``D̂_j`` (with the prior) for the buckets of ``x``, in the order of ``x``."""
        info, mask, scale, prior = self.info, self.mask, self.scale, self.prior
        return [info[k & mask] * scale + prior for k in x]

    def score(self, p: float, x: Mapping[int, float]) -> float:
        # D̂ per labelled example (the decayed count ``n``): the scores stay on one scale
        # while D̂ fills after a start, instead of falling as 1/t (which the mean score
        # and κ, adapting at a bounded speed, would follow late, keeping too few)
        info, mask, prior = self.info, self.mask, self.prior
        scale, n = self.scale, self.n
        if self.power == 1.0:
            total = sum((v * n / (info[k & mask] * scale + prior)) ** 2 for k, v in x.items())
        else:
            e = 2.0 * self.power
            total = sum(v * v * (n / (info[k & mask] * scale + prior)) ** e for k, v in x.items())
        return pos_score(p) * math.sqrt(total) if x else pos_score(p) * (n / prior) ** self.power

    def observe(self, label: int, p: float, x: Mapping[int, float], pi: float) -> None:
        self.scale *= self.decay
        if self.scale < 1e-100:
            self.info = array("d", (v * self.scale for v in self.info))
            self.scale = 1.0
        v = min(1.0, max(0.0, p))
        v = v * (1.0 - v) / self.scale
        info, mask = self.info, self.mask
        for k, value in x.items():
            info[k & mask] += v * value * value

    def to_state(self) -> dict[str, Any]:
        state = super().to_state()
        # the raw sums and their common scale, not their product: a restored sampler
        # then makes bit-for-bit the decisions the saved one would have made
        d = np.frombuffer(self.info, dtype=np.float64)
        nz = np.flatnonzero(d)
        state.update(
            hash_bits=self.hash_bits,
            fisher_idx=encode_array(nz.astype(np.int32)),
            fisher_val=encode_array(d[nz]),
            fisher_scale=self.scale,
        )
        if self.design is not None:
            state["design"] = self.design.to_state()
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`to_state`; the state of another sampler or of another design
        (``features`` changed) is ignored: the sampler starts afresh."""
        if state.get("name") != self.name:
            return
        spec = self.design.spec if self.design is not None else None
        if (state.get("design") or {}).get("spec") != spec:
            return
        if state.get("hash_bits") != self.hash_bits:
            raise StateError(
                f"sampler state has hash_bits {state.get('hash_bits')!r}, not {self.hash_bits}"
            )
        idx = decode_array(state["fisher_idx"])
        val = decode_array(state["fisher_val"])
        if idx.ndim != 1 or idx.shape != val.shape:
            raise StateError("sampler state: Fisher index and value arrays differ")
        if idx.size and (idx.min() < 0 or idx.max() > self.mask):
            raise StateError("sampler state: Fisher bucket out of range")
        if not (np.all(np.isfinite(val)) and np.all(val >= 0.0)):
            raise StateError("sampler state: Fisher values must be finite and >= 0")
        scale = float(state.get("fisher_scale", 1.0))  # saved as products before
        if not (math.isfinite(scale) and 0.0 < scale <= 1.0):
            raise StateError(f"sampler state: Fisher scale {scale!r} must be in (0, 1]")
        if self.design is not None:
            self.design.load_state(state["design"])
        super().load_state(state)
        info = np.zeros(1 << self.hash_bits, dtype=np.float64)
        info[idx.astype(np.int64)] = val
        self.info = array("d", info.tobytes())
        self.scale = scale


class FisherMixSampler(FisherSampler):
    """Half :class:`FisherSampler`, half the constant rate ``q``: a defensive mixture that
    never keeps a negative with less than ``q/2``."""

    name = "fisher-mix"
    mix = 0.5


class LeverageSampler(FisherSampler):
    """Negatives ∝ ``p̂·√(1 − p̂)·√(xᵀD̂⁻¹x)``: the leverage of ``x`` under the diagonal
    Fisher information, the factor that minimises the excess log-loss (L-optimality with
    the information as the loss's metric) rather than the coefficients' error."""

    name = "leverage"
    power = 0.5


class LeverageMixSampler(LeverageSampler):
    """Half :class:`LeverageSampler`, half the constant rate ``q``."""

    name = "leverage-mix"
    mix = 0.5


#: name → sampler class (``IMPORTANCE_SAMPLER``, ``--sampler``)
SAMPLERS: dict[str, type[LabelSampler]] = {}


def register(cls: type[LabelSampler]) -> type[LabelSampler]:
    """Add a sampler class under its ``name`` (usable as a class decorator)."""
    SAMPLERS[cls.name] = cls
    return cls


register(NegativeSampler)
register(UniformSampler)
register(POSSampler)
register(FisherSampler)
register(FisherMixSampler)
register(LeverageSampler)
register(LeverageMixSampler)


def make_sampler(
    name: str, target_rate: float = 0.2, salt: int = 0, **options: Any
) -> LabelSampler:
    """The sampler called ``name``; ``ValueError`` naming the choices if there is none.

    ``options`` go to the sampler's constructor (``hash_bits``, ``features``, ``prior`` of
    the Fisher samplers); ``features=None`` means the engine's hashed features.

    >>> make_sampler("fisher", 0.05, features="item:15,category,hour").design.groups
    {'item': 15, 'category': 0, 'hour': 0}
    >>> make_sampler("negative", 0.05, features="item")
    Traceback (most recent call last):
    ...
    ValueError: sampler 'negative' has no design: features apply to fisher, fisher-mix, ...
    """
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None
    if options.get("features") is None:
        options.pop("features", None)
    elif not issubclass(cls, FisherSampler):
        with_design = [n for n, c in SAMPLERS.items() if issubclass(c, FisherSampler)]
        raise ValueError(
            f"sampler {name!r} has no design: features apply to {', '.join(with_design)}"
        )
    return cls(target_rate=target_rate, salt=salt, **options)
