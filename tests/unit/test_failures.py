"""Per-event failure handling (stream_app/failures.py), without a broker."""

from __future__ import annotations

import asyncio

import pytest

from stream_app.failures import EventFailures, set_path


def run(coro):
    return asyncio.run(coro)


class Recorder:
    def __init__(self) -> None:
        self.dead: list = []
        self.stops: list[str] = []
        self.released: list[str] = []

    def failures(self, n: int = 3, **kwargs) -> EventFailures:
        return EventFailures(n, self.dead.append, self.stops.append, **kwargs)


async def ok() -> None:
    set_path(("score", 0))


async def boom() -> None:
    set_path(("score", 0))
    raise KeyError("broken")


async def rekey_only() -> None:  # a success of another path (decode, re-keying)
    return None


def test_one_poison_event_is_dead_lettered_when_the_next_one_succeeds():
    rec = Recorder()
    f = rec.failures()

    async def scenario():
        suspect = await f.run(("events", 0, 7), b"k", b"v", boom)
        assert suspect is not None and not rec.dead

        async def release():
            rec.released.append("m7")

        f.hold([suspect], release)
        assert await f.run(("events", 0, 8), b"k", b"v", ok) is None

    run(scenario())
    assert [s.origin for s in rec.dead] == [("events", 0, 7)]
    assert rec.released == ["m7"] and not rec.stops and f.poisoned == 1


def test_consecutive_failures_stop_the_worker_and_write_no_dead_letter():
    rec = Recorder()
    f = rec.failures(3)

    async def scenario():
        for offset in range(3):
            await f.run(("events", 0, offset), None, b"v", boom)
        await f.run(("events", 0, 3), None, b"v", ok)  # too late: stopping

    run(scenario())
    assert len(rec.stops) == 1 and "3 consecutive events" in rec.stops[0]
    assert not rec.dead


def test_successes_of_another_path_do_not_vouch_for_the_scoring():
    rec = Recorder()
    f = rec.failures(3)

    async def scenario():
        for offset in range(0, 6, 2):
            await f.run(("events", 0, offset), None, b"v", boom)
            await f.run(("events", 0, offset + 1), None, b"v", rekey_only)

    run(scenario())
    assert rec.stops and not rec.dead


def test_quiet_partition_suspect_is_judged_after_the_wait():
    rec = Recorder()
    f = rec.failures(3, poison_wait_s=0.0)

    async def scenario():
        await f.run(("events", 1, 5), None, b"v", boom)
        await f.resolve_waiting()  # nothing succeeded since: still a suspect
        assert not rec.dead

        async def other():
            set_path(("score", 2))

        await f.run(("events", 2, 9), None, b"v", other)
        await f.resolve_waiting()

    run(scenario())
    assert [s.origin for s in rec.dead] == [("events", 1, 5)]


def test_revoked_partitions_forget_their_suspects():
    rec = Recorder()
    f = rec.failures(3)

    async def scenario():
        await f.run(("events", 0, 1), None, b"v", boom)
        f.forget({("events", 0)})
        await f.run(("events", 0, 2), None, b"v", ok)

    run(scenario())
    assert not rec.dead and not f.suspects


def test_max_consecutive_must_be_positive():
    with pytest.raises(ValueError):
        EventFailures(0, print, print)
