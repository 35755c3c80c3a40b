"""Offline scoring: the same engine and label attribution as the worker, over a file,
without Kafka (``importance score FILE -o OUT.jsonl``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from models.engine import ImportanceEngine
from models.events import CONVERSION_TYPES, EXPOSURE_TYPES, InvalidEvent, validate_event
from models.labels import LabelAttribution

__all__ = ["score_events"]


def score_events(
    events: Iterable[dict[str, Any] | bytes],
    *,
    target_rate: float = 0.2,
    window_s: float = 1800.0,
    engine: ImportanceEngine | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one score record per valid event (and an ``{"error": ...}`` record per
    invalid one), learning from labels as they resolve, exactly as one worker partition.
    """
    import orjson

    engine = engine or ImportanceEngine(target_rate=target_rate)
    labels = LabelAttribution({}, window_s=window_s)
    for raw in events:
        try:
            obj = orjson.loads(raw) if isinstance(raw, (bytes, str)) else raw
            ev = validate_event(obj, now=float("inf"))
        except (InvalidEvent, orjson.JSONDecodeError) as exc:
            code = getattr(exc, "code", "not_json")
            yield {"error": code, "detail": str(exc)}
            continue
        resolved = labels.expire(0, max(engine.watermark, ev.ts))
        if ev.type in CONVERSION_TYPES:
            resolved.extend(labels.convert(0, ev))
        scored = engine.score(ev)
        record = scored.record(updates=engine.updates, version=engine.version)
        if ev.label is None and ev.type in EXPOSURE_TYPES:
            resolved.extend(labels.track(0, ev, {}))
        for item in resolved:
            engine.learn(item.event, item.label)
        yield record
