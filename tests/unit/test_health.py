"""Broker health bookkeeping and the log rate limit of agents/health.py."""

from __future__ import annotations

import logging

import pytest

from stream_app.metrics import Health


@pytest.fixture
def health_module(monkeypatch):
    import agents.health as module

    monkeypatch.setattr(module, "health", Health())
    return module


def test_outage_begins_and_ends(health_module, caplog):
    h = health_module
    with caplog.at_level(logging.INFO, logger="agents.health"):
        h.record_check(True, now=100.0)
        h.record_check(False, "KafkaError: unreachable", now=103.0)
        h.record_check(False, "KafkaError: unreachable", now=105.0)
        assert h.health.broker_connected is False
        assert h.health.broker_down_since == 100.0  # the last time it answered
        body, status = h.healthz_body()
        assert status == 503 and body["status"] == "broker_unreachable"
        h.record_check(True, now=110.5)
    assert h.health.broker_connected and h.health.broker_outages == 1
    assert h.health.last_outage_s == pytest.approx(10.5)
    assert h.health.last_broker_error == "KafkaError: unreachable"
    assert h.healthz_body()[1] == 200
    text = caplog.text
    assert (
        "Kafka broker unreachable" in text and "reachable again after an outage of 10.5 s" in text
    )


def test_status_before_the_first_check(health_module):
    """Alive (200) but not ready (503) before the first broker check."""
    body, status = health_module.healthz_body()
    assert status == 200 and body["status"] == "starting"
    body, status = health_module.readyz_body({"state": "starting"})
    assert status == 503 and body["status"] == "starting"


def test_recovering_worker_is_alive_but_not_ready(health_module):
    """While the tables are restored /healthz says 200 "recovering" (a liveness probe must
    not kill it) and /readyz 503 "recovering" with the progress; once live, 200 both."""
    h = health_module
    h.record_check(True, now=100.0)
    recovering = {"state": "recovering", "records_left": 5000, "estimated_s": 2.5}
    body, status = h.healthz_body(recovering)
    assert status == 200 and body["status"] == "recovering"
    body, status = h.readyz_body(recovering)
    assert status == 503 and body["status"] == "recovering"
    assert body["recovery"]["records_left"] == 5000 and body["recovery"]["estimated_s"] == 2.5
    live = {"state": "live", "records_left": 0}
    assert h.healthz_body(live)[1] == 200 and h.healthz_body(live)[0]["status"] == "ok"
    assert h.readyz_body(live)[1] == 200 and h.readyz_body(live)[0]["status"] == "ready"
    h.record_check(False, "KafkaError: unreachable", now=103.0)
    assert h.readyz_body(live)[0]["status"] == "broker_unreachable"
    assert h.readyz_body(live)[1] == 503 and h.healthz_body(live)[1] == 503


def test_rate_limit_filter_drops_repeats_and_counts_them():
    from agents.health import RateLimitFilter

    flt = RateLimitFilter(window=60.0)
    logger = logging.getLogger("test.health.ratelimit")
    records = [
        logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "Unable to connect %s", (i,), None
        )
        for i in range(5)
    ]
    passed = [flt.filter(r) for r in records]
    assert passed == [True, False, False, False, False]
    info = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "Unable to connect %s", (9,), None
    )
    assert flt.filter(info)  # below WARNING: never limited
    flt.window = 0.0
    last = logger.makeRecord(
        logger.name, logging.ERROR, __file__, 1, "Unable to connect %s", (7,), None
    )
    assert flt.filter(last)
    assert last.getMessage() == "Unable to connect 7 (and 4 similar messages in the last 0 s)"


@pytest.mark.parametrize(
    "order", [("agents.health", "stream_app.web.api"), ("stream_app.web.api", "agents.health")]
)
def test_healthz_is_registered_once_whatever_the_import_order(order):
    """Both modules used to register /healthz if the other had not: the first imported
    won, and with the API first the answer said nothing about the broker. Now only the
    API registers it, with the broker-aware body, in either order (fresh interpreters)."""
    import json
    import subprocess
    import sys

    script = f"""
import asyncio, importlib, json
for name in {list(order)!r}:
    importlib.import_module(name)
from aiohttp.test_utils import TestClient, TestServer
from stream_app.app import app
routes = [r.method for r in app.web.web_app.router.routes()
          if r.resource is not None and r.resource.canonical == "/healthz"]
async def main():
    async with TestClient(TestServer(app.web.web_app)) as client:
        response = await client.get("/healthz")
        return response.status, await response.json()
status, body = asyncio.run(main())
print(json.dumps({{"routes": routes, "status": status, "body": body}}))
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "IMPORTANCE_API_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(result["routes"]) == ["GET", "HEAD"]
    # no broker check has run in this process: alive, "starting"
    assert result["status"] == 200 and result["body"]["status"] == "starting", result
    assert {"broker_connected", "broker_outages", "checks", "uptime_s"} <= set(result["body"])


def test_a_failed_worker_reports_it_until_it_exits(health_module):
    h = health_module
    h.record_check(True, now=100.0)
    assert h.healthz_body()[1] == 200
    h.health.failed = "5 consecutive events of partition 0 (scoring) failed"
    body, status = h.healthz_body()
    assert status == 503 and body["status"] == "failed"
    assert body["failed"].startswith("5 consecutive events")
