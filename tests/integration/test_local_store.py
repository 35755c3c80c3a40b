"""Local table store (``IMPORTANCE_TABLE_STORE=rocksdb``): a restart on the same machine
reads only the changelog tail; without the local store everything is recovered from the
changelogs. Either way the tables hold exactly the changelogs' live keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import consume_all, produce
from tests.integration.events import synthetic_events
from tests.integration.restart_helpers import (
    TABLES,
    changelog_state,
    settled,
    wait_live,
    within_an_hour,
)

pytestmark = pytest.mark.integration


def wait_scored(bootstrap: str, worker, events: list[dict]) -> None:
    """Wait until every event of ``events`` was scored."""
    wanted = {e["event_id"] for e in events}
    records = consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=lambda rs: wanted <= {r.get("event_id") for r in rs},
        timeout=180,
    )
    assert wanted <= {r.get("event_id") for r in records}, worker.log_tail()


def check_tables(body: dict, expected: dict[str, tuple[int, int]]) -> None:
    """The worker's tables hold the changelogs' live keys, table by table."""
    got = {t: body["tables"][t]["keys"] for t in TABLES}
    want = {t: live for t, (_records, live) in expected.items()}
    assert got == want


def table_counts(body: dict) -> tuple[int, int]:
    """Records the tables loaded from their local copies, and read from the changelogs."""
    tables = body["tables"]
    return sum(tables[t]["loaded"] for t in TABLES), sum(tables[t]["replayed"] for t in TABLES)


def test_restart_reads_only_the_tail_and_full_recovery_without_local_store(
    bootstrap, worker_factory
):
    worker = worker_factory(IMPORTANCE_TABLE_STORE="rocksdb")
    port = worker.settings.web_port
    app_id = worker.settings.app_id
    worker.start()
    first = wait_live(port)
    assert all(first["tables"][t]["store"] == "LocalStore" for t in TABLES)
    events = within_an_hour(synthetic_events(6000, prefix="ls1"))
    produce(
        bootstrap, worker.settings.topic_events, events, key=lambda _i, e: e["user_id"].encode()
    )
    # SIGKILL mid-stream: what the last moments delivered is not in the local copies yet
    consume_all(bootstrap, worker.settings.topic_scores, until=lambda rs: len(rs) >= 2500)
    worker.kill()
    killed_at = changelog_state(bootstrap, app_id)
    total = sum(records for records, _live in killed_at.values())
    worker.start()
    body = wait_live(port)
    loaded, replayed = table_counts(body)
    print(f"restart with local store: {loaded} loaded, {replayed} of {total} records replayed")
    assert loaded > 0
    # the tail is what reached the changelogs after the copies' last write before the
    # kill: a second or so of records, a share that depends on the machine's speed
    # (7-24 % seen); the copies must have spared most of the replay
    assert replayed < total * 0.5, body["tables"]
    wait_scored(bootstrap, worker, events)  # all scored (some twice: at least once)
    worker.stop()

    # a restart on an idle stream: the tables are exactly the changelogs' live keys
    worker.start()
    body = settled(port)
    check_tables(body, changelog_state(bootstrap, app_id))
    worker.stop()

    # the local store lost (another machine, a wiped disk): full recovery, nothing lost
    for path in Path(worker.settings.data_dir).rglob("*.rdb"):
        shutil.rmtree(path)
    expected = changelog_state(bootstrap, app_id)
    total = sum(records for records, _live in expected.values())
    worker.start()
    body = settled(port)
    loaded, replayed = table_counts(body)
    print(f"restart without local store: {loaded} loaded, {replayed} of {total} replayed")
    assert loaded == 0
    assert replayed >= total  # and what the worker read again and wrote since
    check_tables(body, changelog_state(bootstrap, app_id))
