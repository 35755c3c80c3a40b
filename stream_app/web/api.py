"""JSON API, Prometheus metrics and the live dashboard on the worker's Faust web server.

Routes (described in ``stream_app/web/openapi.json``, served at ``/api/openapi.json``):

* ``GET /`` and ``/dashboard`` — the dashboard page; ``/static/…`` its script, styles and
  chart library (no CDN: it works offline);
* ``GET /api/top/{items|categories|users}?window=5m&k=20&by=importance`` — the most
  important entities of the rolling window that ends now (event time);
* ``GET /api/users/{user_id}/top-items?k=20`` — the items whose events for this user
  carried the most importance recently; answered by the worker that owns the user's
  partition (found in the group's assignment, as Faust's ``table_route`` finds it; the
  request is signed, see :mod:`stream_app.web.peers`, and the answer checked);
* ``GET /api/stats`` — counters, rates, consumer lag, model updates, progressive AUC and
  log-loss, the importance histogram and (``?history=N``) the last N one-second samples;
* ``GET /metrics`` — Prometheus text: Faust's sensor plus the service's own counters;
* ``GET /healthz`` — liveness and broker connectivity (:mod:`agents.health`; never needs
  the token; 200 while the worker starts and recovers). Registered here only, whatever
  the import order;
* ``GET /readyz`` — readiness: 200 once the tables are recovered and the broker answers,
  503 before (with the recovery progress of :mod:`stream_app.recovery`).

Bad parameters get a 400 with ``{"error": ..., "detail": ...}``, unknown ids an empty
result, unknown routes a JSON 404 (Faust's own ``/router`` and ``/table`` routes are not
served). When ``IMPORTANCE_API_TOKEN`` is set every route but ``/healthz``, ``/readyz``
and ``/static/`` needs ``Authorization: Bearer <token>`` (401 otherwise); the dashboard page
also takes it as ``?token=`` and sends it as that header from JavaScript. Other workers
authenticate with signed requests instead (:mod:`stream_app.web.peers`); the client's
token is never forwarded. Connection limits and malformed requests:
:mod:`stream_app.web.server`.
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
from urllib.parse import quote

import orjson
from aiohttp import web as aioweb
from faust import web
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from yarl import URL

import agents.health as health
import agents.rolling as rolling
from models.rolling import RANK_BY, merge_top, top_k, user_top_items
from stream_app.app import app, settings
from stream_app.metrics import counters, progressive
from stream_app.recovery import recovery_status, table_stats
from stream_app.web import OPENAPI_PATH, STATIC_DIR, server
from stream_app.web.peers import (
    ANSWER_HEADER,
    MAX_ANSWER_BYTES,
    PEER_HEADER,
    InvalidAnswer,
    PeerAuthError,
    PeerVerifier,
    answer_signature_ok,
    check_top_answer,
    check_user_answer,
    origin,
    sign_answer,
    sign_request,
)

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
PUBLIC_PATHS = {"/healthz", "/readyz"}
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


def _shown(value: str) -> str:
    """A client's value as an error message quotes it: short, and never a credential."""
    for secret in (settings.api_token, settings.peer_secret):
        if secret and secret in value:
            return "(a value that holds a credential)"
    return repr(value) if len(value) <= 40 else repr(value[:37] + "...")


def int_param(query: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {_shown(raw)}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def choice_param(query: Any, name: str, default: str, choices: Any) -> str:
    raw = query.get(name, default)
    if raw not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}, got {_shown(raw)}")
    return raw


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


#: checks the signed requests of other workers (None without IMPORTANCE_PEER_SECRET)
verifier = (
    PeerVerifier(settings.peer_secret, settings.advertised_url) if settings.peer_secret else None
)
#: the request's nonce when another worker signed it (its answer is signed back)
PEER_NONCE = "importance.peer_nonce"


def _unauthorized(detail: str) -> aioweb.Response:
    return _json_response(
        {"error": "unauthorized", "detail": detail},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="importance-stream"'},
    )


def is_peer_request(request: aioweb.Request) -> bool:
    """Whether another worker of the group signed this request."""
    return request.get(PEER_NONCE) is not None


@aioweb.middleware
async def guard(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
    """Authentication (the bearer token, or a peer's signature), JSON errors instead of
    aiohttp's text ones or a traceback, and signed answers to peers."""
    token = settings.api_token
    path = request.path
    peer_header = request.headers.get(PEER_HEADER)
    if peer_header is not None:
        if verifier is None:
            return _unauthorized("this worker takes no peer requests (no IMPORTANCE_PEER_SECRET)")
        if request.method != "GET" or not path.startswith("/api/"):
            return _unauthorized("peer requests are for GET /api/ routes only")
        try:
            request[PEER_NONCE] = verifier.verify(
                peer_header, request.method, request.rel_url.raw_path, request.rel_url.query.items()
            )
        except PeerAuthError as exc:
            log.warning("web: peer request from %s rejected: %s", request.remote, exc.reason)
            return _unauthorized(f"peer signature rejected: {exc.reason}")
    elif token and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
        given = _bearer(request.headers.get("Authorization"))
        if given is None and path in PAGE_PATHS:
            given = request.query.get("token")
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            return _unauthorized("missing or wrong bearer token")
    connections = server.guard
    if connections is not None:
        connections.enter(request.protocol)
    try:
        response = await _handle(request, handler)
    finally:
        if connections is not None:
            connections.leave(request.protocol)
    nonce = request.get(PEER_NONCE)
    if nonce is not None and settings.peer_secret and isinstance(response, aioweb.Response):
        body = response.body if isinstance(response.body, bytes) else b""
        response.headers[ANSWER_HEADER] = sign_answer(
            settings.peer_secret, nonce, response.status, body
        )
    return response


async def _handle(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return _json_response({"error": "bad_request", "detail": exc.detail}, status=400)
    except Unavailable as exc:
        return _json_response({"error": exc.error, "detail": exc.detail}, status=exc.status)
    except aioweb.HTTPNotFound:
        return _json_response({"error": "not_found", "detail": "no such route"}, status=404)
    except aioweb.HTTPMethodNotAllowed as exc:
        return _json_response(
            {"error": "method_not_allowed", "detail": f"allowed: {', '.join(exc.allowed_methods)}"},
            status=405,
            headers={"Allow": ", ".join(exc.allowed_methods)},
        )
    except (aioweb.HTTPException, asyncio.CancelledError):
        raise
    except Exception as exc:
        log.error(
            "web: %s %s failed: %s", request.method, request.path, type(exc).__name__, exc_info=exc
        )
        return _json_response(
            {"error": "unavailable", "detail": "internal error (logged by the worker)"}, status=503
        )


class Unavailable(Exception):
    """The answer depends on another worker that cannot give it (HTTP 502/503)."""

    def __init__(self, detail: str, status: int = 503, error: str = "unavailable") -> None:
        super().__init__(detail)
        self.detail, self.status, self.error = detail, status, error


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
OWN_URL = origin(settings.advertised_url)


def peer_urls(entity: str) -> list[str]:
    """Web URLs of the other workers that hold partitions of ``entity``'s table (from
    the group's assignment, as Faust's ``table_route`` uses it)."""
    try:
        hosts = app.router.table_metadata(rolling.STATES[entity].table.name)
    except Exception:  # no assignment yet (starting, rebalancing): answer alone
        return []
    urls = set()
    for url in hosts:
        try:
            urls.add(origin(str(url)))
        except ValueError:  # what a member advertised is no URL: listed, never asked
            urls.add(str(url)[:200])
    return sorted(urls - {OWN_URL})


async def _read_bounded(response: Any, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise InvalidAnswer(f"answer over {limit} bytes")
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise InvalidAnswer(f"answer over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def ask_peer(session: Any, url: str, raw_path: str, params: dict[str, str]) -> Any:
    """Another worker's JSON answer to a GET, as ``(document, None)`` or ``(None, error)``.

    With ``IMPORTANCE_PEER_SECRET`` the request is signed and an answer counts only if
    it is signed back; without it (and without an API token) nothing secret is sent and
    the answer is taken unsigned. The client's token is never sent."""
    import aiohttp

    secret = settings.peer_secret
    try:
        usable = url.startswith(("http://", "https://")) and origin(url) == url
    except ValueError:
        usable = False
    if not usable:
        return None, "not asked: the advertised URL is not http(s)://host:port"
    if not secret and settings.api_token:
        return None, "not asked: IMPORTANCE_PEER_SECRET is not set"
    headers = {"Accept-Encoding": "identity"}  # the signature covers the body as sent
    nonce = None
    if secret:
        headers[PEER_HEADER], nonce = sign_request(secret, "GET", url, raw_path, params)
    try:
        target = URL(url + raw_path, encoded=True).with_query(params)
        async with session.get(target, headers=headers, allow_redirects=False) as response:
            body = await _read_bounded(response, MAX_ANSWER_BYTES)
            if response.status != 200:
                return None, f"HTTP {response.status}"
            if nonce is not None:
                signature = response.headers.get(ANSWER_HEADER)
                if not signature:
                    return None, "unsigned answer"
                if not answer_signature_ok(secret, nonce, response.status, body, signature):
                    return None, "bad answer signature"
            try:
                return orjson.loads(body), None
            except orjson.JSONDecodeError:
                return None, "invalid answer: not JSON"
    except InvalidAnswer as exc:
        return None, f"invalid answer: {exc}"
    except asyncio.TimeoutError:
        return None, f"no answer within {PEER_TIMEOUT_S:g} s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # down, rebalancing, refused
        return None, f"connection failed ({type(exc).__name__})"


def _peer_session() -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S), auto_decompress=False
    )


async def cluster_top_document(entity: str, window: str, k: int, by: str) -> dict[str, Any]:
    """:func:`top_document` over every worker: each worker's top ``k`` of the entities it
    owns, merged (an item or category is summed on exactly one worker, the owner of its
    re-keyed partition, and a user on the owner of the user's partition, so the merge is
    exact). Each peer answer is checked (:func:`check_top_answer`, and its signature when
    ``IMPORTANCE_PEER_SECRET`` is set) before it is merged; a worker that does not answer
    within :data:`PEER_TIMEOUT_S`, or whose answer fails a check, is listed with its
    ``error`` and the answer is marked ``partial``."""
    local = top_document(entity, window, k, by)
    workers: list[dict[str, Any]] = [
        {
            "url": OWN_URL,
            "entities": local["entities"],
            "window_end": local["window_end"],
            "verified": True,
        }
    ]
    peers = peer_urls(entity)
    if not peers:
        return {**local, "scope": "cluster", "workers": workers, "partial": False}
    path = f"/api/top/{next(p for p, e in ENTITY_PATHS.items() if e == entity)}"
    params = {"window": window, "k": str(k), "by": by, "scope": "local"}
    async with _peer_session() as session:
        answers = await asyncio.gather(*(ask_peer(session, u, path, params) for u in peers))
    rows = list(local["top"])
    doc = dict(local)
    for url, (answer, error) in zip(peers, answers, strict=True):
        if error is None:
            try:
                answer = check_top_answer(
                    answer,
                    entity=entity,
                    window=window,
                    window_size=rolling.WINDOWS[window],
                    k=k,
                    by=by,
                )
            except InvalidAnswer as exc:
                error = f"invalid answer: {exc}"
        if error is not None:
            log.warning("web: top list of %s from %s not merged: %s", entity, url, error)
            workers.append({"url": url, "error": error})
            continue
        rows.extend(answer["top"])
        doc["entities"] += answer["entities"]
        workers.append(
            {
                "url": url,
                "entities": answer["entities"],
                "window_end": answer["window_end"],
                "verified": bool(settings.peer_secret),
            }
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
            raise BadRequest(
                f"entity must be one of {', '.join(ENTITY_PATHS)}, got {_shown(entity)}"
            )
        query = request.query
        window = choice_param(query, "window", next(iter(rolling.WINDOWS)), rolling.WINDOWS)
        k = int_param(query, "k", 20, 1, MAX_K)
        by = choice_param(query, "by", "importance", RANK_BY)
        scope = choice_param(query, "scope", "cluster", SCOPES)
        name = ENTITY_PATHS[entity]
        if scope == "local":
            return _json_response({**top_document(name, window, k, by), "scope": "local"})
        return _json_response(await cluster_top_document(name, window, k, by))


def owner_url(user_id: str) -> str | None:
    """The URL of the worker that owns ``user_id``'s partition, None if it is this one
    (the assignment lookup of Faust's ``table_route``)."""
    try:
        dest = app.router.key_store(rolling.user_top_table.name, user_id)
    except KeyError:
        raise Unavailable(
            "no partition assignment yet (the group is starting or rebalancing)"
        ) from None
    try:
        url = origin(str(dest))
    except ValueError:
        raise Unavailable(
            "the worker that owns this user's partition advertises no usable URL",
            status=502,
            error="bad_gateway",
        ) from None
    return None if url == OWN_URL else url


async def routed_user_document(url: str, user_id: str, k: int) -> dict[str, Any]:
    """The owner's answer for ``user_id``, signed and checked (502 when it fails)."""
    raw_path = f"/api/users/{quote(user_id, safe='')}/top-items"
    async with _peer_session() as session:
        answer, error = await ask_peer(session, url, raw_path, {"k": str(k)})
    if error is None:
        try:
            return check_user_answer(
                answer, user_id=user_id, k=k, half_life_s=rolling.USER_HALF_LIFE_S
            )
        except InvalidAnswer as exc:
            error = f"invalid answer: {exc}"
    log.warning("web: top items of a user from %s not used: %s", url, error)
    raise Unavailable(
        f"the worker that owns this user's partition ({url}) did not answer: {error}",
        status=502,
        error="bad_gateway",
    )


@app.page("/api/users/{user_id}/top-items")
class UserTopItems(web.View):
    """The items whose events for this user carried the most importance recently,
    answered by the worker that owns the user's partition."""

    async def get(self, request: web.Request, user_id: str) -> web.Response:
        if not user_id or len(user_id) > MAX_ID_LENGTH:
            raise BadRequest(f"user_id must be 1 to {MAX_ID_LENGTH} characters")
        k = int_param(request.query, "k", 20, 1, MAX_K)
        if not is_peer_request(request):  # a peer's request is answered here, never re-routed
            url = owner_url(user_id)
            if url is not None:
                return _json_response(await routed_user_document(url, user_id, k))
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
        from agents.score import partition_models

        snapshot = list(partition_models.items())
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
        "decided": counters.decided,
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
        decided = after["decided"] - before["decided"]
        kept = after["kept"] - before["kept"]
        out.append(
            {
                "t": round(after["t"], 3),
                **_rates(before, after),
                "keep_rate": round(kept / decided, 6) if decided > 0 else None,
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
            "decided": counters.decided,
            "decided_positive": counters.decided_positive,
            "kept": counters.kept,
            "training_samples": counters.training_samples,
            "labels_resolved": counters.labels_resolved,
            "labels_evicted": counters.labels_evicted,
            "clock_capped": counters.clock_capped,
            "scored_in_place": counters.scored_in_place,
        },
        "dlq_by_code": dict(counters.dlq_by_code),
        "rates": rates,
        # the kept fraction of labelled training examples (IMPORTANCE_TARGET_KEEP_RATE)
        "keep_rate": round(counters.kept / counters.decided, 6) if counters.decided else None,
        "lag": consumer_lag(),
        "model": {"updates": updates, "partitions": partitions},
        "progressive": {
            **progressive.as_dict(),
            "auc": _finite(progressive.auc()),
            "log_loss": _finite(progressive.log_loss()),
        },
        "importance_histogram": rolling.importance_histogram(),
        "recovery": recovery_status(app),
        "tables": table_stats(app),
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
@app.page("/healthz")
class Healthz(web.View):
    """Liveness and broker connectivity (``agents/health.py`` keeps the state): 200 while
    the broker answers, 503 otherwise."""

    async def get(self, request: web.Request) -> web.Response:
        body, status = health.healthz_body(recovery_status(app))
        return _json_response({**body, "uptime_s": time.time() - counters.started_at}, status)


@app.page("/readyz")
class Readyz(web.View):
    """Readiness (``agents/health.py``): 200 once the tables are recovered and the broker
    answers, 503 before (``"recovering"`` with the records left and estimated seconds)."""

    async def get(self, request: web.Request) -> web.Response:
        body, status = health.readyz_body(recovery_status(app))
        return _json_response({**body, "uptime_s": time.time() - counters.started_at}, status)


# -- Prometheus ---------------------------------------------------------------------------
class ServiceCollector:
    """The service's own counters and gauges, next to Faust's sensor metrics."""

    def collect(self):
        for name, value, doc in (
            ("importance_events_in", counters.events_in, "Input messages read"),
            ("importance_decoded", counters.decoded, "Valid events"),
            ("importance_dlq", counters.dlq, "Messages sent to the dead-letter topic"),
            ("importance_scored", counters.scored, "Events scored"),
            (
                "importance_decided",
                counters.decided,
                "Labelled training examples decided by the label-time sampler",
            ),
            (
                "importance_kept",
                counters.kept,
                "Labelled training examples kept by the label-time sampler",
            ),
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
        web_counts = server.web_counters
        yield GaugeMetricFamily(
            "importance_web_connections", "Open HTTP connections", value=web_counts.connections
        )
        for name, value, doc in (
            (
                "importance_web_connections_timed_out",
                web_counts.connections_timed_out,
                "HTTP connections closed after IMPORTANCE_WEB_IDLE_TIMEOUT_S without a request",
            ),
            (
                "importance_web_connections_evicted",
                web_counts.connections_evicted,
                "Idle or slow HTTP connections closed to admit a newer one",
            ),
            (
                "importance_web_connections_rejected",
                web_counts.connections_rejected,
                "HTTP connections refused with a 503 (every slot busy)",
            ),
            (
                "importance_web_bad_requests",
                web_counts.bad_requests,
                "Malformed HTTP requests (answered 400)",
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        panes = GaugeMetricFamily("importance_rolling_panes", "Panes held", labels=["entity"])
        for entity, state in rolling.STATES.items():
            panes.add_metric([entity], len(state.table.data))
        yield panes


setup_prometheus_sensors(app, pattern="/metrics", name_prefix="faust")
REGISTRY.register(ServiceCollector())
app.web.web_app.middlewares.append(guard)

# one line per kind of bad request or peer failure every 10 s, with the count left out
_rate_limit = health.RateLimitFilter(window=server.LOG_EVERY_S)
for _logger in (log, server.log, server.request_log):
    _logger.addFilter(_rate_limit)


@app.task
async def redact_credentials() -> None:
    """Keep the API token and the peer secret out of every log line (the worker's log
    handlers exist once the app runs)."""
    server.install_redaction([settings.api_token or "", settings.peer_secret or ""])


if settings.api_token and not settings.peer_secret:
    log.warning(
        "IMPORTANCE_API_TOKEN is set without IMPORTANCE_PEER_SECRET: this worker does not "
        "ask other workers (scope=cluster top lists are partial, users owned by another "
        "worker get a 502) and takes no requests from them"
    )

if settings.web_host not in ("127.0.0.1", "localhost", "::1") and not settings.api_token:
    log.warning(
        "web server binds to %s without IMPORTANCE_API_TOKEN: the API and dashboard are "
        "open to whoever reaches that address",
        settings.web_host,
    )
