"""Scale out: two workers share 8 partitions; when one leaves (gracefully, or killed),
its partitions move to the other with their model snapshots and pending labels, and
every event is scored."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from stream_app.bench.cluster import Collector, isolation_for, produce
from stream_app.bench.scaling import assigned_partitions
from tests.integration.events import synthetic_events
from tests.integration.test_faults import healthz

pytestmark = pytest.mark.integration

#: Environment that makes a second worker join the first one's group and topics.
GROUP_KEYS = (
    "IMPORTANCE_APP_ID",
    "IMPORTANCE_TOPIC_EVENTS",
    "IMPORTANCE_TOPIC_SCORES",
    "IMPORTANCE_TOPIC_DLQ",
    "IMPORTANCE_TOPIC_TRAINING",
    "IMPORTANCE_TOPIC_ROLLING",
    "IMPORTANCE_PARTITIONS",
    "IMPORTANCE_ATTRIBUTION_WINDOW_S",
    "IMPORTANCE_SNAPSHOT_EVERY",
    "IMPORTANCE_SNAPSHOT_INTERVAL_S",
    "IMPORTANCE_PROCESSING_GUARANTEE",
)


def test_assigned_partitions_parses_faust_tables():
    log = """Setting newly assigned partitions
+Topic Partition Set-----------+------------+
| topic                        | partitions |
+------------------------------+------------+
| app-events-by-user           | {0-2, 5}   |
| app-pending-labels-changelog | {0-7}      |
+------------------------------+------------+ for group app
"""
    assert assigned_partitions(log, "app-events-by-user") == {0, 1, 2, 5}
    assert assigned_partitions("Setting newly assigned partitions\n" + log, "x") == set()
    assert assigned_partitions("nothing", "app-events-by-user") == set()


def wait_for_split(first, second, topic: str, partitions: int) -> tuple[set[int], set[int]]:
    """Wait until two workers of one group hold disjoint shares of ``topic`` that cover
    its ``partitions``; their shares (as their logs last reported them)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        mine = assigned_partitions(first.log_text(), topic)
        theirs = assigned_partitions(second.log_text(), topic)
        if mine and theirs and not mine & theirs and len(mine | theirs) == partitions:
            return mine, theirs
        time.sleep(0.5)
    pytest.fail(f"no stable split: {mine} / {theirs}\n{second.log_tail()}")


@pytest.mark.slow
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
@pytest.mark.parametrize("leave", ["graceful", "sigkill"])
def test_departed_workers_partitions_move_with_their_state(
    bootstrap, worker_factory, leave, guarantee
):
    """Two workers on 8 partitions; one leaves mid-stream. The survivor takes its
    partitions over, restores their models (update counts continue) and their pending
    labels (labels of exposures scored by the departed worker resolve on the survivor),
    and no event is left unscored (nor, with exactly_once, scored twice for
    read_committed readers)."""
    snapshot_every = 2000
    first = worker_factory(
        IMPORTANCE_PARTITIONS="8",
        # a 4-hour attribution window keeps exposures pending across the handover
        IMPORTANCE_ATTRIBUTION_WINDOW_S="14400",
        IMPORTANCE_SNAPSHOT_EVERY=str(snapshot_every),
        IMPORTANCE_SNAPSHOT_INTERVAL_S="2",
        IMPORTANCE_PROCESSING_GUARANTEE=guarantee,
    )
    second = worker_factory(**{k: first.env[k] for k in GROUP_KEYS if k in first.env})
    settings = first.settings
    by_user = f"{settings.app_id}-events-by-user"
    first.start()
    second.start()
    # the group settles once both hold a share of the by-user partitions
    mine, theirs = wait_for_split(first, second, by_user, 8)
    print(f"\nby-user partitions: first {sorted(mine)}, second {sorted(theirs)}")

    events = synthetic_events(24_000, prefix=f"scale-{leave}")
    scores = Collector(bootstrap, settings.topic_scores, isolation=isolation_for(guarantee))
    scores.start()
    # Half the events before the departure, half after: however fast the workers are,
    # every partition has events left for the survivor to score.
    produce(bootstrap, settings.topic_events, events[:12_000])
    assert scores.wait(lambda c: c.distinct() >= 8000, timeout=240), first.log_tail()
    time.sleep(3)  # a periodic snapshot (every 2 s) has happened on both
    scored_by_second = healthz(second.settings.web_port)[1].get("scored", 0)
    log_offset = len(first.log_text())
    left_at = time.time()
    if leave == "graceful":
        second.stop()
    else:
        second.kill()
    gone_at = time.time()  # records scored after this come from the survivor
    print(
        f"second worker left ({leave}) after scoring {scored_by_second} events; "
        f"its process ended {gone_at - left_at:.1f} s after the signal"
    )
    assert scored_by_second > 0
    produce(bootstrap, settings.topic_events, events[12_000:])

    expected = {e["event_id"] for e in events}
    done = scores.wait(lambda c: c.distinct() >= len(expected), timeout=300)
    scores.stop()
    records = scores.snapshot()
    got = {r["event_id"] for r in records}
    missing = expected - got
    assert done and not missing, (
        f"{len(missing)} events never scored, e.g. {sorted(missing)[:20]} of users "
        f"{Counter(e['user_id'] for e in events if e['event_id'] in missing).most_common(5)}"
        f"\n{first.log_tail()}"
    )
    after_log = first.log_text()[log_offset:]
    taken = assigned_partitions(after_log, by_user)
    assert taken == set(range(8)), f"survivor holds {taken}"

    # The survivor restored the departed worker's models and kept counting.
    ordered = sorted(records, key=lambda r: r["scored_at"])
    report = {}
    for partition in sorted(theirs):
        before = [
            r["model"]["updates"]
            for r in ordered
            if r["partition"] == partition and r["scored_at"] < gone_at
        ]
        after = next(
            (r for r in ordered if r["partition"] == partition and r["scored_at"] > gone_at),
            None,
        )
        assert after is not None, f"partition {partition} never scored again"
        if before and max(before) > 0:
            assert f"partition {partition}: restored model" in after_log, partition
            assert after["model"]["updates"] > 0, f"partition {partition} restarted from 0"
            report[partition] = (max(before), after["model"]["updates"])
    assert report, "no moved partition had learned anything before the handover"
    print(f"moved partitions: (updates before leaving, first record on survivor) {report}")

    # Pending labels moved too: exposures the departed worker scored (once) had their
    # labels resolved by the survivor and published as training samples.
    from tests.integration.conftest import consume_all

    times_scored = Counter(r["event_id"] for r in records)
    departed_once = {
        r["event_id"]
        for r in records
        if r["partition"] in theirs
        and r["scored_at"] < left_at
        and times_scored[r["event_id"]] == 1
    }

    def carried(recs):
        return [
            r
            for r in recs
            if r["event_id"] in departed_once
            and r["_ts"] > left_at
            and r["label_source"] in ("converted", "window_closed")
        ]

    training = consume_all(
        bootstrap, settings.topic_training, until=lambda recs: bool(carried(recs)), timeout=60
    )
    assert carried(training), "no label pending on the departed worker resolved on the survivor"
    duplicates = len(records) - len(got)
    dup_moved = sum(
        1
        for r in records
        if times_scored[r["event_id"]] > 1 and r["partition"] in theirs and r["scored_at"] > gone_at
    )
    print(
        f"{len(records)} score records, {duplicates} duplicates ({dup_moved} rescored on "
        "the moved partitions by the survivor); "
        f"{len(carried(training))} training samples of the departed worker's exposures "
        "resolved by the survivor"
    )
    if guarantee == "exactly_once":
        assert duplicates == 0, f"read_committed saw {duplicates} duplicates"
    if leave == "graceful":
        # a graceful leave snapshots every model before its final flush: nothing learned
        # is lost, the survivor starts exactly where the departed worker stopped
        for partition, (before_n, after_n) in report.items():
            assert after_n >= before_n, (partition, before_n, after_n)
    else:
        # a SIGKILL loses what was learned since the last snapshot (every 2 s / 2,000
        # events); the replayed events are learned from again
        for partition, (before_n, after_n) in report.items():
            assert after_n > 0, (partition, before_n, after_n)
