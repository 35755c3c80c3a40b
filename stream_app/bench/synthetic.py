"""Synthetic behaviour events for the memory benchmark (and anywhere a big stream is needed).

:func:`synthetic_events` yields contract events (dicts, like :func:`stream_app.datasets.
read_events`) from a small generative model of an e-commerce site:

* **users**: each session belongs to a new user with probability ``new_user_rate`` (ids are
  handed out in a scrambled order until all ``n_users`` are used), otherwise to a returning
  user, drawn with a strong bias towards the earliest (heaviest) users. With the defaults,
  2,000,000 events touch about 1,000,000 distinct users, most of them once;
* **items**: Zipf-like popularity (``P(rank r) ∝ 1/r^item_exponent``) over ``n_items`` items,
  mapped to scrambled ids; each item belongs to one of ``n_categories`` categories;
* **sessions** with funnels: a session is a run of item views (geometric length); a view may
  be followed later in the session by a ``cart`` or ``fav`` of the same item, and a cart by a
  ``purchase``. ``concurrency`` sessions are open at once and interleave;
* **timestamps** increase (non-decreasing, millisecond resolution) at ``events_per_s`` events
  per second of event time, starting at ``start_ts``.

Everything is drawn from one seeded :class:`random.Random`, so the same arguments give the
same stream.

>>> events = list(synthetic_events(1000, seed=1))
>>> len(events), events[0]["event_id"], events[0]["type"]
(1000, 'syn-1-0', 'view')
>>> all(a["ts"] <= b["ts"] for a, b in zip(events, events[1:]))
True
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SyntheticConfig", "synthetic_events"]

# Odd multipliers (golden-ratio based) that scramble ranks into ids: x -> (a*x + b) mod n is a
# bijection of [0, n) whenever gcd(a, n) == 1, which _coprime() ensures.
_SCRAMBLE_A = 2654435761
_SCRAMBLE_B = 40503


def _coprime(a: int, n: int) -> int:
    import math

    while math.gcd(a, n) != 1:
        a += 2
    return a


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generator (see the module docstring)."""

    n_users: int = 1_000_000
    n_items: int = 200_000
    n_categories: int = 2_000
    item_exponent: float = 1.05
    new_user_rate: float = 0.85
    session_continue: float = 0.35
    cart_rate: float = 0.06
    fav_rate: float = 0.03
    purchase_after_cart: float = 0.35
    concurrency: int = 64
    events_per_s: float = 100.0
    start_ts: float = 1_511_658_000.0
    id_prefix: str = "syn"
    extra: dict[str, Any] = field(default_factory=dict)


class _Session:
    __slots__ = ("queue", "user")

    def __init__(self, user: int) -> None:
        self.user = user
        # Pending actions of this session: ("view", None) or (type, item).
        self.queue: list[tuple[str, int | None]] = [("view", None)]


def synthetic_events(
    n: int, seed: int = 0, config: SyntheticConfig | None = None, **overrides: Any
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` synthetic events (see the module docstring); ``overrides`` patch ``config``."""
    cfg = config or SyntheticConfig()
    if overrides:
        cfg = SyntheticConfig(**{**cfg.__dict__, **overrides})
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    rand = rng.random
    # Item popularity: cumulative Zipf weights over ranks, searched with bisect.
    cum = list(
        itertools.accumulate(1.0 / (r**cfg.item_exponent) for r in range(1, cfg.n_items + 1))
    )
    total = cum[-1]
    item_a = _coprime(_SCRAMBLE_A % cfg.n_items or 1, cfg.n_items)
    user_a = _coprime(_SCRAMBLE_A % cfg.n_users or 1, cfg.n_users)
    cat_a = _coprime(_SCRAMBLE_A % cfg.n_categories or 1, cfg.n_categories)
    n_items, n_users, n_cats = cfg.n_items, cfg.n_users, cfg.n_categories

    def draw_item() -> int:
        rank = bisect.bisect_left(cum, rand() * total)
        return (item_a * min(rank, n_items - 1) + _SCRAMBLE_B) % n_items

    def category_of(item: int) -> int:
        # Categories are themselves long-tailed: square the uniform position of the item.
        u = ((item * 2246822519) % 1_000_003) / 1_000_003
        return (cat_a * int(u * u * n_cats) + 7) % n_cats

    new_users = 0

    def draw_user() -> int:
        nonlocal new_users
        if new_users == 0 or (new_users < n_users and rand() < cfg.new_user_rate):
            k = new_users
            new_users += 1
        else:
            # Returning user: heavily biased towards the first (heaviest) users.
            k = int(new_users * rand() ** 3)
        return (user_a * k + _SCRAMBLE_B) % n_users

    sessions = [_Session(draw_user()) for _ in range(cfg.concurrency)]
    mean_gap = 1.0 / cfg.events_per_s
    clock = cfg.start_ts
    prefix = f"{cfg.id_prefix}-{seed}-"
    for i in range(n):
        clock += rng.expovariate(1.0) * mean_gap
        slot = int(rand() * cfg.concurrency)
        session = sessions[slot]
        etype, item = session.queue.pop(0)
        if item is None:
            item = draw_item()
            if rand() < cfg.cart_rate:
                session.queue.append(("cart", item))
            elif rand() < cfg.fav_rate / (1.0 - cfg.cart_rate):
                session.queue.append(("fav", item))
            if rand() < cfg.session_continue:
                session.queue.insert(0, ("view", None))
        elif etype == "cart" and rand() < cfg.purchase_after_cart:
            session.queue.append(("purchase", item))
        event = {
            "event_id": f"{prefix}{i}",
            "user_id": session.user,
            "item_id": item,
            "category_id": category_of(item),
            "type": etype,
            "ts": round(clock, 3),
        }
        if cfg.extra:
            event.update(cfg.extra)
        yield event
        if not session.queue:
            sessions[slot] = _Session(draw_user())
