"""Valid and malformed event payloads shared by the integration tests."""

from __future__ import annotations

import random
from typing import Any

BASE_TS = 1_700_000_000


def synthetic_events(n: int, *, seed: int = 7, prefix: str = "syn") -> list[dict[str, Any]]:
    """``n`` valid events in event-time order: views of long-tailed items, some of
    which the same user converts within minutes (so labels resolve both ways)."""
    rng = random.Random(seed)
    items = [f"item-{i}" for i in range(400)]
    weights = [1.0 / (i + 1) for i in range(len(items))]
    out: list[dict[str, Any]] = []
    ts = BASE_TS
    while len(out) < n:
        ts += rng.randint(0, 3)
        user = f"u{rng.randint(0, 299)}"
        item = rng.choices(items, weights)[0]
        out.append(
            {
                "event_id": f"{prefix}-{len(out)}",
                "user_id": user,
                "item_id": item,
                "category_id": f"c{hash(item) % 20}",
                "type": rng.choice(["view", "view", "click", "impression"]),
                "ts": ts,
                "position": rng.randint(1, 10),
                "price": round(rng.uniform(1, 300), 2),
            }
        )
        if rng.random() < 0.15 and len(out) < n:
            out.append(
                {
                    "event_id": f"{prefix}-{len(out)}",
                    "user_id": user,
                    "item_id": item,
                    "type": rng.choice(["cart", "fav", "purchase"]),
                    "ts": ts + rng.randint(1, 600),
                }
            )
    return out[:n]


_OK = {"user_id": 1, "item_id": 2, "type": "view", "ts": BASE_TS}

#: (name, raw payload, expected error code): at least 15 kinds of bad input.
MALFORMED: list[tuple[str, bytes | None, str]] = [
    ("truncated-json", b'{"user_id": 1, "item_id": 2, "type": "vi', "not_json"),
    ("plain-text", b"hello kafka", "not_json"),
    ("empty", b"", "not_json"),
    ("null-value", None, "not_json"),
    ("array", b'[{"user_id": 1}]', "not_object"),
    ("number", b"42", "not_object"),
    ("missing-user", b'{"item_id": 2, "type": "view", "ts": 1700000000}', "missing_field"),
    ("missing-ts", b'{"user_id": 1, "item_id": 2, "type": "view"}', "missing_field"),
    (
        "null-item",
        b'{"user_id": 1, "item_id": null, "type": "view", "ts": 1700000000}',
        "null_field",
    ),
    (
        "bool-user",
        b'{"user_id": true, "item_id": 2, "type": "view", "ts": 1700000000}',
        "wrong_type",
    ),
    (
        "list-item",
        b'{"user_id": 1, "item_id": [2], "type": "view", "ts": 1700000000}',
        "wrong_type",
    ),
    (
        "unknown-type",
        b'{"user_id": 1, "item_id": 2, "type": "teleport", "ts": 1700000000}',
        "unknown_type",
    ),
    (
        "ts-1990",
        b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 631152000}',
        "ts_out_of_range",
    ),
    (
        "ts-future",
        b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 4102444800}',
        "ts_out_of_range",
    ),
    (
        "ts-garbage",
        b'{"user_id": 1, "item_id": 2, "type": "view", "ts": "yesterday"}',
        "bad_timestamp",
    ),
    (
        "negative-price",
        b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 1700000000, "price": -3}',
        "out_of_range",
    ),
    (
        "position-zero",
        b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 1700000000, "position": 0}',
        "out_of_range",
    ),
    (
        "label-two",
        b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 1700000000, "label": 2}',
        "out_of_range",
    ),
    (
        "propensity-zero",
        b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 1700000000, "propensity": 0}',
        "out_of_range",
    ),
    (
        "long-id",
        b'{"user_id": "' + b"x" * 10_000 + b'", "item_id": 2, "type": "view", "ts": 1700000000}',
        "string_too_long",
    ),
    (
        "nested-context",
        b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 1700000000, "context": {"a": {}}}',
        "bad_context",
    ),
    (
        "invalid-utf8",
        b'{"user_id": "\xff\xfe", "item_id": 2, "type": "view", "ts": 1700000000}',
        "bad_encoding",
    ),
    (
        "huge-payload",
        b'{"user_id": 1, "item_id": 2, "type": "view", "ts": 1700000000, "pad": "'
        + b"p" * 70_000
        + b'"}',
        "too_large",
    ),
    ("nan-literal", b'{"user_id": 1, "item_id": 2, "type": "view", "ts": NaN}', "not_json"),
]
