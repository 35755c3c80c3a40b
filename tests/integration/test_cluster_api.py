"""Top lists over a group of two workers: each worker's own share (``scope=local``) and
the merged answer (``scope=cluster``, the default) that any worker gives; per-user top
items answered by whichever worker is asked. Open (no token, no peer secret: unsigned
peer requests) and secured (API token and peer secret: signed requests and answers)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.events import synthetic_events
from tests.integration.test_api import expected_user_items, get_json, wait_for
from tests.integration.test_scaling import GROUP_KEYS, wait_for_split

pytestmark = pytest.mark.integration


SECURED = {
    "IMPORTANCE_API_TOKEN": "cluster-token-1",
    "IMPORTANCE_PEER_SECRET": "cluster-peers-0123",
}


@pytest.mark.parametrize("mode", ["open", "secured"])
def test_top_lists_merge_every_workers_share(bootstrap, worker_factory, mode):
    from tests.integration.conftest import consume_all, produce

    extra = SECURED if mode == "secured" else {}
    token = extra.get("IMPORTANCE_API_TOKEN")
    first = worker_factory(IMPORTANCE_PARTITIONS="4", **extra)
    second = worker_factory(**{k: first.env[k] for k in GROUP_KEYS if k in first.env}, **extra)
    first.start()
    second.start()
    wait_for_split(first, second, f"{first.settings.app_id}-rolling-by-item", 4)

    # about 37 minutes of event time: every event lies in the 1-hour window
    events = synthetic_events(1_500, prefix="cluster")
    produce(bootstrap, first.settings.topic_events, events, key=lambda i, e: e["user_id"].encode())
    expected = {e["event_id"] for e in events}
    records = consume_all(
        bootstrap,
        first.settings.topic_scores,
        until=lambda recs: expected <= {r["event_id"] for r in recs},
        timeout=180,
    )
    counts = Counter(e["item_id"] for e in events)
    ports = (first.settings.web_port, second.settings.web_port)
    query = "window=1h&k=100&by=events"

    def in_window(start: float, end: float) -> Counter:
        return Counter(r["item_id"] for r in records if start <= r["ts"] < end)

    def bounds(shares: list[dict]) -> tuple[Counter, Counter]:
        """Direct counts of each item's events that every worker's window holds (lower
        bound) and that some worker's window holds (upper bound): each worker's window
        ends at its own table's event-time clock, which lags the latest events."""
        starts = [s["window_start"] for s in shares]
        ends = [s["window_end"] for s in shares]
        return in_window(max(starts), min(ends)), in_window(min(starts), max(ends))

    def settled():
        shares = [get_json(port, f"/api/top/items?{query}&scope=local", token)[1] for port in ports]
        if any(s["window_start"] is None for s in shares):
            return None
        lower, _ = bounds(shares)
        entities = sum(s["entities"] for s in shares)
        # every item counted once, on one worker, once the clocks have moved past most of
        # the replay (the top 100 do not list every item: compare the entity counts)
        return shares if entities >= len(lower) > 0.9 * len(counts) else None

    shares = wait_for(settled, timeout=180, what="both workers' item tables")
    local_ids = [{row["id"] for row in share["top"]} for share in shares]
    assert local_ids[0] and local_ids[1] and not local_ids[0] & local_ids[1]

    for port in ports:
        status, merged = get_json(port, f"/api/top/items?{query}", token)
        assert status == 200
        assert merged["scope"] == "cluster" and merged["partial"] is False, merged["workers"]
        assert len(merged["workers"]) == 2
        # with the peer secret the other worker's share is signed and checked
        assert [w["verified"] for w in merged["workers"]] == [True, mode == "secured"]
        assert merged["entities"] == sum(share["entities"] for share in shares)
        # the merged top 100 is the top 100 of the workers' disjoint top-100 lists...
        union = [(row["id"], row["events"]) for share in shares for row in share["top"]]
        top = sorted(union, key=lambda kv: (-kv[1], kv[0]))[:100]
        assert [(row["id"], row["events"]) for row in merged["top"]] == top
        # ...and each item's count is what the score records say for the windows
        lower, upper = bounds(shares)
        assert all(lower[row["id"]] <= row["events"] <= upper[row["id"]] for row in merged["top"])
        assert sum(row["events"] for row in merged["top"]) >= sum(
            n for _, n in sorted(lower.items(), key=lambda kv: -kv[1])[:100]
        )

    # each user's top items live on the owner of the user's partition; either worker
    # answers (routing to the owner), the same, and as the score records say
    users = sorted({r["user_id"] for r in records})[:20]
    for user in users:
        want = expected_user_items(records, user)[:5]
        docs = [get_json(port, f"/api/users/{user}/top-items?k=5", token) for port in ports]
        assert [status for status, _ in docs] == [200, 200], (user, docs)
        got = [[row["item_id"] for row in doc["items"]] for _, doc in docs]
        assert got[0] == got[1] == [item for item, _ in want], (user, got, want)

    # a worker that died (SIGKILL: the group notices only after its 10 s session timeout,
    # so the assignment still names it): the answer says so instead of failing
    second.kill()
    status, alone = get_json(first.settings.web_port, f"/api/top/items?{query}", token)
    assert status == 200
    assert len(alone["workers"]) == 2 and alone["partial"] is True
    assert [w["url"] for w in alone["workers"] if "error" in w] == [
        f"http://127.0.0.1:{second.settings.web_port}"
    ]
    assert alone["top"] and {r["id"] for r in alone["top"]} <= local_ids[0] | local_ids[1]
    # and the users it owned get a 502 that says which worker did not answer
    statuses = [
        get_json(first.settings.web_port, f"/api/users/{user}/top-items?k=5", token)
        for user in users
    ]
    assert {status for status, _ in statuses} == {200, 502}, statuses
    assert all(
        doc["error"] == "bad_gateway" and str(second.settings.web_port) in doc["detail"]
        for status, doc in statuses
        if status == 502
    )
