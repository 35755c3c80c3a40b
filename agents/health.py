"""Broker health: a periodic metadata request tells whether the worker can reach Kafka.

Faust and aiokafka retry on their own when the broker goes away (the consumer re-finds
its coordinator and rejoins the group, the producer retries its batches), but they do
not say so in one place. Every ``CHECK_INTERVAL_S`` seconds this timer asks the cluster
for metadata over the worker's own producer connection (so it uses exactly the client
settings of the worker, security included), records the outcome in
:data:`stream_app.metrics.health`, logs every change (outage begins / ends, and a
reminder while it lasts); :func:`healthz_body` is what ``GET /healthz`` answers (200
when the broker answers, 503 otherwise), served by :mod:`stream_app.web.api`, the one
place that registers the route. :func:`readyz_body` is ``GET /readyz`` (readiness: tables
recovered and broker answering).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from stream_app.app import app
from stream_app.faust_internals import aiokafka_producer
from stream_app.metrics import counters, health

__all__ = [
    "CHECK_INTERVAL_S",
    "RateLimitFilter",
    "check_broker",
    "healthz_body",
    "readyz_body",
    "record_check",
]

log = logging.getLogger(__name__)

#: Seconds between broker checks, and the timeout of one check.
CHECK_INTERVAL_S = 2.0
CHECK_TIMEOUT_S = 5.0
#: While an outage lasts, repeat the warning this often (seconds).
REMIND_EVERY_S = 30.0

_last_reminder = 0.0


class RateLimitFilter(logging.Filter):
    """Let through one warning/error per logger and message template every ``window``
    seconds; the next one that passes says how many were dropped in between.

    While the broker is down aiokafka retries in a tight loop and logs every attempt
    (hundreds of lines a second); one line per kind every few seconds says the same.
    """

    def __init__(self, window: float = 10.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, str], list[float]] = {}  # key -> [last passed, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return False
            dropped = int(seen[1]) if seen is not None else 0
            self._seen[key] = [now, 0]
        if dropped:
            record.msg = (
                f"{record.getMessage()} (and {dropped} similar messages in the last "
                f"{self.window:g} s)"
            )
            record.args = ()
        return True


#: aiokafka loggers that repeat themselves on every retry while the broker is away.
NOISY_LOGGERS = (
    "aiokafka",  # aiokafka.client logs as "aiokafka"
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.sender",
    "aiokafka.producer.producer",
)
_rate_limit = RateLimitFilter()
for _name in NOISY_LOGGERS:
    logging.getLogger(_name).addFilter(_rate_limit)


def record_check(ok: bool, error: str | None = None, now: float | None = None) -> None:
    """Update :data:`health` with one check's outcome and log transitions."""
    global _last_reminder
    now = time.time() if now is None else now
    health.checks += 1
    if ok:
        if health.broker_down_since is not None:
            outage = now - health.broker_down_since
            health.broker_outages += 1
            health.last_outage_s = round(outage, 3)
            log.warning(
                "Kafka broker reachable again after an outage of %.1f s (outage #%d)",
                outage,
                health.broker_outages,
            )
        elif not health.broker_connected:
            log.info("Kafka broker reachable")
        health.broker_connected = True
        health.broker_down_since = None
        health.last_broker_ok = now
        return
    health.last_broker_error = error or "unknown error"
    health.last_broker_error_at = now
    if health.broker_connected or health.broker_down_since is None:
        # the outage starts at the last moment the broker was known to answer
        health.broker_down_since = health.last_broker_ok or now
        _last_reminder = now
        log.warning(
            "Kafka broker unreachable: %s (the worker keeps retrying; /healthz reports 503)",
            health.last_broker_error,
        )
    elif now - _last_reminder >= REMIND_EVERY_S:
        _last_reminder = now
        log.warning(
            "Kafka broker still unreachable after %.0f s: %s",
            now - health.broker_down_since,
            health.last_broker_error,
        )
    health.broker_connected = False


async def probe() -> None:
    """One metadata request over the worker's producer connection; raises on failure."""
    producer = aiokafka_producer(app)  # once started
    if producer is None:
        raise RuntimeError("producer not started")
    await producer.client.fetch_all_metadata()


@app.timer(interval=CHECK_INTERVAL_S)
async def check_broker() -> None:
    """Check that the broker answers; never raises (a crash here would stop the app)."""
    try:
        await asyncio.wait_for(probe(), timeout=CHECK_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except asyncio.TimeoutError:
        record_check(False, f"no metadata answer within {CHECK_TIMEOUT_S:g} s")
    except Exception as exc:
        text = str(exc)
        name = type(exc).__name__
        record_check(False, text if text.startswith(name) else f"{name}: {text}")
    else:
        record_check(True)


def healthz_body(recovery: dict | None = None) -> tuple[dict, int]:
    """The ``/healthz`` (liveness) document and its HTTP status.

    200 while the process runs and its loop answers: also while it starts and while it
    recovers its tables (``"starting"``, ``"recovering"``; a liveness probe must not kill
    a worker that is restoring its state). 503 ``"broker_unreachable"`` while the broker
    does not answer, and ``"failed"`` from a systemic processing failure until the worker
    exits. ``recovery`` is :func:`stream_app.recovery.recovery_status` (None: not known)."""
    state = (recovery or {}).get("state")
    if health.failed is not None:
        status = "failed"
    elif health.checks and not health.broker_connected:
        status = "broker_unreachable"
    elif state in ("starting", "recovering") or not health.checks:
        status = state if state in ("starting", "recovering") else "starting"
    else:
        status = "ok"
    body = {
        "status": status,
        **health.as_dict(),
        "events_in": counters.events_in,
        "scored": counters.scored,
    }
    if recovery is not None:
        body["recovery"] = recovery
    return body, 503 if status in ("failed", "broker_unreachable") else 200


def readyz_body(recovery: dict) -> tuple[dict, int]:
    """The ``/readyz`` (readiness) document and its HTTP status: 200 ``"ready"`` only when
    the tables are recovered (``recovery["state"] == "live"``) and the broker answered the
    last check; else 503 with what it waits for (``"starting"``, ``"recovering"`` with the
    records left and the estimated seconds, ``"rebalancing"``, ``"broker_unreachable"``,
    ``"failed"``)."""
    state = str(recovery.get("state") or "starting")
    if health.failed is not None:
        status = "failed"
    elif state != "live":
        status = state  # the broker check runs once the worker is ready
    elif not health.broker_connected:
        status = "broker_unreachable" if health.checks else "starting"
    else:
        status = "ready"
    body = {
        "status": status,
        "broker_connected": health.broker_connected,
        "recovery": recovery,
    }
    if health.failed is not None:
        body["failed"] = health.failed
    return body, 200 if status == "ready" else 503
