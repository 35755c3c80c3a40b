"""The offset guard: which offsets count as skipped, and what it reads back."""

from __future__ import annotations

import asyncio

from stream_app.offset_guard import OffsetGuard, RawMessage, repaired


class FakeGuard(OffsetGuard):
    """No Kafka: committed offsets and partition contents are given."""

    def __init__(self, committed: dict[int, int], log_end: int = 10**9) -> None:
        super().__init__("t", "g", dict)
        self._committed_offsets = committed
        self.log_end = log_end
        self.reads: list[tuple[int, int, int]] = []

    def _committed(self, partitions):
        return {p: self._committed_offsets[p] for p in partitions}

    def _read(self, partition, start, end):
        self.reads.append((partition, start, end))
        return [
            RawMessage("t", partition, o, None, b"%d" % o)
            for o in range(start, min(end, self.log_end))
        ]


def run(coro):
    return asyncio.run(coro)


def test_in_order_offsets_read_nothing():
    async def go():
        guard = FakeGuard({0: 10})
        guard.on_assigned({0})
        return [await guard.missed(0, o) for o in range(10, 20)], guard.reads

    missed, reads = run(go())
    assert all(m == [] for m in missed) and reads == []


def test_a_jump_reads_the_skipped_offsets_back_in_order():
    async def go():
        guard = FakeGuard({0: 1570})
        guard.on_assigned({0})
        first = await guard.missed(0, 1570)
        jumped = await guard.missed(0, 1582)
        after = await guard.missed(0, 1583)
        return first, jumped, after, guard.reads

    before = dict(repaired)
    first, jumped, after, reads = run(go())
    assert first == [] and after == []
    assert [m.offset for m in jumped] == list(range(1571, 1582))
    assert reads == [(0, 1571, 1582)]
    assert repaired["gaps"] == before["gaps"] + 1
    assert repaired["messages"] == before["messages"] + 11


def test_first_message_after_assignment_beyond_the_committed_offset():
    async def go():
        guard = FakeGuard({3: 100})
        guard.on_assigned({3})
        return await guard.missed(3, 104)

    assert [m.offset for m in run(go())] == [100, 101, 102, 103]


def test_offsets_handled_already_are_skipped_not_read_back():
    """Faust hands the last message it read to the agent again after its consumer
    re-fetched it: the agent must skip it (processing it twice duplicates its outputs,
    which exactly_once must not)."""

    async def go():
        guard = FakeGuard({0: 50})
        guard.on_assigned({0})
        for o in range(50, 60):
            await guard.missed(0, o)
        again = [await guard.missed(0, o) for o in range(55, 61)]
        return again, guard.reads

    before = repaired["redelivered"]
    again, reads = run(go())
    assert again == [None] * 5 + [[]] and reads == []
    assert repaired["redelivered"] == before + 5


def test_a_gap_of_transaction_markers_reads_back_nothing_and_counts_nothing():
    async def go():
        guard = FakeGuard({0: 0})
        guard.on_assigned({0})
        await guard.missed(0, 0)
        guard.log_end = 1  # offset 1 is a transaction marker: no record to read there
        return await guard.missed(0, 2), guard.reads

    gaps = repaired["gaps"]
    missed, reads = run(go())
    assert missed == [] and reads == [(0, 1, 2)]
    assert repaired["gaps"] == gaps


def test_without_assignment_the_first_offset_is_the_reference():
    async def go():
        guard = FakeGuard({})
        return await guard.missed(1, 500), await guard.missed(1, 503)

    first, jumped = run(go())
    assert first == [] and [m.offset for m in jumped] == [501, 502]


def test_revoked_partitions_are_forgotten_and_inert_guard_reads_nothing():
    async def go():
        guard = FakeGuard({0: 0})
        guard.on_assigned({0})
        await guard.missed(0, 0)
        guard.on_revoked({0})
        assert guard.expected == {}
        inert = FakeGuard({})
        inert.max_gap = -1
        await inert.missed(0, 1)
        return await inert.missed(0, 10), inert.reads

    missed, reads = run(go())
    assert missed == [] and reads == []


def test_handled_gaps_are_reported_so_faust_can_commit_past_them():
    """Faust commits a partition only up to its first offset not acknowledged: the
    offsets the guard read back (or found empty) are reported once processed."""

    async def go():
        reported = []

        async def on_handled(partition, first, last):
            reported.append((partition, first, last))

        guard = FakeGuard({0: 100})
        guard.on_handled = on_handled
        guard.on_assigned({0})
        back = await guard.missed(0, 104)  # Faust skipped 100-103
        await guard.handled(0)
        await guard.missed(0, 105)  # in order: nothing to report
        await guard.handled(0)
        guard.log_end = 106
        await guard.missed(0, 107)  # offset 106: a transaction marker, nothing read back
        await guard.handled(0)
        return [m.offset for m in back], reported

    back, reported = run(go())
    assert back == [100, 101, 102, 103]
    assert reported == [(0, 100, 103), (0, 106, 106)]
