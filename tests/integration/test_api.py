"""The worker's HTTP API against a real broker: rolling top lists checked against a direct
computation over the score records, parameter errors, the bearer token, /metrics,
/healthz and the ``importance-rolling`` topic."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.clock import EventClock
from tests.integration.conftest import consume_all, produce
from tests.integration.events import synthetic_events

pytestmark = pytest.mark.integration

N_EVENTS = 3000
STEP = 60.0
WINDOWS = {"5m": 300.0, "1h": 3600.0}
HALF_LIFE_S = 1800.0


def http(port: int, path: str, token: str | None = None, timeout: float = 10.0):
    """``(status, headers, body bytes)`` of a GET on the worker."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    status, headers, body = http(port, path, token)
    assert headers.get("Content-Type", "").startswith("application/json"), (path, headers)
    return status, json.loads(body)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.5, what: str = ""):
    """Call ``predicate`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")


def clocks_after(records: list[dict]) -> list[float]:
    """The partition's event-time clock after each record (records of one partition in
    the order the worker scored them), as models/clock.py defines it with the default
    settings: the 32nd latest time among the partition's last 128 users."""
    clocks: dict[int, EventClock] = {}
    out = []
    for r in records:
        clock = clocks.setdefault(r["partition"], EventClock())
        clock.observe(r["user_id"], r["ts"])
        out.append(clock.time)
    return out


def expected_top(
    records: list[dict], entity: str, window: str, k: int, training: list[dict]
) -> list[dict]:
    """Top k of ``entity`` over the window that ends with the pane of the table's
    event-time clock: the largest clock that came with a record that has this entity
    (each entity's table keeps its own clock; never the latest ``ts``). ``kept``: the
    training records (examples kept at label time) of the window's events."""
    field = {"item": "item_id", "category": "category_id", "user": "user_id"}[entity]
    now = max(
        clock
        for r, clock in zip(records, clocks_after(records), strict=True)
        if r.get(field) is not None
    )
    end = math.floor(now / STEP) * STEP + STEP
    start = end - WINDOWS[window]
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0.0])
    for r in records:
        if r.get(field) is None or not start <= r["ts"] < end:
            continue
        t = totals[str(r[field])]
        t[0] += 1
        t[1] += r["importance"]
        t[3] += r["p"]
    for r in training:
        if r.get(field) is not None and start <= r["ts"] < end and str(r[field]) in totals:
            totals[str(r[field])][2] += 1
    ranked = sorted(totals.items(), key=lambda kv: (-round(kv[1][1], 9), kv[0]))[:k]
    return [
        {"id": key, "events": n, "importance": imp, "kept": kept, "p_mean": p / n}
        for key, (n, imp, kept, p) in ranked
    ]


def same_top(got: dict, expected: list[dict]) -> bool:
    rows = got.get("top", [])
    if [(r["id"], r["events"], r["kept"]) for r in rows] != [
        (e["id"], e["events"], e["kept"]) for e in expected
    ]:
        return False
    return all(
        math.isclose(r["importance"], e["importance"], abs_tol=1e-5)
        and math.isclose(r["p_mean"], e["p_mean"], abs_tol=1e-5)
        for r, e in zip(rows, expected, strict=True)
    )


def expected_user_items(records: list[dict], user: str) -> list[tuple[str, float]]:
    mine = [r for r in records if r["user_id"] == user]
    latest = max(r["ts"] for r in mine)
    scores: dict[str, float] = defaultdict(float)
    for r in mine:
        scores[r["item_id"]] += r["importance"] * 0.5 ** ((latest - r["ts"]) / HALF_LIFE_S)
    return sorted(scores.items(), key=lambda kv: (-round(kv[1], 9), kv[0]))


def with_categories(events: list[dict]) -> list[dict]:
    """Give conversions (which the synthetic generator leaves without one) the category
    of their item, as a real catalogue would."""
    category = {e["item_id"]: e["category_id"] for e in events if "category_id" in e}
    return [
        {**e, "category_id": category[e["item_id"]]}
        if "category_id" not in e and e["item_id"] in category
        else e
        for e in events
    ]


@pytest.fixture(scope="module")
def fed_worker(bootstrap, tmp_path_factory):
    """One worker fed with synthetic events; its score records, read back from Kafka."""
    from tests.integration.conftest import worker_factory

    factory = worker_factory.__wrapped__(bootstrap, tmp_path_factory.mktemp("api"))
    make = next(factory)
    worker = make(IMPORTANCE_ROLLING_PUBLISH_S="1")
    worker.start()
    events = with_categories(synthetic_events(N_EVENTS, prefix="api"))
    produce(bootstrap, worker.settings.topic_events, events, key=lambda i, e: e["user_id"].encode())
    expected_ids = {e["event_id"] for e in events}
    records = consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=lambda rs: expected_ids <= {r["event_id"] for r in rs},
        timeout=180,
    )
    got = {r["event_id"] for r in records}
    assert expected_ids <= got, f"{len(expected_ids - got)} never scored\n{worker.log_tail()}"
    # at-least-once: a record may repeat after a crash; none happens here, keep one each
    unique = list({r["event_id"]: r for r in records}.values())
    assert len(unique) == len(records)
    yield worker, unique
    next(factory, None)  # stops the worker


@pytest.fixture(scope="module")
def fed_training(fed_worker, bootstrap):
    """The training records of the fed worker (the examples it kept at label time)."""
    worker, _ = fed_worker
    # every event is scored: the count of training records is final
    _, stats = get_json(worker.settings.web_port, "/api/stats")
    n = stats["totals"]["training_samples"]
    training = consume_all(
        bootstrap, worker.settings.topic_training, until=lambda rs: len(rs) >= n, timeout=60
    )
    assert len(training) == n > 0
    return training


@pytest.mark.parametrize(
    ("entity", "path", "window"),
    [
        ("item", "items", "5m"),
        ("item", "items", "1h"),
        ("category", "categories", "5m"),
        ("category", "categories", "1h"),
        ("user", "users", "1h"),
    ],
)
def test_top_lists_match_the_score_records(fed_worker, fed_training, entity, path, window):
    worker, records = fed_worker
    port = worker.settings.web_port
    k = 20
    expected = expected_top(records, entity, window, k, fed_training)
    assert expected, "the synthetic replay should fill the window"

    def matches():
        status, doc = get_json(port, f"/api/top/{path}?window={window}&k={k}")
        assert status == 200, doc
        return doc if same_top(doc, expected) else None

    try:
        doc = wait_for(matches, timeout=180, what=f"top {path} {window}")
    except AssertionError:
        _, doc = get_json(port, f"/api/top/{path}?window={window}&k={k}")
        pytest.fail(
            f"API top {path}/{window}:\n{doc['top'][:5]}\nexpected:\n{expected[:5]}\n"
            f"{worker.log_tail(20)}"
        )
    assert doc["entity"] == entity and doc["window"] == window and doc["k"] == k
    assert doc["window_end"] - doc["window_start"] == WINDOWS[window]
    assert doc["window_start"] <= doc["now"] < doc["window_end"]
    for row in doc["top"]:
        assert math.isclose(row["mean_importance"], row["importance"] / row["events"], abs_tol=1e-5)


def test_user_top_items_match_the_score_records(fed_worker):
    worker, records = fed_worker
    port = worker.settings.web_port
    per_user = defaultdict(int)
    for r in records:
        per_user[r["user_id"]] += 1
    users = sorted(per_user, key=lambda u: (-per_user[u], u))[:3]
    for user in users:
        expected = expected_user_items(records, user)[:5]

        def matches(user=user, expected=expected):
            status, doc = get_json(port, f"/api/users/{user}/top-items?k=5")
            assert status == 200, doc
            got = [(row["item_id"], row["score"]) for row in doc["items"]]
            ok = [i for i, _ in got] == [i for i, _ in expected] and all(
                math.isclose(a, b, abs_tol=1e-5)
                for (_, a), (_, b) in zip(got, expected, strict=True)
            )
            return doc if ok else None

        doc = wait_for(matches, timeout=180, what=f"top items of {user}")
        assert doc["user_id"] == user and doc["half_life_s"] == HALF_LIFE_S
        assert doc["as_of"] == max(r["ts"] for r in records if r["user_id"] == user)


def test_stats_count_what_was_processed(fed_worker, fed_training):
    worker, _ = fed_worker
    port = worker.settings.web_port
    status, stats = get_json(port, "/api/stats?history=30")
    assert status == 200
    assert stats["totals"]["events_in"] == N_EVENTS
    assert stats["totals"]["scored"] == N_EVENTS
    assert stats["totals"]["dlq"] == 0
    # kept: the labelled examples kept at label time, each published once
    totals = stats["totals"]
    assert totals["kept"] == totals["training_samples"] == len(fed_training)
    assert totals["decided_positive"] == sum(r["label"] for r in fed_training)  # all kept
    assert totals["decided"] > totals["kept"]
    assert stats["keep_rate"] == pytest.approx(totals["kept"] / totals["decided"], abs=1e-6)
    assert stats["model"]["updates"] > 0
    assert sorted(stats["model"]["partitions"]) == [0, 1, 2, 3]
    prog = stats["progressive"]
    assert prog["n"] > 100 and 0 < prog["positives"] < prog["n"]
    assert 0.0 <= prog["auc"] <= 1.0 and prog["log_loss"] > 0
    assert stats["importance_histogram"]["n"] == N_EVENTS
    assert sum(stats["importance_histogram"]["counts"]) == N_EVENTS
    assert set(stats["rates"]) == {"events_in_per_s", "scored_per_s", "dlq_per_s", "kept_per_s"}
    assert stats["lag"]["total"] >= 0
    assert 1 <= len(stats["history"]) <= 30
    sample = stats["history"][-1]
    assert {"t", "events_in_per_s", "scored_per_s", "dlq_per_s", "keep_rate", "lag", "auc"} <= set(
        sample
    )


def test_bad_parameters_get_400_and_unknown_ids_nothing(fed_worker):
    worker, _ = fed_worker
    port = worker.settings.web_port
    for path in (
        "/api/top/items?k=0",
        "/api/top/items?k=101",
        "/api/top/items?k=abc",
        "/api/top/items?k=1.5",
        "/api/top/items?window=7m",
        "/api/top/items?by=price",
        "/api/top/brands",
        "/api/stats?history=-1",
        "/api/stats?history=many",
        "/api/users/u1/top-items?k=-3",
        "/api/users/" + "x" * 300 + "/top-items",
    ):
        status, doc = get_json(port, path)
        assert status == 400, (path, status, doc)
        assert doc["error"] == "bad_request" and doc["detail"], doc
    status, doc = get_json(port, "/api/users/nobody-like-this/top-items")
    assert status == 200 and doc["items"] == [] and doc["as_of"] is None
    status, doc = get_json(port, "/api/users/%E2%9C%93%20%2F%20x/top-items?k=3")
    assert status == 200 and doc["items"] == []


def test_metrics_healthz_and_openapi(fed_worker):
    worker, _ = fed_worker
    port = worker.settings.web_port
    status, headers, body = http(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    scored = families["importance_scored"].samples
    assert [s.value for s in scored if s.name == "importance_scored_total"] == [N_EVENTS]
    assert any(name.startswith("faust_") for name in families), sorted(families)[:20]
    assert "importance_consumer_lag" in families and "importance_progressive_auc" in families

    status, doc = wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(get_json(port, "/healthz")),
        timeout=30,
        what="/healthz 200",
    )
    assert doc["status"] == "ok"

    status, spec = get_json(port, "/api/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {
        "/api/top/{entity}",
        "/api/users/{user_id}/top-items",
        "/api/stats",
        "/metrics",
        "/healthz",
        "/dashboard",
    } <= set(spec["paths"])
    assert not any(p.startswith(("/router", "/table")) for p in spec["paths"])
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "peer"}
    assert {"502", "503"} <= set(
        spec["paths"]["/api/users/{user_id}/top-items"]["get"]["responses"]
    )
    for path in ("/", "/dashboard"):
        status, headers, body = http(port, path)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"/static/uPlot.iife.min.js" in body
    for asset in ("uPlot.iife.min.js", "uPlot.min.css", "dashboard.js", "dashboard.css"):
        status, _, body = http(port, f"/static/{asset}")
        assert status == 200 and body


def test_rolling_topic_records_add_up(fed_worker, bootstrap):
    """The last record published per entity, id and window counts the score records of
    that id inside its window."""
    worker, records = fed_worker
    field = {"item": "item_id", "category": "category_id", "user": "user_id"}
    ts_by_id: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        for entity, name in field.items():
            if r.get(name) is not None:
                ts_by_id[entity, str(r[name])].append(r["ts"])

    def complete(rs: list[dict]) -> bool:
        last = {(r["entity"], r["id"], r["window"]): r for r in rs}
        return len(last) >= len(ts_by_id) * len(WINDOWS) and all(
            r["events"]
            == sum(r["window_start"] <= t < r["window_end"] for t in ts_by_id[r["entity"], r["id"]])
            for r in last.values()
        )

    published = consume_all(bootstrap, worker.settings.topic_rolling, until=complete, timeout=180)
    last = {(r["entity"], r["id"], r["window"]): r for r in published}
    assert complete(published), f"{len(last)} of {len(ts_by_id) * len(WINDOWS)} keys"
    sample = next(iter(last.values()))
    assert {
        "entity",
        "id",
        "window_start",
        "window_end",
        "events",
        "mean_importance",
        "kept",
        "p_mean",
    } <= set(sample)
    assert all(r["_key"] == r["id"].encode() for r in published)


def test_bearer_token(worker_factory):
    token = "s3cret-token"
    worker = worker_factory(IMPORTANCE_API_TOKEN=token)
    worker.start()
    port = worker.settings.web_port
    assert token not in repr(worker.settings)
    for path in ("/api/stats", "/api/top/items", "/api/users/u1/top-items", "/metrics", "/"):
        status, headers, body = http(port, path)
        assert status == 401, path
        assert json.loads(body)["error"] == "unauthorized"
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert http(port, path, token="wrong")[0] == 401
        assert http(port, path, token=token)[0] == 200, path
    assert http(port, f"/dashboard?token={token}")[0] == 200
    assert http(port, f"/api/stats?token={token}")[0] == 401  # the query is for the page only
    assert http(port, "/static/dashboard.js")[0] == 200
    assert http(port, "/healthz")[0] in (200, 503)  # liveness needs no token


def test_rolling_state_survives_a_restart(bootstrap, worker_factory):
    """The pane tables and per-user top items come back from their changelogs."""
    worker = worker_factory()
    worker.start()
    port = worker.settings.web_port
    events = with_categories(synthetic_events(1500, prefix="restart"))
    produce(bootstrap, worker.settings.topic_events, events, key=lambda i, e: e["user_id"].encode())
    ids = {e["event_id"] for e in events}
    records = consume_all(
        bootstrap,
        worker.settings.topic_scores,
        until=lambda rs: ids <= {r["event_id"] for r in rs},
        timeout=180,
    )
    _, stats = get_json(port, "/api/stats")  # every event scored: the count is final
    n = stats["totals"]["training_samples"]
    training = consume_all(
        bootstrap, worker.settings.topic_training, until=lambda rs: len(rs) >= n, timeout=60
    )
    expected = {
        (entity, window): expected_top(records, entity, window, 10, training)
        for entity in ("item", "category")
        for window in WINDOWS
    }
    path = {"item": "items", "category": "categories"}

    def all_match():
        return all(
            same_top(get_json(port, f"/api/top/{path[e]}?window={w}&k=10")[1], rows)
            for (e, w), rows in expected.items()
        )

    wait_for(all_match, timeout=180, what="top lists before the restart")
    user = records[-1]["user_id"]
    before = get_json(port, f"/api/users/{user}/top-items?k=10")[1]
    assert before["items"]

    worker.stop()
    worker.start()
    port = worker.settings.web_port
    wait_for(all_match, timeout=180, what="top lists after the restart")
    after = get_json(port, f"/api/users/{user}/top-items?k=10")[1]
    assert after["items"] == before["items"]
    assert after["as_of"] == before["as_of"]
