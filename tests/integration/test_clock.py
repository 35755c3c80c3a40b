"""Event time on a real broker: far-future events of a few users must not close the
attribution windows of everyone else in their partitions, nor move the rolling window the
API answers for (issue 9, item 2)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from stream_app.output import partition_for
from tests.integration.conftest import consume_all, produce

pytestmark = pytest.mark.integration

#: 2017-11-26, inside the Taobao slice's days: historical data replayed today
T0 = 1_511_658_000.0
BACKGROUND = 200
VICTIMS = 12
ATTACKERS = 40


def api(worker, path: str):
    url = f"http://127.0.0.1:{worker.settings.web_port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def scored(bootstrap, worker, ids: set[str]) -> dict[str, dict]:
    records = consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=lambda rs: ids <= {r["event_id"] for r in rs},
        timeout=120,
    )
    by_id = {r["event_id"]: r for r in records}
    assert ids <= by_id.keys(), f"{len(ids - by_id.keys())} never scored\n{worker.log_tail()}"
    return by_id


def rolled_items(bootstrap, worker, items: set[str]) -> None:
    """Wait until the item table published every item of ``items`` (it publishes what it
    received, as of each item's own latest event)."""

    def published(records):
        return items <= {r["id"] for r in records if r["entity"] == "item"}

    records = consume_all(bootstrap, worker.settings.topic_rolling, until=published, timeout=60)
    assert published(records), f"rolling never published {items}\n{worker.log_tail()}"


def test_far_future_events_do_not_close_other_users_windows(bootstrap, worker_factory):
    """12 views at 2017 event times, 40 valid events of other users at now + 20 h, then
    the 12 users' carts 60 s after their views: the views come out as positives
    (``converted``), no other exposure is closed, and ``/api/top/items`` still answers for
    the 2017 window, without the attacker's item."""
    partitions = 4
    worker = worker_factory(IMPORTANCE_TARGET_KEEP_RATE="1", IMPORTANCE_PARTITIONS=str(partitions))
    victims = [f"victim-{i}" for i in range(VICTIMS)]
    attackers = [f"attacker-{i}" for i in range(ATTACKERS)]
    # the scenario needs victims and attackers side by side in every partition
    for group, least in ((victims, 1), (attackers, 5)):
        counts = [0] * partitions
        for user in group:
            counts[partition_for(user.encode(), partitions)] += 1
        assert min(counts) >= least, counts
    worker.start()
    by_user = lambda i, e: e["user_id"].encode()  # noqa: E731

    background = [
        {
            "event_id": f"bg-{i}",
            "user_id": f"bg-{i}",
            "item_id": f"bg-item-{i % 20}",
            "type": "view",
            "ts": T0 + i * 0.5,
        }
        for i in range(BACKGROUND)
    ]
    views = [
        {
            "event_id": f"view-{i}",
            "user_id": user,
            "item_id": f"victim-item-{i}",
            "type": "view",
            "ts": T0 + 100 + i,
        }
        for i, user in enumerate(victims)
    ]
    produce(bootstrap, worker.settings.topic_events, background + views, key=by_user)
    records = scored(bootstrap, worker, {e["event_id"] for e in background + views})
    assert api(worker, "/api/stats")["totals"]["labels_resolved"] == 0
    rolled_items(bootstrap, worker, {e["item_id"] for e in background + views})

    future = time.time() + 20 * 3600  # valid: up to a day ahead is accepted
    attack = [
        {
            "event_id": f"attack-{i}",
            "user_id": user,
            "item_id": "attacker-item",
            "type": "view",
            "ts": future + i,
        }
        for i, user in enumerate(attackers)
    ]
    produce(bootstrap, worker.settings.topic_events, attack, key=by_user)
    scored(bootstrap, worker, {e["event_id"] for e in attack})
    # nothing of anyone else was resolved by the attacker's timestamps
    assert api(worker, "/api/stats")["totals"]["labels_resolved"] == 0

    # the attacker's events reached the item table (their own future pane) ...
    rolled_items(bootstrap, worker, {"attacker-item"})
    # ... but the window the API answers for is still the 2017 one
    top = api(worker, "/api/top/items?window=1h&k=100")
    ids = [row["id"] for row in top["top"]]
    assert "attacker-item" not in ids, top
    assert {f"bg-item-{i}" for i in range(20)} <= set(ids), top
    assert top["now"] < T0 + 86400, top

    carts = [
        {
            "event_id": f"cart-{i}",
            "user_id": user,
            "item_id": f"victim-item-{i}",
            "type": "cart",
            "ts": T0 + 100 + i + 60,
        }
        for i, user in enumerate(victims)
    ]
    produce(bootstrap, worker.settings.topic_events, carts, key=by_user)
    scored(bootstrap, worker, {e["event_id"] for e in carts})
    kept = {v["event_id"] for v in views}  # positives: every one is kept
    assert kept <= records.keys()
    training = consume_all(
        bootstrap,
        worker.settings.topic_training,
        until=lambda rs: kept <= {r["event_id"] for r in rs},
        timeout=60,
    )
    sources = {r["event_id"]: r["label_source"] for r in training if r["event_id"] in kept}
    assert sources == dict.fromkeys(kept, "converted"), sources
    assert all(r["label"] == 1 for r in training if r["event_id"] in kept)
    # exactly the 12 views were resolved, by their carts
    assert api(worker, "/api/stats")["totals"]["labels_resolved"] == VICTIMS
    assert "Traceback" not in worker.log_text()
