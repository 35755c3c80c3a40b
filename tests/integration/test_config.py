"""``importance worker`` with nonsense settings, on a real broker: it exits at once with
code 78 and one line naming the variable, the value and what is allowed, before it
creates a topic or joins the consumer group. (Issue 9: with these values the old worker
reached "Ready", answered /healthz 200 and lost the events it consumed.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.integration

CASES = [
    ("IMPORTANCE_TARGET_KEEP_RATE", "2", "less than or equal to 1"),
    ("IMPORTANCE_MAX_PENDING_PER_USER", "-1", "greater than or equal to 1"),
    ("IMPORTANCE_SNAPSHOT_INTERVAL_S", "0", "greater than or equal to 0.1"),
    ("KAFKA_SASL_PASSWORD", "Secret-Never-Shown", "KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
]


@pytest.mark.parametrize(("name", "value", "words"), CASES, ids=[c[0] for c in CASES])
def test_worker_refuses_nonsense_settings_at_once(bootstrap, tmp_path, name, value, words):
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "IMPORTANCE_APP_ID": f"cfg-{suffix}",
        "IMPORTANCE_TOPIC_EVENTS": f"events-{suffix}",
        "IMPORTANCE_DATA_DIR": str(tmp_path / "worker"),
        name: value,
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 78, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert words in lines[0]
    if "PASSWORD" in name:  # named as KAFKA_SASL_*, its value never shown
        assert "KAFKA_SASL_" in lines[0] and value not in done.stderr + done.stdout
    else:
        assert f"{name}={value!r}" in lines[0]
    print(f"{name}={value}: exit 78 after {seconds:.1f} s: {lines[0]}")
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    assert f"events-{suffix}" not in topics and not any(
        t.startswith(f"cfg-{suffix}") for t in topics
    )
