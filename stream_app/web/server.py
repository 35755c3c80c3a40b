"""The worker's HTTP server: Faust's aiohttp driver with limits a hostile client cannot
get around.

Faust builds ``AppRunner(web_app, access_log=None)`` and a ``TCPSite`` with aiohttp's
defaults: an idle connection is kept for 3,630 s, there is no cap on connections, and a
malformed request is logged as an ERROR with its traceback and answered with aiohttp's
parser message, which quotes the request line or header (and with it any token in it).
:class:`Web` (registered as the ``importance://`` web driver, see ``stream_app/app.py``)
changes that:

* **Timeouts.** A connection that has had no request inside a handler for
  ``IMPORTANCE_WEB_IDLE_TIMEOUT_S`` since it opened or since its last request is closed:
  idle keep-alive connections, request headers trickled in (slowloris), a body the
  handler does not read (every route is a GET) trickled in, and an answer read slowly.
  A timer of :class:`GuardedRunner` does it, whatever the aiohttp version; aiohttp's own
  ``keepalive_timeout`` and ``lingering_time`` are set to the same value.
* **A cap on connections** (``IMPORTANCE_WEB_MAX_CONNECTIONS``, lowered at start to the
  file-descriptor limit minus :data:`FD_RESERVE`). A connection past the cap closes the
  least recently used connection that is not inside a handler (as nginx reuses its idle
  keep-alive connections when it runs out), so a flood of idle or slow connections
  cannot hold the server: the newest connection, e.g. a health check, always gets in.
  The least recently used idle connection goes even if it has just opened (its request
  may not have been read yet: under a flood every idle connection is that young); if
  every connection is inside a handler, the new one gets a ``503`` and is closed.
  ``IMPORTANCE_WEB_BACKLOG`` sizes the listen queue.
* **Malformed requests** get ``400 {"error": "bad_request", ...}`` naming only the kind
  of error, never the request's bytes, and one WARNING line, at most one per
  :data:`LOG_EVERY_S` with the number left out.
* **No credential in a log line**: :class:`RedactSecrets` replaces the API token and the
  peer secret in every record (message, arguments, traceback) the worker logs.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web as aioweb
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import AppRunner, TCPSite
from aiohttp.web_server import Server
from faust.web.drivers.aiohttp import Web as FaustWeb

__all__ = [
    "FD_RESERVE",
    "ConnectionGuard",
    "RedactSecrets",
    "Web",
    "connection_cap",
    "install_redaction",
    "web_counters",
]

log = logging.getLogger(__name__)
#: malformed requests are logged here, rate-limited
request_log = logging.getLogger("stream_app.web.requests")

#: file descriptors left for Kafka connections, state files and logs
FD_RESERVE = 256
LOG_EVERY_S = 10.0
_REJECT_BODY = orjson.dumps(
    {"error": "overloaded", "detail": "too many open connections; retry shortly"}
)
REJECT_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
    + str(len(_REJECT_BODY)).encode()
    + b"\r\n\r\n"
    + _REJECT_BODY
)


@dataclass
class WebCounters:
    """Connections and bad requests since start (served at ``/metrics``)."""

    #: connections open now
    connections: int = 0
    connections_total: int = 0
    #: connections closed after IMPORTANCE_WEB_IDLE_TIMEOUT_S without a request
    connections_timed_out: int = 0
    #: idle or slow connections closed to admit a newer one
    connections_evicted: int = 0
    #: connections refused with a 503 (every connection inside a handler)
    connections_rejected: int = 0
    #: requests that could not be parsed (answered 400)
    bad_requests: int = 0
    #: handler failures outside the API's own error handling (answered 500)
    server_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


web_counters = WebCounters()


def connection_cap(configured: int, fd_soft_limit: int | None = None) -> int:
    """The connection cap in force: ``configured``, lowered so that the connections and
    :data:`FD_RESERVE` other descriptors fit under the process's file-descriptor limit.

    >>> connection_cap(512, 20000), connection_cap(512, 512), connection_cap(512, 100)
    (512, 256, 16)
    """
    if fd_soft_limit is None:
        fd_soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if fd_soft_limit == resource.RLIM_INFINITY or fd_soft_limit <= 0:
        return configured
    return max(16, min(configured, fd_soft_limit - FD_RESERVE))


def _shut(handler: Any) -> None:
    """Close a connection the guard gave up on; an answer still waiting for a slow
    reader is dropped (``abort``) rather than flushed first (``close``)."""
    handler.closed_by_guard = True
    transport = getattr(handler, "transport", None)
    if transport is not None and transport.get_write_buffer_size() > 0:
        transport.abort()
    handler.force_close()


class ConnectionGuard:
    """Open connections in least-recently-used order, and which are inside a handler."""

    def __init__(self, max_connections: int, clock: Any) -> None:
        self.max_connections = max_connections
        self.clock = clock
        # handler -> time it was opened or last started a request (oldest first)
        self._open: OrderedDict[Any, float] = OrderedDict()
        self._busy: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, handler: Any, transport: Any) -> bool:
        """Make room for a new connection; False if it was refused (and closed)."""
        now = self.clock()
        web_counters.connections_total += 1
        while len(self._open) >= self.max_connections:
            # the least recently used connection not inside a handler (``_open`` is in
            # that order), even one that has just opened: under a flood that reconnects
            # at once every idle connection is that young, and closing the newcomer
            # instead would refuse a health check that arrives then
            victim = next((h for h in self._open if h not in self._busy), None)
            if victim is None:
                web_counters.connections_rejected += 1
                transport.write(REJECT_RESPONSE)
                # closed once aiohttp has started the connection's task (closing it
                # before makes that task fail on a connection it no longer has)
                asyncio.get_running_loop().call_soon(handler.force_close)
                return False
            web_counters.connections_evicted += 1
            del self._open[victim]
            _shut(victim)
        self._open[handler] = now
        web_counters.connections = len(self._open)
        return True

    def sweep(self, timeout: float) -> int:
        """Close every connection that has had no request inside a handler for ``timeout``
        seconds (idle, trickling a request, or slowly reading its answer); how many."""
        now = self.clock()
        stale = [
            h for h, since in self._open.items() if h not in self._busy and now - since >= timeout
        ]
        for handler in stale:
            del self._open[handler]
            _shut(handler)
        web_counters.connections_timed_out += len(stale)
        web_counters.connections = len(self._open)
        return len(stale)

    def release(self, handler: Any) -> None:
        self._open.pop(handler, None)
        self._busy.pop(handler, None)
        web_counters.connections = len(self._open)

    def enter(self, handler: Any) -> None:
        """A request of this connection reached the handlers."""
        self._busy[handler] = self._busy.get(handler, 0) + 1
        if handler in self._open:
            self._open[handler] = self.clock()
            self._open.move_to_end(handler)

    def leave(self, handler: Any) -> None:
        count = self._busy.get(handler, 0) - 1
        if count > 0:
            self._busy[handler] = count
        else:
            self._busy.pop(handler, None)
        if handler in self._open:
            self._open[handler] = self.clock()
            self._open.move_to_end(handler)


#: the guard of the running server (None before it starts); the API's middleware marks
#: the connections whose requests are inside a handler
guard: ConnectionGuard | None = None


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol, with the cap and quiet, credential-free errors."""

    #: closed by the :class:`ConnectionGuard` (timed out, or to admit a newer connection)
    closed_by_guard = False

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's "Unhandled exception" and the like: one line (rate-limited) with the
        traceback, or nothing for a connection the guard closed (its lingering read of
        an unread body fails with "Connection closed")."""
        if self.closed_by_guard:
            return
        exc = kwargs.get("exc_info")
        kind = type(exc).__name__ if isinstance(exc, BaseException) else "error"
        web_counters.server_errors += 1
        log.error("web: %s (%s)", args[0] if args else "error", kind, exc_info=exc)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> aioweb.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "error"
        if status == 500:
            web_counters.server_errors += 1
            # the traceback goes to the log (redacted); the client learns nothing
            log.error("web: unhandled %s while serving a request", kind, exc_info=exc)
            body = {"error": "internal", "detail": "internal error (logged by the worker)"}
        else:
            web_counters.bad_requests += 1
            request_log.warning(
                "web: malformed HTTP request from %s answered %d (%s)",
                request.remote,
                status,
                kind,
            )
            body = {"error": "bad_request", "detail": f"malformed HTTP request ({kind})"}
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error answer")
        response = aioweb.Response(
            status=status, body=orjson.dumps(body), content_type="application/json"
        )
        response.force_close()
        return response


class GuardedServer(Server):
    """aiohttp's server (one per runner) making :class:`GuardedRequestHandler` protocols
    and admitting each connection through the :class:`ConnectionGuard`."""

    connection_guard: ConnectionGuard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        super().connection_made(handler, transport)
        self.connection_guard.admit(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.connection_guard.release(handler)


class GuardedRunner(AppRunner):
    """Faust's ``AppRunner``, whose server is a :class:`GuardedServer`, with a timer that
    closes connections idle for ``idle_timeout`` seconds (also where aiohttp's own
    ``keepalive_timeout`` does not apply: before the first request in aiohttp < 3.14,
    and while an answer is slowly read)."""

    def __init__(
        self,
        app: aioweb.Application,
        *,
        max_connections: int,
        idle_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, keepalive_timeout=idle_timeout, lingering_time=idle_timeout, **kwargs)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._sweeper: asyncio.TimerHandle | None = None

    async def _make_server(self) -> Server:  # faust_internals.WEB_MAKE_SERVER (private)
        global guard
        server = await super()._make_server()
        # aiohttp builds the server in Application._make_handler; it only adds methods
        server.__class__ = GuardedServer
        loop = asyncio.get_running_loop()
        server.connection_guard = guard = ConnectionGuard(self.max_connections, loop.time)
        self._schedule_sweep(loop, guard)
        return server

    def _schedule_sweep(
        self, loop: asyncio.AbstractEventLoop, connections: ConnectionGuard
    ) -> None:
        def sweep() -> None:
            connections.sweep(self.idle_timeout)
            self._schedule_sweep(loop, connections)

        self._sweeper = loop.call_later(min(1.0, self.idle_timeout / 4), sweep)

    async def cleanup(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await super().cleanup()


class Web(FaustWeb):
    """Faust's aiohttp web driver with this service's limits (see the module docstring)."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        from stream_app.app import settings

        self.settings = settings
        cap = connection_cap(settings.web_max_connections)
        if cap < settings.web_max_connections:
            log.warning(
                "IMPORTANCE_WEB_MAX_CONNECTIONS=%d lowered to %d: the file-descriptor limit "
                "is %d and %d are kept for Kafka and files",
                settings.web_max_connections,
                cap,
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                FD_RESERVE,
            )
        self.max_connections = cap
        self._runner = GuardedRunner(
            self.web_app,
            access_log=None,
            max_connections=cap,
            idle_timeout=settings.web_idle_timeout_s,
        )

    def _new_transport_tcp(self) -> TCPSite:
        return TCPSite(
            self._runner,
            self.app.conf.web_bind,
            self.app.conf.web_port,
            ssl_context=self.app.conf.web_ssl_context,
            backlog=self.settings.web_backlog,
        )


class RedactSecrets(logging.Filter):
    """Replace every occurrence of the given secrets in a log record (message, arguments
    and traceback) with ``[redacted]``; attach it to the handlers."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info)
        return True


def install_redaction(secrets: list[str], logger: logging.Logger | None = None) -> RedactSecrets:
    """Attach one :class:`RedactSecrets` to every handler of ``logger`` (the root logger)."""
    flt = RedactSecrets(secrets)
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(flt)
    return flt
