"""Standby replicas (``IMPORTANCE_STANDBY_REPLICAS=1``): when a worker is SIGKILLed, the
survivor takes its partitions over from its local standby copies, reading only the
changelog tail, and nothing is lost."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import produce
from tests.integration.events import synthetic_events
from tests.integration.restart_helpers import (
    TABLES,
    changelog_state,
    settled,
    stats,
    wait_live,
    within_an_hour,
)
from tests.integration.test_local_store import check_tables, wait_scored
from tests.integration.test_scaling import GROUP_KEYS, wait_for_split

pytestmark = pytest.mark.integration

STANDBY = {"IMPORTANCE_TABLE_STORE": "rocksdb", "IMPORTANCE_STANDBY_REPLICAS": "1"}


def test_standby_takes_over_after_sigkill_reading_only_the_tail(bootstrap, worker_factory):
    first = worker_factory(**STANDBY)
    second = worker_factory(**{k: first.env[k] for k in GROUP_KEYS if k in first.env}, **STANDBY)
    app_id = first.settings.app_id
    first.start()
    second.start()
    by_user = first.settings.topic_by_user
    wait_for_split(first, second, by_user, first.settings.partitions)
    wait_live(first.settings.web_port)
    wait_live(second.settings.web_port)

    events = within_an_hour(synthetic_events(6000, prefix="sb1"))
    produce(bootstrap, first.settings.topic_events, events, key=lambda _i, e: e["user_id"].encode())
    wait_scored(bootstrap, first, events)
    time.sleep(3)  # the standby copies follow the changelogs
    before = stats(second.settings.web_port)["tables"]
    standby = sum(before[t]["standby"] for t in TABLES)
    assert standby > 0, before

    first.kill()
    at_kill = changelog_state(bootstrap, app_id)
    total = sum(records for records, _live in at_kill.values())
    # the group notices within the session timeout (10 s); the survivor recovers
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = stats(second.settings.web_port)
        loaded = sum(body["tables"][t]["partitions_loaded"] for t in TABLES)
        if body["recovery"]["state"] == "live" and loaded > sum(
            before[t]["partitions_loaded"] for t in TABLES
        ):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no takeover: {second.log_tail()}")
    after = body["tables"]
    replayed = sum(after[t]["replayed"] - before[t]["replayed"] for t in TABLES)
    loaded = sum(after[t]["loaded"] - before[t]["loaded"] for t in TABLES)
    print(
        f"takeover: {loaded} records loaded from standby copies, {replayed} of {total} "
        f"changelog records read ({standby} standby records applied before the kill)"
    )
    assert loaded > 0
    assert replayed < total * 0.2, after

    # the survivor scores new events for every partition, and its tables are the
    # changelogs' live keys: nothing lost
    more = within_an_hour(synthetic_events(2000, seed=5, prefix="sb2"))
    produce(bootstrap, first.settings.topic_events, more, key=lambda _i, e: e["user_id"].encode())
    wait_scored(bootstrap, second, more)
    body = settled(second.settings.web_port)
    check_tables(body, changelog_state(bootstrap, app_id))
