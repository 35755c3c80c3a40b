"""Test-only entry point: the real worker, with a processing failure injected.

``python -m tests.integration.failing_worker worker ...`` runs
:func:`stream_app.worker.run_worker` after patching, according to ``TEST_FAIL_MODE``:

* ``poison``: scoring an event whose ``item_id`` is ``"poison"`` raises;
* ``systemic``: scoring any event raises (a broken dependency, say);
* ``agent``: the decode agent fails outside the handling of one event (its offset
  guard raises) once it has handled ``TEST_FAIL_AFTER`` messages.

Nothing of this is in the product: the worker it runs is the real one.
"""

from __future__ import annotations

import os
import sys

MODE = os.environ.get("TEST_FAIL_MODE", "")
AFTER = int(os.environ.get("TEST_FAIL_AFTER", "0"))


class InjectedFailure(RuntimeError):
    """The failure this entry point injects."""


def _patch() -> None:
    from models.engine import ImportanceEngine

    score = ImportanceEngine.score

    def failing_score(self, ev):
        if MODE == "systemic" or (MODE == "poison" and ev.item_id == "poison"):
            raise InjectedFailure(f"injected failure scoring {ev.event_id}")
        return score(self, ev)

    ImportanceEngine.score = failing_score
    if MODE == "agent":
        from stream_app.offset_guard import OffsetGuard

        missed = OffsetGuard.missed
        seen = {"n": 0}

        async def failing_missed(self, partition, offset):
            seen["n"] += 1
            if seen["n"] > AFTER and self.topic == os.environ["IMPORTANCE_TOPIC_EVENTS"]:
                raise InjectedFailure("injected failure outside the handling of an event")
            return await missed(self, partition, offset)

        OffsetGuard.missed = failing_missed


if __name__ == "__main__":
    _patch()
    from stream_app.worker import run_worker

    run_worker(sys.argv[1:])
