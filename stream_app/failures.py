"""What the worker does when processing an event raises (no Faust imports: unit-testable).

An unexpected exception while processing one valid event must neither crash-loop the
worker (Faust restarts a crashed agent, and the offsets it has acknowledged meanwhile,
the failing message's included, get committed: the events are lost) nor turn a broken
worker into a stream of dead letters. :class:`EventFailures` tells the two apart per
input partition:

* a failed event is a *suspect*: its dead letter is not written yet and its message is
  held back from Faust's acknowledgements (its offset, and so every later one of its
  partition, is not committed);
* failures and successes are counted per *path*: the scoring of one partition's events
  (whichever agent scores them), or else the input partition (decoding, re-keying);
  :func:`set_path` names it, so that events that only take the re-keying hop do not
  vouch for the scoring that fails;
* when the next event of the same path succeeds, or when some event of the worker
  succeeded and the suspect has waited ``poison_wait_s``, the suspect was a poison
  event: its dead letter (``processing_failed``, with the exception and the original
  payload) is written and its message released;
* when ``max_consecutive`` events of one path fail in a row (or an agent fails
  outside the handling of one event, see :meth:`EventFailures.fail`), the failure is
  systemic: the worker stops. Nothing is committed from then on (the output barrier and
  the transactional commit refuse, :meth:`stream_app.output.Output.refuse`), so after
  the cause is fixed a restarted worker processes every event the failed one did not
  finish; none of them went to the dead-letter topic.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EXIT_PROCESSING_FAILED", "EventFailures", "Hold", "Suspect", "set_path"]

log = logging.getLogger(__name__)

#: exit code of a worker stopped by a systemic processing failure (EX_SOFTWARE)
EXIT_PROCESSING_FAILED = 70

Key = tuple[str, int]  # a path: ("score", partition), or an input (topic, partition)

#: the path of the event being processed (per asyncio task: agents interleave)
_path: contextvars.ContextVar[Key | None] = contextvars.ContextVar("failure_path", default=None)


def set_path(path: Key) -> None:
    """Name the path the current event takes from here on (e.g. ``("score", 3)``)."""
    _path.set(path)


class Hold:
    """A message held back from Faust's acknowledgements until each of its failed events
    is judged poison; ``release`` acknowledges it."""

    def __init__(self, release: Callable[[], Awaitable[Any]], pending: int) -> None:
        self.release = release
        self.pending = pending

    async def judged(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            await self.release()


@dataclass
class Suspect:
    """An event whose processing raised, waiting for the verdict (poison or systemic)."""

    origin: tuple[str, int, int]
    key: bytes | None
    value: bytes | None
    error: BaseException
    path: Key = ("", -1)
    at: float = field(default_factory=time.monotonic)
    hold: Hold | None = None


class EventFailures:
    """Per-partition bookkeeping of failed events (see the module docstring).

    ``dead_letter(suspect)`` writes a poison event's dead letter; ``on_fail(reason)``
    stops the worker (called once)."""

    def __init__(
        self,
        max_consecutive: int,
        dead_letter: Callable[[Suspect], None],
        on_fail: Callable[[str], None],
        *,
        poison_wait_s: float = 5.0,
        set_origin: Callable[[tuple[str, int, int] | None], None] | None = None,
    ) -> None:
        if max_consecutive < 1:
            raise ValueError("max_consecutive must be >= 1")
        self.max_consecutive = max_consecutive
        self.dead_letter = dead_letter
        self.on_fail = on_fail
        self.poison_wait_s = poison_wait_s
        self.set_origin = set_origin
        self.consecutive: dict[Key, int] = {}
        self.suspects: dict[Key, list[Suspect]] = {}
        self.failed: str | None = None
        self.last_success = 0.0
        #: events dead-lettered as processing_failed since the start
        self.poisoned = 0

    async def run(
        self, origin: tuple[str, int, int], key: bytes | None, value: bytes | None, fn, *args
    ) -> Suspect | None:
        """``await fn(*args)`` for the message at ``origin``; the :class:`Suspect` when
        it raised, else None."""
        if self.set_origin is not None:
            self.set_origin(origin)
        token = _path.set((origin[0], origin[1]))
        try:
            await fn(*args)
        except Exception as exc:
            suspect = Suspect(origin, key, value, exc, _path.get() or (origin[0], origin[1]))
            self._on_failure(suspect)
            return suspect
        else:
            path = _path.get() or (origin[0], origin[1])
        finally:
            _path.reset(token)
            if self.set_origin is not None:
                self.set_origin(None)
        await self._on_success(path)
        return None

    def hold(self, suspects: list[Suspect], release: Callable[[], Awaitable[Any]]) -> None:
        """Run ``release`` (acknowledge a held-back message) once each of ``suspects``
        is judged poison; never if the failure turns out systemic."""
        hold = Hold(release, len(suspects))
        for suspect in suspects:
            suspect.hold = hold

    def _on_failure(self, suspect: Suspect) -> None:
        where = suspect.path
        count = self.consecutive.get(where, 0) + 1
        self.consecutive[where] = count
        self.suspects.setdefault(where, []).append(suspect)
        error = suspect.error
        text = f"{type(error).__name__}: {error}"
        if count == 1:
            log.error(
                "processing %s[%d]@%d failed (%s); it goes to the dead-letter topic as "
                "processing_failed unless the next events of the partition fail too",
                *suspect.origin,
                text,
                exc_info=error,
            )
        if count >= self.max_consecutive:
            self.fail(
                f"{count} consecutive events of {_describe(where)} failed "
                f"(last at offset {suspect.origin[2]}: {text})"
            )

    async def _on_success(self, where: Key) -> None:
        self.last_success = time.monotonic()
        if self.consecutive.get(where):
            self.consecutive[where] = 0
        if self.suspects.get(where) and self.failed is None:
            await self._poisoned(where)

    async def _poisoned(self, where: Key) -> None:
        """The suspects of ``where`` were poison events: dead-letter them, release."""
        suspects = self.suspects.pop(where, [])
        for suspect in suspects:
            self.dead_letter(suspect)
            self.poisoned += 1
            log.warning(
                "%s[%d]@%d: processing failed (%s: %s); sent to the dead-letter topic as "
                "processing_failed",
                *suspect.origin,
                type(suspect.error).__name__,
                suspect.error,
            )
        self.consecutive[where] = 0
        for suspect in suspects:
            if suspect.hold is not None:
                await suspect.hold.judged()

    async def resolve_waiting(self, now: float | None = None) -> None:
        """Judge suspects that waited ``poison_wait_s`` while other events succeeded
        after them (their partition went quiet): poison."""
        if self.failed is not None:
            return
        now = time.monotonic() if now is None else now
        for where, suspects in list(self.suspects.items()):
            if not suspects:
                continue
            last = suspects[-1].at
            if now - last >= self.poison_wait_s and self.last_success > last:
                await self._poisoned(where)

    def forget(self, partitions: set[Key]) -> None:
        """The worker gave these partitions up: their suspects are the next owner's."""
        for where, suspects in list(self.suspects.items()):
            kept = [s for s in suspects if (s.origin[0], s.origin[1]) not in partitions]
            if kept:
                self.suspects[where] = kept
            else:
                del self.suspects[where]
                self.consecutive.pop(where, None)

    def fail(self, reason: str) -> None:
        """Processing failed beyond one event: stop the worker (once)."""
        if self.failed is not None:
            return
        self.failed = reason
        self.on_fail(reason)


def _describe(path: Key) -> str:
    kind, partition = path
    return f"partition {partition} (scoring)" if kind == "score" else f"{kind}[{partition}]"
