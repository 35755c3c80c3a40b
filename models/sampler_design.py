"""The design a Fisher-type sampler measures information on: the trainer's features.

An optimal-subsampling rule keeps a negative in proportion to how much it tells about the
coefficients of *the model that will be fitted on the sample*. For one-hot features that
is ``‖D̂⁻¹x‖`` with ``D̂`` the Fisher information of each column, so the sampler must see
the columns the trainer has: with the engine's hashed features it spends budget on rare
user×category crosses a trainer may not even have, and when the trainer pools rare items
into one "other" level (a vocabulary with a minimum count), the raw item ids' small
information is not the trainer's.

:class:`SamplerDesign` maps an event to the trainer's columns from a spec such as
``"item:15,category:60,hour"``: the feature groups the trainer uses (names of
:data:`GROUPS`), each with the minimum count of its vocabulary. A level seen fewer times
than that (among labelled examples, so far) counts as its group's pooled level, as the
trainer's ``other``. Every design has an intercept column. Buckets are the engine's
hashed buckets of the same feature names (CRC-32), so the memory is bounded by
``2**bits``; counts saturate at 65,535.

>>> from models.events import decode_event
>>> raw = b'{"user_id": 1, "item_id": 2, "category_id": 3, "type": "pv", "ts": 1511658000}'
>>> ev = decode_event(raw)
>>> design = SamplerDesign("item:2,hour", bits=18)
>>> x = design.encode(ev)
>>> len(x), design.pooled_bucket("item") in x  # intercept, hour and item 2 (pooled)
(3, True)
>>> design.observe(ev); design.observe(ev)
>>> design.pooled_bucket("item") in design.encode(ev)  # seen twice: item 2 is its own level
False
"""

from __future__ import annotations

import zlib
from array import array
from typing import Any

import numpy as np

from models.events import Event
from models.features import feature_names
from models.state import StateError, decode_array, encode_array

__all__ = ["COUNT_MAX", "GROUPS", "SamplerDesign", "intercept_bucket", "parse_design"]

#: group name → the prefix of its feature names in :func:`models.features.feature_names`
GROUPS: dict[str, str] = {
    "user": "u",
    "item": "i",
    "category": "c",
    "type": "t",
    "position": "pos",
    "hour": "h",
    "price": "pb",
    "type*position": "t*pos",
    "type*hour": "t*h",
    "user*category": "u*c",
    "item*type": "i*t",
    "context": "x",
    "context*item": "x*i",
}
#: counts saturate here (a minimum count above it could never be reached)
COUNT_MAX = 65_535
_INTERCEPT = b"\x00intercept"


def parse_design(spec: str) -> dict[str, int]:
    """``"item:15,category:60,hour"`` → ``{"item": 15, "category": 60, "hour": 0}``;
    ``ValueError`` naming the bad part and the choices.

    >>> parse_design("item:15, hour")
    {'item': 15, 'hour': 0}
    >>> parse_design("colour")
    Traceback (most recent call last):
    ...
    ValueError: unknown feature group 'colour' in 'colour'; choose among user, item, ...
    """
    groups: dict[str, int] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, count = part.partition(":")
        name = name.strip()
        if name not in GROUPS:
            raise ValueError(
                f"unknown feature group {name!r} in {spec!r}; choose among {', '.join(GROUPS)}"
            )
        try:
            min_count = int(count) if count.strip() else 0
        except ValueError:
            raise ValueError(
                f"minimum count of {name!r} in {spec!r} must be an integer, not {count!r}"
            ) from None
        if not 0 <= min_count <= COUNT_MAX:
            raise ValueError(
                f"minimum count of {name!r} in {spec!r} must be in [0, {COUNT_MAX}], "
                f"not {min_count}"
            )
        if name in groups:
            raise ValueError(f"feature group {name!r} appears twice in {spec!r}")
        groups[name] = min_count
    if not groups:
        raise ValueError(f"no feature group in {spec!r}; choose among {', '.join(GROUPS)}")
    return groups


def intercept_bucket(bits: int) -> int:
    """The intercept column's bucket among ``2**bits``."""
    return zlib.crc32(_INTERCEPT) & ((1 << bits) - 1)


def _group_of(name: str) -> str:
    """The prefix of a feature name: ``"u=7"`` → ``"u"``, ``"x:page=a"`` → ``"x"``."""
    head = name.partition("=")[0]
    return head.partition(":")[0]


class SamplerDesign:
    """The trainer's columns of an event (see the module docstring)."""

    def __init__(self, spec: str, bits: int = 18):
        if not (isinstance(bits, int) and 1 <= bits <= 24):
            raise ValueError(f"bits must be an int in [1, 24], not {bits!r}")
        self.spec = spec
        self.groups = parse_design(spec)
        self.bits = bits
        self.mask = (1 << bits) - 1
        self._prefixes = {GROUPS[g]: g for g in self.groups}
        self._min = {GROUPS[g]: n for g, n in self.groups.items()}
        self._pooled = {GROUPS[g]: self.pooled_bucket(g) for g in self.groups}
        self.intercept = intercept_bucket(bits)
        self.counts = array("H", bytes(2 << bits)) if any(self._min.values()) else None

    def pooled_bucket(self, group: str) -> int:
        """The bucket of a group's pooled level (its levels below the minimum count)."""
        return zlib.crc32(f"{GROUPS[group]}=\x00other".encode()) & self.mask

    def _levels(self, event: Event) -> list[tuple[str, int]]:
        out = []
        for name in feature_names(event):
            prefix = _group_of(name)
            if prefix in self._prefixes:
                out.append((prefix, zlib.crc32(name.encode()) & self.mask))
        return out

    def encode(self, event: Event) -> dict[int, float]:
        """The event's columns in the trainer's design, intercept included."""
        x = {self.intercept: 1.0}
        counts = self.counts
        for prefix, bucket in self._levels(event):
            if counts is not None and counts[bucket] < self._min[prefix]:
                bucket = self._pooled[prefix]
            x[bucket] = 1.0
        return x

    def observe(self, event: Event) -> None:
        """Count the event's levels (call once per labelled example, after deciding)."""
        counts = self.counts
        if counts is None:
            return
        for _prefix, bucket in self._levels(event):
            if counts[bucket] < COUNT_MAX:
                counts[bucket] += 1

    def to_state(self) -> dict[str, Any]:
        """Plain-data state: the spec, the bits and the non-zero counts."""
        state: dict[str, Any] = {"spec": self.spec, "bits": self.bits}
        if self.counts is not None:
            c = np.frombuffer(self.counts, dtype=np.uint16)
            nz = np.flatnonzero(c)
            state["count_idx"] = encode_array(nz.astype(np.int32))
            state["count_val"] = encode_array(c[nz].astype(np.int32))
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`to_state`; a state of another spec or size raises ``StateError``."""
        if state.get("spec") != self.spec or state.get("bits") != self.bits:
            raise StateError(
                f"sampler design state is for {state.get('spec')!r} at {state.get('bits')!r} "
                f"bits, not {self.spec!r} at {self.bits}"
            )
        if self.counts is None:
            return
        idx, val = decode_array(state["count_idx"]), decode_array(state["count_val"])
        if idx.ndim != 1 or idx.shape != val.shape:
            raise StateError("sampler design state: count index and value arrays differ")
        if idx.size and (idx.min() < 0 or idx.max() > self.mask):
            raise StateError("sampler design state: bucket out of range")
        if idx.size and (val.min() < 0 or val.max() > COUNT_MAX):
            raise StateError("sampler design state: count out of range")
        counts = np.zeros(1 << self.bits, dtype=np.uint16)
        counts[idx.astype(np.int64)] = val
        self.counts = array("H", counts.tobytes())
