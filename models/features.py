"""Features of an event: hashed sparse indicators for the linear learner, and a compact
dense embedding for the nearest-neighbour scorer.

Hashing is deterministic across processes (CRC-32, not Python's salted ``hash``), so a
saved model keeps meaning the same thing after a restart, and memory is bounded by the
number of hash buckets instead of growing with the number of distinct users and items.

>>> from models.events import decode_event
>>> raw = b'{"user_id": 1, "item_id": 2, "category_id": 3, "type": "pv", "ts": 1511658000}'
>>> ev = decode_event(raw)
>>> x = hashed_features(ev, bits=18)
>>> len(x), all(0 <= k < 2**18 for k in x), set(x.values())
(11, True, {1.0})
>>> embed(ev).shape
(16,)
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from models.events import Event

__all__ = ["EMBEDDING_DIM", "TYPE_LEVEL", "embed", "feature_names", "hashed_features"]

#: Engagement level of each event type, used in the embedding and the behaviour prior.
TYPE_LEVEL = {
    "impression": 0.0,
    "view": 0.2,
    "click": 0.4,
    "fav": 0.6,
    "cart": 0.8,
    "purchase": 1.0,
}

EMBEDDING_DIM = 16
_ITEM_DIMS = 8
_CATEGORY_DIMS = 4
_TABLE_ROWS = 4096
_rng = np.random.default_rng(20171126)
# Fixed pseudo-random codebooks: an id is embedded as the row its hash selects.
_ITEM_CODES = (_rng.standard_normal((_TABLE_ROWS, _ITEM_DIMS)) / math.sqrt(_ITEM_DIMS)).astype(
    np.float32
)
_CATEGORY_CODES = (
    _rng.standard_normal((_TABLE_ROWS, _CATEGORY_DIMS)) / math.sqrt(_CATEGORY_DIMS)
).astype(np.float32)
# How many string context values take part in crosses with the item.
_MAX_CONTEXT_CROSSES = 8


def _h(text: str) -> int:
    return zlib.crc32(text.encode())


def price_bucket(price: float | None) -> str:
    """Log2 bucket of a price, or ``"none"``."""
    if price is None:
        return "none"
    return str(int(math.log2(price + 1.0)))


def feature_names(event: Event) -> list[str]:
    """The readable names of the indicator features of an event (before hashing)."""
    hour = int(event.ts // 3600 % 24)
    cat = event.category_id or "none"
    pos = str(event.position) if event.position is not None else "none"
    etype = event.type
    names = [
        f"u={event.user_id}",
        f"i={event.item_id}",
        f"c={cat}",
        f"t={etype}",
        f"pos={pos}",
        f"h={hour}",
        f"pb={price_bucket(event.price)}",
        f"t*pos={etype}|{pos}",
        f"t*h={etype}|{hour}",
        f"u*c={event.user_id}|{cat}",
        f"i*t={event.item_id}|{etype}",
    ]
    if event.context:
        crosses = 0
        for key, value in event.context.items():
            if isinstance(value, str):
                names.append(f"x:{key}={value}")
                if crosses < _MAX_CONTEXT_CROSSES:
                    names.append(f"x*i:{key}={value}|{event.item_id}")
                    crosses += 1
    return names


#: CRC-32 states after each feature name's fixed prefix: ``crc32(rest, _PREFIX[p])`` is
#: ``crc32(p + rest)``, so a name's bucket is computed without building the name.
_PREFIX = {
    p: zlib.crc32(p.encode())
    for p in ("u=", "i=", "c=", "t=", "pos=", "h=", "pb=", "t*pos=", "t*h=", "u*c=", "i*t=")
}
_BAR = b"|"
#: buckets of the features that depend only on (type, position, hour, price bucket, bits)
_SMALL: dict[tuple[str, str, int, str, int], tuple[int, ...]] = {}
_SMALL_MAX = 65_536


def _small_buckets(etype: str, pos: str, hour: int, pb: str, mask: int) -> tuple[int, ...]:
    key = (etype, pos, hour, pb, mask)
    found = _SMALL.get(key)
    if found is None:
        crc, pre = zlib.crc32, _PREFIX
        t, p, h = etype.encode(), pos.encode(), str(hour).encode()
        found = (
            crc(t, pre["t="]) & mask,
            crc(p, pre["pos="]) & mask,
            crc(h, pre["h="]) & mask,
            crc(pb.encode(), pre["pb="]) & mask,
            crc(p, crc(_BAR, crc(t, pre["t*pos="]))) & mask,
            crc(h, crc(_BAR, crc(t, pre["t*h="]))) & mask,
        )
        if len(_SMALL) >= _SMALL_MAX:
            _SMALL.clear()
        _SMALL[key] = found
    return found


def hashed_features(event: Event, bits: int = 18) -> dict[int, float]:
    """Indicator features hashed into ``2**bits`` buckets, as a river-style ``{index: 1.0}``.

    The bucket of a feature is ``crc32(name) & (2**bits - 1)`` for each name of
    :func:`feature_names` (in that order), computed from CRC-32 states of the names'
    prefixes instead of building the names.
    """
    mask = (1 << bits) - 1
    crc, pre = zlib.crc32, _PREFIX
    etype = event.type
    cat = event.category_id or "none"
    pos = str(event.position) if event.position is not None else "none"
    hour = int(event.ts // 3600 % 24)
    u = event.user_id.encode()
    i = event.item_id.encode()
    c = cat.encode()
    b_t, b_pos, b_h, b_pb, b_tpos, b_th = _small_buckets(
        etype, pos, hour, price_bucket(event.price), mask
    )
    x = {
        crc(u, pre["u="]) & mask: 1.0,
        crc(i, pre["i="]) & mask: 1.0,
        crc(c, pre["c="]) & mask: 1.0,
        b_t: 1.0,
        b_pos: 1.0,
        b_h: 1.0,
        b_pb: 1.0,
        b_tpos: 1.0,
        b_th: 1.0,
        crc(c, crc(_BAR, crc(u, pre["u*c="]))) & mask: 1.0,
        crc(etype.encode(), crc(_BAR, crc(i, pre["i*t="]))) & mask: 1.0,
    }
    if event.context:
        names = feature_names(event)
        for name in names[11:]:
            x.setdefault(_h(name) & mask, 1.0)
    return x


def embed(event: Event) -> np.ndarray:
    """A 16-dimensional float32 embedding: item and category codes, engagement level,
    hour of day on the circle, and the inverse of the display position."""
    vec = np.empty(EMBEDDING_DIM, dtype=np.float32)
    vec[:_ITEM_DIMS] = _ITEM_CODES[_h(event.item_id) % _TABLE_ROWS]
    cat_row = _h(event.category_id) % _TABLE_ROWS if event.category_id else 0
    vec[_ITEM_DIMS : _ITEM_DIMS + _CATEGORY_DIMS] = _CATEGORY_CODES[cat_row]
    angle = (event.ts % 86400.0) / 86400.0 * 2.0 * math.pi
    vec[12] = TYPE_LEVEL[event.type]
    vec[13] = 0.5 * math.sin(angle)
    vec[14] = 0.5 * math.cos(angle)
    vec[15] = 1.0 / event.position if event.position else 0.0
    return vec
