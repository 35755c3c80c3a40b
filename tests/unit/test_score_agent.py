"""The score agent's snapshot restore, without a broker."""

from __future__ import annotations

import asyncio

import pytest

import agents.score as score
from models.state import StateError


def test_snapshot_read_is_retried_until_the_broker_answers(monkeypatch):
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Failed to get watermark offsets: Local: Unknown partition")
        return None  # no snapshot yet

    monkeypatch.setattr(score, "read_snapshot", flaky)
    monkeypatch.setattr(score, "SNAPSHOT_RETRY_MAX_S", 0.01)
    assert asyncio.run(score.read_snapshot_retrying(0)) is None
    assert len(calls) == 3


def test_unreadable_snapshot_is_not_retried(monkeypatch):
    calls: list[int] = []

    def corrupt(*args, **kwargs):
        calls.append(1)
        raise StateError("model-state part 'meta' is not JSON")

    monkeypatch.setattr(score, "read_snapshot", corrupt)
    with pytest.raises(StateError):
        asyncio.run(score.read_snapshot_retrying(0))
    assert len(calls) == 1
