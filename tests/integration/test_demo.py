"""``importance demo`` end to end, as on a fresh machine: no ``../shared`` data (the Open
Bandit sample comes from the obp wheel), the broker given by ``KAFKA_BOOTSTRAP_SERVERS``,
the worker started by the demo, every replayed event scored (under either processing
guarantee) by the time the demo says where to look."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from stream_app.bench.cluster import isolated_env
from tests.integration.conftest import consume_all, free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_demo_replays_demo_data_and_everything_is_scored(
    bootstrap: str, tmp_path: Path, guarantee: str
):
    env = isolated_env(
        bootstrap,
        tmp_path,
        prefix="demo",
        IMPORTANCE_TOPIC_ROLLING=f"rolling-{uuid.uuid4().hex[:8]}",
        IMPORTANCE_WEB_PORT=str(free_port()),
        IMPORTANCE_SHARED_DATA=str(tmp_path / "no-shared-data"),
        IMPORTANCE_PROCESSING_GUARANTEE=guarantee,
        # the download cache stays the project's own (.cache/data, or IMPORTANCE_CACHE_DIR)
    )
    scores_topic = env["IMPORTANCE_TOPIC_SCORES"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_app.cli",
            "demo",
            "--limit",
            "3000",
            "--rate",
            "3000",
            "--no-keep-running",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0 and "obp" in result.stderr and "pip" in result.stderr:
        pytest.skip(f"the obp wheel could not be downloaded: {result.stderr[-500:]}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert "open_bandit" in out and "(open-bandit)" in out, out  # not the shared Taobao slice
    assert "replayed 3000 events" in out, out
    assert "Where to look:" in out and scores_topic in out
    assert "/api/stats" in out and "importance tail" in out
    # the demo counted all 3,000 scores (committed ones, with exactly_once) before it
    # said where to look; none is there twice
    assert "so far" not in out, out
    scores = consume_all(bootstrap, scores_topic, until=lambda records: False, timeout=5)
    assert len({r["event_id"] for r in scores}) == len(scores) == 3000
    assert all(0.0 <= r["importance"] <= 1.0 for r in scores)
    log = (Path(env["IMPORTANCE_DATA_DIR"]) / "demo-worker.log").read_text(errors="replace")
    assert "Worker ready" in log
