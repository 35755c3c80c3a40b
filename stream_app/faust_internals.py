"""Every place the worker reaches into private parts of faust-streaming and aiokafka.

Each function here names what it reads and why; ``tests/unit/test_faust_internals.py``
checks every one against the installed versions and fails with a message naming the
function when an upgrade moved what it relies on.
"""

from __future__ import annotations

from typing import Any

from faust.types import TP

__all__ = [
    "actives_ready",
    "assigned_actives",
    "assigned_standbys",
    "recovery_in_progress",
    "recovery_remaining",
    "recovery_remaining_seconds",
    "recovery_service",
]


def assigned_standbys(app: Any) -> set[TP]:
    """The changelog partitions this worker keeps as standby replicas.

    ``app.assignor.assigned_standbys()`` (faust ``PartitionAssignor``): public method of
    an object the app does not document; empty before the first assignment."""
    return set(app.assignor.assigned_standbys())


def assigned_actives(app: Any) -> set[TP]:
    """The partitions (source topics and table changelogs) this worker owns as active.

    ``app.assignor.assigned_actives()`` (faust ``PartitionAssignor``), like
    :func:`assigned_standbys`."""
    return set(app.assignor.assigned_actives())


def recovery_service(app: Any) -> Any:
    """Faust's table recovery service: ``app.tables.recovery`` (a ``Recovery``; its
    attributes below are not documented API)."""
    return app.tables.recovery


def recovery_in_progress(app: Any) -> bool:
    """Whether Faust is restoring active table partitions from their changelogs
    (``Recovery.in_recovery``, set between the start of a recovery and the moment the
    active partitions reached their highwaters)."""
    return bool(recovery_service(app).in_recovery)


def recovery_remaining(app: Any) -> dict[TP, int]:
    """Changelog records still to read per active partition (``Recovery.active_remaining()``:
    highwater minus the offset read so far)."""
    remaining = recovery_service(app).active_remaining()
    return {tp: max(0, int(n)) for tp, n in remaining.items() if n is not None}


def recovery_remaining_seconds(app: Any, remaining: int) -> float | None:
    """Faust's own estimate of the seconds left (``Recovery._estimated_active_remaining_secs``,
    private: from the recent batch processing times; None until it has enough samples)."""
    estimate = recovery_service(app)._estimated_active_remaining_secs(remaining)
    return float(estimate) if estimate is not None else None


def actives_ready(app: Any) -> bool:
    """Whether the active table partitions are recovered and the streams resumed
    (``TableManager.actives_ready``: set by Faust's "Worker ready", cleared when a
    rebalance starts)."""
    return bool(app.tables.actives_ready)
