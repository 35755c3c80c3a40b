"""JSON API, Prometheus metrics and the live dashboard on the worker's Faust web server.

Routes (described in ``stream_app/web/openapi.json``, served at ``/api/openapi.json``):

* ``GET /`` and ``/dashboard`` — the dashboard page; ``/static/…`` its script, styles and
  chart library (no CDN: it works offline);
* ``GET /api/top/{items|categories|users}?window=5m&k=20&by=importance`` — the most
  important entities of the rolling window that ends now (event time);
* ``GET /api/users/{user_id}/top-items?k=20`` — the items whose events for this user
  carried the most importance recently; answered by the worker that owns the user's
  partition (Faust ``table_route`` forwards the request there);
* ``GET /api/stats`` — counters, rates, consumer lag, model updates, progressive AUC and
  log-loss, the importance histogram and (``?history=N``) the last N one-second samples;
* ``GET /metrics`` — Prometheus text: Faust's sensor plus the service's own counters;
* ``GET /healthz`` — liveness (never needs the token).

Bad parameters get a 400 with ``{"error": ..., "detail": ...}``, unknown ids an empty
result. When ``IMPORTANCE_API_TOKEN`` is set every route but ``/healthz`` and
``/static/`` needs ``Authorization: Bearer <token>`` (401 otherwise); the dashboard page
also takes it as ``?token=`` and sends it as that header from JavaScript.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections import deque
from itertools import pairwise
from typing import Any

import orjson
from aiohttp import web as aioweb
from faust import web
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import agents.rolling as rolling
from models.rolling import RANK_BY, merge_top, top_k, user_top_items
from stream_app.app import app, settings
from stream_app.metrics import counters, progressive
from stream_app.web import OPENAPI_PATH, STATIC_DIR

__all__ = ["BadRequest", "consumer_lag", "stats_document"]

log = logging.getLogger(__name__)

#: one-second samples of the counters, for rates and the dashboard's time series
SAMPLES: deque[dict[str, Any]] = deque(maxlen=900)
#: seconds over which /api/stats computes its rates
RATE_WINDOW_S = 5.0
MAX_K = 100
MAX_HISTORY = SAMPLES.maxlen or 900
#: entity names in URLs → the rolling tables' entity names
ENTITY_PATHS = {"items": "item", "categories": "category", "users": "user"}
PUBLIC_PATHS = {"/healthz"}
PUBLIC_PREFIXES = ("/static/",)
PAGE_PATHS = {"/", "/dashboard"}
MAX_ID_LENGTH = 256


class BadRequest(Exception):
    """A request parameter is missing or invalid (HTTP 400)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _json_response(body: Any, status: int = 200, headers: dict | None = None) -> aioweb.Response:
    return aioweb.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def int_param(query: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def choice_param(query: Any, name: str, default: str, choices: Any) -> str:
    raw = query.get(name, default)
    if raw not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


@aioweb.middleware
async def guard(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
    """Bearer-token check (when configured) and JSON errors instead of a 500."""
    token = settings.api_token
    path = request.path
    if token and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
        given = _bearer(request.headers.get("Authorization"))
        if given is None and path in PAGE_PATHS:
            given = request.query.get("token")
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            return _json_response(
                {"error": "unauthorized", "detail": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="importance-stream"'},
            )
    try:
        return await handler(request)
    except BadRequest as exc:
        return _json_response({"error": "bad_request", "detail": exc.detail}, status=400)
    except (aioweb.HTTPException, asyncio.CancelledError):
        raise
    except Exception as exc:
        log.exception("web: %s %s failed", request.method, path)
        return _json_response(
            {"error": "unavailable", "detail": f"{type(exc).__name__}: {exc}"}, status=503
        )


# -- dashboard and static files ---------------------------------------------------------
def _page() -> bytes:
    return (STATIC_DIR / "dashboard.html").read_bytes()


@app.page("/")
class Index(web.View):
    """The dashboard."""

    async def get(self, request: web.Request) -> web.Response:
        return self.bytes(_page(), content_type="text/html")


@app.page("/dashboard")
class Dashboard(web.View):
    """The dashboard."""

    async def get(self, request: web.Request) -> web.Response:
        return self.bytes(_page(), content_type="text/html")


app.web.add_static("/static/", STATIC_DIR)


@app.page("/api/openapi.json")
class OpenAPI(web.View):
    """The OpenAPI description of this API."""

    async def get(self, request: web.Request) -> web.Response:
        return self.bytes(OPENAPI_PATH.read_bytes(), content_type="application/json")


# -- rolling importance -----------------------------------------------------------------
def top_document(entity: str, window: str, k: int, by: str) -> dict[str, Any]:
    state = rolling.STATES[entity]
    start, end, totals = state.totals(window)
    return {
        "entity": entity,
        "window": window,
        "window_start": start if totals else None,
        "window_end": end if totals else None,
        "now": state.current_time() or None,
        "by": by,
        "k": k,
        "entities": len(totals),
        "top": top_k(totals, k, by=by),
    }


#: how long a worker waits for another worker's share of a top list
PEER_TIMEOUT_S = 3.0
SCOPES = ("cluster", "local")


def peer_urls(entity: str) -> list[str]:
    """Web URLs of the other workers that hold partitions of ``entity``'s table (from
    the group's assignment, as Faust's ``table_route`` uses it)."""
    own = str(app.conf.canonical_url).rstrip("/")
    try:
        hosts = app.router.table_metadata(rolling.STATES[entity].table.name)
    except Exception:  # no assignment yet (starting, rebalancing): answer alone
        return []
    return sorted({str(url).rstrip("/") for url in hosts} - {own})


async def fetch_peer(session: Any, url: str, path: str, params: dict[str, str]) -> dict:
    """Another worker's local answer (``scope=local``), or ``{"error": ...}``."""
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    try:
        async with session.get(f"{url}{path}", params=params, headers=headers) as response:
            if response.status != 200:
                return {"error": f"HTTP {response.status}"}
            return await response.json()
    except Exception as exc:  # down, rebalancing, slow: the answer says it is partial
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


async def cluster_top_document(entity: str, window: str, k: int, by: str) -> dict[str, Any]:
    """:func:`top_document` over every worker: each worker's top ``k`` of the entities it
    owns, merged (an item or category is summed on exactly one worker, the owner of its
    re-keyed partition, and a user on the owner of the user's partition, so the merge is
    exact). Workers that do not answer within :data:`PEER_TIMEOUT_S` are listed with
    their error and the answer is marked ``partial``."""
    local = top_document(entity, window, k, by)
    workers = [
        {
            "url": str(app.conf.canonical_url).rstrip("/"),
            "entities": local["entities"],
            "window_end": local["window_end"],
        }
    ]
    peers = peer_urls(entity)
    if not peers:
        return {**local, "scope": "cluster", "workers": workers, "partial": False}
    import aiohttp

    path = f"/api/top/{next(p for p, e in ENTITY_PATHS.items() if e == entity)}"
    params = {"window": window, "k": str(k), "by": by, "scope": "local"}
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        answers = await asyncio.gather(*(fetch_peer(session, u, path, params) for u in peers))
    rows = list(local["top"])
    doc = dict(local)
    for url, answer in zip(peers, answers, strict=True):
        if "error" in answer:
            workers.append({"url": url, "error": answer["error"]})
            continue
        rows.extend(answer.get("top", []))
        doc["entities"] += answer.get("entities", 0)
        workers.append(
            {"url": url, "entities": answer.get("entities"), "window_end": answer.get("window_end")}
        )
        for field, pick in (("window_start", min), ("window_end", max), ("now", max)):
            values = [v for v in (doc.get(field), answer.get(field)) if v is not None]
            doc[field] = pick(values) if values else None
    doc["top"] = merge_top(rows, k, by)
    doc.update(scope="cluster", workers=workers, partial=any("error" in w for w in workers))
    return doc


@app.page("/api/top/{entity}")
class Top(web.View):
    """The k most important items, categories or users of a rolling window, over every
    worker of the group (``scope=cluster``, the default) or this worker's partitions."""

    async def get(self, request: web.Request, entity: str) -> web.Response:
        if entity not in ENTITY_PATHS:
            raise BadRequest(f"entity must be one of {', '.join(ENTITY_PATHS)}, got {entity!r}")
        query = request.query
        window = choice_param(query, "window", next(iter(rolling.WINDOWS)), rolling.WINDOWS)
        k = int_param(query, "k", 20, 1, MAX_K)
        by = choice_param(query, "by", "importance", RANK_BY)
        scope = choice_param(query, "scope", "cluster", SCOPES)
        name = ENTITY_PATHS[entity]
        if scope == "local":
            return _json_response({**top_document(name, window, k, by), "scope": "local"})
        return _json_response(await cluster_top_document(name, window, k, by))


@app.page("/api/users/{user_id}/top-items")
class UserTopItems(web.View):
    """The items whose events for this user carried the most importance recently."""

    @app.table_route(table=rolling.user_top_table, match_info="user_id")
    async def get(self, request: web.Request, user_id: str) -> web.Response:
        if not user_id or len(user_id) > MAX_ID_LENGTH:
            raise BadRequest(f"user_id must be 1 to {MAX_ID_LENGTH} characters")
        k = int_param(request.query, "k", 20, 1, MAX_K)
        value = rolling.user_top_table.data.get(user_id.encode())
        return _json_response(
            {
                "user_id": user_id,
                "k": k,
                "half_life_s": rolling.USER_HALF_LIFE_S,
                "as_of": value["t"] if value else None,
                "items": user_top_items(value, k),
            }
        )


# -- stats --------------------------------------------------------------------------------
def consumer_lag() -> dict[str, Any]:
    """Messages behind the log end, per topic this worker consumes (changelogs aside)."""
    monitor = app.monitor
    by_topic: dict[str, int] = {}
    read = dict(monitor.tp_read_offsets)
    for tp, end in list(monitor.tp_end_offsets.items()):
        if tp.topic.endswith("-changelog"):
            continue
        offset = read.get(tp)
        behind = end if offset is None else max(0, end - offset - 1)
        by_topic[tp.topic] = by_topic.get(tp.topic, 0) + behind
    return {"total": sum(by_topic.values()), "by_topic": by_topic}


def model_updates() -> tuple[int, list[int]]:
    """Labelled events the local partitions' learners learned from, and those partitions."""
    try:
        from agents.score import models

        snapshot = list(models.items())
        return sum(m.engine.updates for _, m in snapshot), sorted(p for p, _ in snapshot)
    except Exception:  # the scoring agent is not loaded in this process
        return 0, []


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)


def take_sample() -> dict[str, Any]:
    updates, _ = model_updates()
    prog = progressive.as_dict()
    return {
        "t": time.time(),
        "events_in": counters.events_in,
        "scored": counters.scored,
        "dlq": counters.dlq,
        "kept": counters.kept,
        "lag": consumer_lag()["total"],
        "updates": updates,
        "auc": _finite(prog["auc"]),
        "log_loss": _finite(prog["log_loss"]),
    }


@app.timer(interval=1.0)
async def sample_stats() -> None:
    """One sample per second, for rates and the dashboard's time series."""
    SAMPLES.append(take_sample())


RATE_FIELDS = ("events_in", "scored", "dlq", "kept")


def _rates(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    dt = b["t"] - a["t"]
    if dt <= 0:
        return {f"{f}_per_s": 0.0 for f in RATE_FIELDS}
    return {f"{f}_per_s": round(max(0, b[f] - a[f]) / dt, 3) for f in RATE_FIELDS}


def history(n: int) -> list[dict[str, Any]]:
    """The last ``n`` samples with per-second rates since the sample before each."""
    samples = list(SAMPLES)[-(n + 1) :]
    out = []
    for before, after in pairwise(samples):
        scored = after["scored"] - before["scored"]
        kept = after["kept"] - before["kept"]
        out.append(
            {
                "t": round(after["t"], 3),
                **_rates(before, after),
                "keep_rate": round(kept / scored, 6) if scored > 0 else None,
                "lag": after["lag"],
                "auc": after["auc"],
                "log_loss": after["log_loss"],
                "updates": after["updates"],
            }
        )
    return out


def stats_document(history_n: int = 0) -> dict[str, Any]:
    now = take_sample()
    recent = [s for s in SAMPLES if now["t"] - s["t"] <= RATE_WINDOW_S]
    rates = _rates(recent[0], now) if recent else _rates(now, now)
    updates, partitions = model_updates()
    doc: dict[str, Any] = {
        "uptime_s": round(time.time() - counters.started_at, 3),
        "totals": {
            "events_in": counters.events_in,
            "decoded": counters.decoded,
            "dlq": counters.dlq,
            "scored": counters.scored,
            "kept": counters.kept,
            "training_samples": counters.training_samples,
            "labels_resolved": counters.labels_resolved,
            "labels_evicted": counters.labels_evicted,
            "clock_capped": counters.clock_capped,
            "scored_in_place": counters.scored_in_place,
        },
        "dlq_by_code": dict(counters.dlq_by_code),
        "rates": rates,
        "keep_rate": round(counters.kept / counters.scored, 6) if counters.scored else None,
        "lag": consumer_lag(),
        "model": {"updates": updates, "partitions": partitions},
        "progressive": {
            **progressive.as_dict(),
            "auc": _finite(progressive.auc()),
            "log_loss": _finite(progressive.log_loss()),
        },
        "importance_histogram": rolling.importance_histogram(),
        "rolling": {
            entity: {
                "now": state.now or None,
                "panes": len(state.table.data),
                "windows": {name: size for name, size in rolling.WINDOWS.items()},
            }
            for entity, state in rolling.STATES.items()
        },
    }
    if history_n:
        doc["history"] = history(history_n)
    return doc


@app.page("/api/stats")
class Stats(web.View):
    """Throughput, DLQ, keep rate, lag, model updates, progressive AUC and log-loss."""

    async def get(self, request: web.Request) -> web.Response:
        n = int_param(request.query, "history", 0, 0, MAX_HISTORY)
        return _json_response(stats_document(n))


# -- /healthz -----------------------------------------------------------------------------
if "/healthz" not in app.web.views:  # agents/health.py serves a richer one when loaded

    @app.page("/healthz")
    class Healthz(web.View):
        """Liveness: the worker's web server answers."""

        async def get(self, request: web.Request) -> web.Response:
            return _json_response({"status": "ok", "uptime_s": time.time() - counters.started_at})


# -- Prometheus ---------------------------------------------------------------------------
class ServiceCollector:
    """The service's own counters and gauges, next to Faust's sensor metrics."""

    def collect(self):
        for name, value, doc in (
            ("importance_events_in", counters.events_in, "Input messages read"),
            ("importance_decoded", counters.decoded, "Valid events"),
            ("importance_dlq", counters.dlq, "Messages sent to the dead-letter topic"),
            ("importance_scored", counters.scored, "Events scored"),
            ("importance_kept", counters.kept, "Events kept by the sampler"),
            ("importance_training_samples", counters.training_samples, "Training samples"),
            ("importance_labels_resolved", counters.labels_resolved, "Labels resolved"),
            (
                "importance_clock_capped",
                counters.clock_capped,
                "Events ahead of the worker's clock plus the allowed skew",
            ),
            ("importance_snapshots", counters.snapshots, "Model snapshots saved"),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        by_code = CounterMetricFamily(
            "importance_dlq_by_code", "Dead letters by error code", labels=["code"]
        )
        for code, value in sorted(counters.dlq_by_code.items()):
            by_code.add_metric([code], value)
        yield by_code
        updates, _ = model_updates()
        yield GaugeMetricFamily(
            "importance_model_updates", "Labelled events learned from (local)", value=updates
        )
        for name, value, doc in (
            ("importance_progressive_auc", progressive.auc(), "Progressive AUC of p"),
            ("importance_progressive_log_loss", progressive.log_loss(), "Progressive log-loss"),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "importance_progressive_events", "Labelled events in the window", value=progressive.n
        )
        lag = GaugeMetricFamily("importance_consumer_lag", "Messages behind", labels=["topic"])
        for topic, behind in sorted(consumer_lag()["by_topic"].items()):
            lag.add_metric([topic], behind)
        yield lag
        panes = GaugeMetricFamily("importance_rolling_panes", "Panes held", labels=["entity"])
        for entity, state in rolling.STATES.items():
            panes.add_metric([entity], len(state.table.data))
        yield panes


setup_prometheus_sensors(app, pattern="/metrics", name_prefix="faust")
REGISTRY.register(ServiceCollector())
app.web.web_app.middlewares.append(guard)

if settings.web_host not in ("127.0.0.1", "localhost", "::1") and not settings.api_token:
    log.warning(
        "web server binds to %s without IMPORTANCE_API_TOKEN: the API and dashboard are "
        "open to whoever reaches that address",
        settings.web_host,
    )
