"""One learner across partitions and workers (IMPORTANCE_MODEL_SYNC_EVERY): what one
partition learns reaches the learners of the worker's other partitions at once and those
of another worker through the model-sync topic; with sharing off, it does not."""

from __future__ import annotations

import time

import pytest

from tests.integration.test_scaling import GROUP_KEYS, wait_for_split

pytestmark = pytest.mark.integration

NOW = 1_700_000_000


def _event(eid: str, user: str, item: str, label: int | None = None) -> dict:
    event = {"event_id": eid, "user_id": user, "item_id": item, "type": "impression", "ts": NOW}
    if label is not None:
        event["label"] = label
    return event


@pytest.mark.parametrize("sync_every", ["10", "0"])
def test_what_one_partition_learns_reaches_every_partition(bootstrap, worker_factory, sync_every):
    from tests.integration.conftest import consume_all, produce

    first = worker_factory(IMPORTANCE_PARTITIONS="4", IMPORTANCE_MODEL_SYNC_EVERY=sync_every)
    second = worker_factory(
        **{k: first.env[k] for k in GROUP_KEYS if k in first.env},
        IMPORTANCE_MODEL_SYNC_EVERY=sync_every,
    )
    first.start()
    second.start()
    mine, theirs = wait_for_split(first, second, first.settings.topic_by_user, 4)
    topic_in, topic_out = first.settings.topic_events, first.settings.topic_scores

    def scores(ids: set[str]) -> dict[str, dict]:
        records = consume_all(
            bootstrap, topic_out, until=lambda rs: ids <= {r["event_id"] for r in rs}, timeout=120
        )
        return {r["event_id"]: r for r in records if r["event_id"] in ids}

    # where do users land? one unlabelled event each
    pilot = [_event(f"pilot-{i}", f"user-{i}", "pilot-item") for i in range(80)]
    produce(bootstrap, topic_in, pilot, key=lambda i, e: e["user_id"].encode())
    where = {r["user_id"]: r["partition"] for r in scores({e["event_id"] for e in pilot}).values()}
    teacher_partition = min(mine)
    teachers = [u for u, p in where.items() if p == teacher_partition]
    same_worker = [u for u, p in where.items() if p in mine and p != teacher_partition]
    other_worker = [u for u, p in where.items() if p in theirs]
    assert teachers and same_worker and other_worker, where

    # only the teachers' partition learns: item "good" is always a positive, "bad" never
    lessons = [
        _event(f"lesson-{i}", teachers[i % len(teachers)], item, label)
        for i in range(400)
        for item, label in (("good", 1), ("bad", 0))
    ]
    produce(bootstrap, topic_in, lessons, key=lambda i, e: e["user_id"].encode())
    scores({lessons[-1]["event_id"]})

    def gaps(round_: int) -> dict[str, float]:
        probes = {
            (who, item): _event(f"probe-{round_}-{who}-{item}", user, item)
            for who, user in (("teacher", teachers[0]), ("same", same_worker[0]),
                              ("other", other_worker[0]))
            for item in ("good", "bad")
        }  # fmt: skip
        produce(bootstrap, topic_in, list(probes.values()), key=lambda i, e: e["user_id"].encode())
        got = scores({e["event_id"] for e in probes.values()})
        p = {k: got[e["event_id"]]["p"] for k, e in probes.items()}
        return {who: p[(who, "good")] - p[(who, "bad")] for who in ("teacher", "same", "other")}

    deadline = time.monotonic() + 60
    round_ = 0
    while True:
        gap = gaps(round_)
        shared = gap["same"] > 0.3 and gap["other"] > 0.3
        if shared or time.monotonic() > deadline or sync_every == "0":
            break
        round_ += 1
        time.sleep(2)
    assert gap["teacher"] > 0.5, gap  # the teachers' own partition learned
    if sync_every == "0":
        # alone: the other partitions never saw "good" or "bad"
        assert abs(gap["same"]) < 0.05 and abs(gap["other"]) < 0.05, gap
    else:
        assert shared, (gap, first.log_tail(), second.log_tail())
