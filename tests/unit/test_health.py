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
    body, status = health_module.healthz_body()
    assert status == 503 and body["status"] == "starting"


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


def test_a_failed_worker_reports_it_until_it_exits(health_module):
    h = health_module
    h.record_check(True, now=100.0)
    assert h.healthz_body()[1] == 200
    h.health.failed = "5 consecutive events of partition 0 (scoring) failed"
    body, status = h.healthz_body()
    assert status == 503 and body["status"] == "failed"
    assert body["failed"].startswith("5 consecutive events")
