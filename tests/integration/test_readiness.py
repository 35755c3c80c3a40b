"""Liveness and readiness apart: while a worker restores its tables from the changelogs
``/healthz`` answers 200 ``"recovering"`` and ``/readyz`` 503 ``"recovering"`` with the
records left; once recovered, ``/readyz`` answers 200 and the dashboard's JSON says
"live"."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.integration.conftest import produce
from tests.integration.events import synthetic_events
from tests.integration.restart_helpers import get_json, settled
from tests.integration.test_local_store import wait_scored

pytestmark = pytest.mark.integration


def test_readyz_503_while_recovering_then_200(bootstrap, worker_factory):
    # the memory store reads every changelog from the beginning at each start: enough
    # records to watch the recovery
    worker = worker_factory(IMPORTANCE_TABLE_STORE="memory")
    port = worker.settings.web_port
    worker.start()
    events = synthetic_events(8000, prefix="rd")
    produce(
        bootstrap, worker.settings.topic_events, events, key=lambda _i, e: e["user_id"].encode()
    )
    wait_scored(bootstrap, worker, events)
    worker.stop()

    with worker.log_path.open("ab") as log:
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app.worker", "worker", "--loglevel", "info"],
            env=worker.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    seen: list[tuple[int, str, int, str, int | None]] = []
    slowest = 0.0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.log_tail()
        try:
            asked = time.monotonic()
            ready_status, ready = get_json(port, "/readyz", timeout=20)
            live_status, live = get_json(port, "/healthz", timeout=20)
            slowest = max(slowest, time.monotonic() - asked)
        except OSError:
            time.sleep(0.05)
            continue
        seen.append(
            (
                ready_status,
                ready["status"],
                live_status,
                live["status"],
                ready["recovery"]["records_left"],
            )
        )
        if ready_status == 200:
            break
        time.sleep(0.05)
    recovering = [s for s in seen if s[1] == "recovering"]
    print(
        f"{len(seen)} probes, {len(recovering)} while recovering; first {recovering[:1]}; "
        f"slowest pair of answers {slowest:.2f} s"
    )
    assert seen and seen[-1][:2] == (200, "ready"), seen[-5:]
    assert recovering, f"recovery never observed: {seen[:10]}"
    for ready_status, _, live_status, live_text, left in recovering:
        assert ready_status == 503
        assert live_status == 200 and live_text == "recovering"
        assert left is not None and left >= 0
    assert any(s[4] > 0 for s in recovering), "records left reported during recovery"
    body = settled(port)
    assert body["recovery"]["state"] == "live"
    assert body["recovery"]["last_recovery_s"] is not None
