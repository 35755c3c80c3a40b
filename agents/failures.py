"""Dead letters and failures of the worker's agents (see stream_app/failures.py and
stream_app/deadletter.py): every input message ends scored or as a dead letter that
fits, and a worker that cannot process stops without committing what it did not finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from agents.health import RateLimitFilter
from stream_app.app import app, output, settings
from stream_app.deadletter import DeadLetters
from stream_app.failures import EXIT_PROCESSING_FAILED, EventFailures, Suspect
from stream_app.metrics import counters, health

__all__ = ["dead_letters", "failures", "handle", "send_dead_letter"]

log = logging.getLogger(__name__)

# a stream of poison events, or of refused records, logs one line per kind every 10 s
# (with the count of those left out), not one per event
for _name in ("stream_app.failures", "stream_app.output"):
    logging.getLogger(_name).addFilter(RateLimitFilter())

#: seconds between a systemic failure and the exit (``/healthz`` reports it meanwhile)
EXIT_DELAY_S = 2.0

#: dead letters sized for the dead-letter topic's limit (set at start, stream_app/worker.py)
dead_letters = DeadLetters()


def count_dead_letter(code: str) -> None:
    counters.dlq += 1
    counters.dlq_by_code[code] = counters.dlq_by_code.get(code, 0) + 1


def send_dead_letter(key: bytes | None, value: bytes, code: str) -> None:
    output.send(settings.topic_dlq, value, key)
    count_dead_letter(code)


def _replace(
    code: str,
    detail: str,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    origin: tuple[str, int, int] | None,
) -> tuple[str, bytes | None, bytes]:
    """The dead letter that takes the place of a record Kafka would refuse."""
    dkey, dvalue = dead_letters.replacement(code, detail, topic, key, value, origin)
    count_dead_letter(code)
    return settings.topic_dlq, dkey, dvalue


output.replace = _replace
output.no_replacement = {settings.topic_dlq}


def _poison(suspect: Suspect) -> None:
    key, value = dead_letters.processing_failed(
        suspect.error, suspect.value, suspect.key, suspect.origin
    )
    previous, output.origin = output.origin, suspect.origin
    try:
        send_dead_letter(key, value, "processing_failed")
    finally:
        output.origin = previous


def _stop(reason: str) -> None:
    """A systemic failure: refuse every commit, report it, exit non-zero shortly."""
    output.refuse(reason)
    health.failed = reason
    log.critical(
        "processing failed: %s; stopping the worker (exit code %d) without committing the "
        "offsets of the events it did not finish: fix the cause and restart it",
        reason,
        EXIT_PROCESSING_FAILED,
    )

    def leave() -> None:
        logging.shutdown()
        os._exit(EXIT_PROCESSING_FAILED)

    try:
        asyncio.get_running_loop().call_later(EXIT_DELAY_S, leave)
    except RuntimeError:  # no loop (tests): leave at once
        leave()


def _set_origin(origin: tuple[str, int, int] | None) -> None:
    output.origin = origin


failures = EventFailures(
    settings.max_consecutive_failures,
    _poison,
    _stop,
    set_origin=_set_origin,
)


async def handle(
    event: Any,
    missed: list[Any],
    handled: Callable[[], Awaitable[Any]],
    fn: Callable[..., Awaitable[Any]],
) -> None:
    """``fn(message, value)`` for each message the offset guard read back (``missed``)
    and then for the event's own message; ``handled()`` reports the read-back ones done.

    When one of them raised, the event's message is held back from Faust's
    acknowledgements (and ``handled()`` postponed) until the failures are judged: then
    released, or never (the worker stops)."""
    message = event.message
    suspects = []
    for earlier in missed:
        origin = (earlier.topic, earlier.partition, earlier.offset)
        suspect = await failures.run(origin, earlier.key, earlier.value, fn, earlier, earlier.value)
        if suspect is not None:
            suspects.append(suspect)
    origin = (message.topic, message.partition, message.offset)
    suspect = await failures.run(origin, message.key, event.value, fn, message, event.value)
    if suspect is not None:
        suspects.append(suspect)
    if not suspects:
        await handled()
        return
    message.incref()  # the stream's own ack no longer acknowledges it
    where = (message.topic, message.partition)
    # what the transactional commit must stop below (Faust's own commit stops at the
    # first unacknowledged offset): the message, and the read-back ones before it
    held = {s.origin[2] for s in suspects} | {message.offset}
    output.held.setdefault(where, set()).update(held)

    async def release() -> None:
        await handled()
        message.ack(app.consumer)
        remaining = output.held.get(where, set()) - held
        if remaining:
            output.held[where] = remaining
        else:
            output.held.pop(where, None)

    failures.hold(suspects, release)


def agent_failed(name: str, exc: BaseException) -> None:
    """An agent raised outside the handling of one event: a systemic failure."""
    failures.fail(f"agent {name} failed: {type(exc).__name__}: {exc}")


@app.timer(interval=1.0)
async def judge_waiting_suspects() -> None:
    """Suspects of partitions that went quiet are judged after a few seconds."""
    await failures.resolve_waiting()


@app.on_partitions_revoked.connect
async def _forget_revoked(app: Any, revoked: set, **kwargs: Any) -> None:
    gone = {(tp.topic, tp.partition) for tp in revoked}
    failures.forget(gone)
    for where in gone:
        output.held.pop(where, None)
