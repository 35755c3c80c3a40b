"""The web server's limits (stream_app/web/server.py): the connection guard, the cap in
force, log redaction, and a real aiohttp server built the way the worker builds it."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web

from stream_app.web import server
from stream_app.web.server import (
    REJECT_RESPONSE,
    ConnectionGuard,
    GuardedRunner,
    RedactSecrets,
    connection_cap,
    web_counters,
)


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def force_close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return self.name


class Transport:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_least_recently_used_idle_connection_makes_room(monkeypatch):
    monkeypatch.setattr(server, "web_counters", type(web_counters)())
    clock = Clock()
    guard = ConnectionGuard(3, clock)
    a, b, c, d = (Conn(n) for n in "abcd")
    for conn in (a, b, c):
        assert guard.admit(conn, Transport())
    clock.t += 1.0
    guard.enter(a)  # a is inside a handler: never closed for a newcomer
    guard.leave(a)  # ... and now the most recently used
    guard.enter(b)
    assert guard.admit(d, Transport())
    assert c.closed and not a.closed and not b.closed and len(guard) == 3
    assert server.web_counters.connections_evicted == 1


def test_young_connections_go_only_when_no_older_idle_one_is_left(monkeypatch):
    monkeypatch.setattr(server, "web_counters", type(web_counters)())
    clock = Clock()
    guard = ConnectionGuard(3, clock)
    a, b, c, d, e = (Conn(n) for n in "abcde")
    guard.admit(a, Transport())
    clock.t += 0.05
    guard.admit(b, Transport())
    guard.admit(c, Transport())
    clock.t += 0.051  # a is the least recently used
    assert guard.admit(d, Transport())
    assert a.closed and not b.closed and not c.closed
    # b and c opened 0.05 s ago: the older of them goes, the newcomer gets in
    assert guard.admit(e, Transport())
    assert b.closed and not c.closed and not d.closed and len(guard) == 3
    assert server.web_counters.connections_evicted == 2
    assert server.web_counters.connections_rejected == 0


def test_busy_connections_are_kept_and_the_newcomer_refused(monkeypatch):
    monkeypatch.setattr(server, "web_counters", type(web_counters)())
    clock = Clock()
    guard = ConnectionGuard(2, clock)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    guard.admit(a, Transport())
    guard.admit(b, Transport())
    clock.t += 0.101
    guard.enter(a)  # both inside a handler
    guard.enter(b)

    async def admit_c() -> Transport:
        transport = Transport()
        assert not guard.admit(c, transport)
        await asyncio.sleep(0)  # the refused connection is closed on the next loop turn
        return transport

    transport = asyncio.run(admit_c())
    assert transport.written == REJECT_RESPONSE and c.closed
    assert not a.closed and not b.closed
    assert server.web_counters.connections_rejected == 1
    guard.release(a)
    guard.release(b)
    assert len(guard) == 0


def test_the_cap_fits_under_the_descriptor_limit():
    assert connection_cap(512, 20_000) == 512
    assert connection_cap(512, 1024) == 512
    assert connection_cap(2048, 1024) == 768
    assert connection_cap(512, 100) == 16


def test_secrets_are_redacted_from_messages_arguments_and_tracebacks():
    flt = RedactSecrets(["tok-123456", "", "peer-abcdef"])
    logger = logging.getLogger("test.redact")
    record = logger.makeRecord(
        "x", logging.WARNING, __file__, 1, "bad %s from %s", ("Bearer tok-123456", "h"), None
    )
    assert flt.filter(record) and record.getMessage() == "bad Bearer [redacted] from h"
    try:
        raise ValueError("header peer-abcdef too long")
    except ValueError as exc:
        record = logger.makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), (type(exc), exc, exc.__traceback__)
        )
    flt.filter(record)
    text = logging.Formatter().format(record)
    assert "peer-abcdef" not in text and "[redacted]" in text and "ValueError" in text


def test_the_sweep_closes_stale_connections_but_not_busy_ones(monkeypatch):
    monkeypatch.setattr(server, "web_counters", type(web_counters)())
    clock = Clock()
    guard = ConnectionGuard(10, clock)
    idle, busy, recent = Conn("idle"), Conn("busy"), Conn("recent")
    for conn in (idle, busy, recent):
        guard.admit(conn, Transport())
    guard.enter(busy)
    clock.t += 5.0
    guard.enter(recent)
    guard.leave(recent)
    clock.t += 1.0
    assert guard.sweep(5.0) == 1
    assert idle.closed and idle.closed_by_guard and not busy.closed and not recent.closed
    assert server.web_counters.connections_timed_out == 1 and len(guard) == 2


@web.middleware
async def _mark_busy(request: web.Request, handler):
    # what the API's middleware does for the guard
    server.guard.enter(request.protocol)
    try:
        return await handler(request)
    finally:
        server.guard.leave(request.protocol)


async def _serve(max_connections: int, idle_s: float):
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 32_000_000)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3 * idle_s)
        return web.json_response({"slow": True})

    app = web.Application(middlewares=[_mark_busy])
    app.router.add_get("/ok", ok)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    runner = GuardedRunner(
        app, access_log=None, max_connections=max_connections, idle_timeout=idle_s
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site.port


async def _request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def test_a_real_server_answers_bad_requests_without_echo(caplog):
    async def main():
        runner, port = await _serve(16, 5.0)
        try:
            answers = [
                await _request(port, b"GET /ok?t=SECRET-1 HTTP/9.9\r\n\r\n"),
                await _request(
                    port, b"GET /ok HTTP/1.1\r\nHost: x\r\nX: SECRET-1" + b" " * 9000 + b"\r\n\r\n"
                ),
                await _request(port, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            ]
        finally:
            await runner.cleanup()
        return answers

    with caplog.at_level(logging.WARNING):
        bad_version, long_header, fine = asyncio.run(main())
    for answer in (bad_version, long_header):
        assert answer[:12] in (b"HTTP/1.0 400", b"HTTP/1.1 400") and b"SECRET" not in answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "bad_request"
    assert fine.startswith(b"HTTP/1.1 200")
    assert "SECRET" not in caplog.text and "Traceback" not in caplog.text
    assert "malformed HTTP request" in caplog.text


def test_a_real_server_closes_idle_connections_and_evicts_for_newcomers():
    async def main():
        runner, port = await _serve(4, 0.5)
        try:
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            await asyncio.sleep(0.15)
            # the cap is reached: a newcomer still gets its answer, an idle one goes
            fresh = await _request(
                port, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            evicted = sum([reader.at_eof() or not await _alive(reader) for reader, _ in idle])
            await asyncio.sleep(1.0)  # past the idle timeout: all closed
            closed = sum([not await _alive(reader) for reader, _ in idle])
            for _, writer in idle:
                writer.close()
        finally:
            await runner.cleanup()
        return fresh, evicted, closed

    fresh, evicted, closed = asyncio.run(main())
    assert fresh.startswith(b"HTTP/1.1 200")
    assert evicted >= 1 and closed == 4


def test_a_real_server_closes_slow_readers_but_waits_for_slow_handlers():
    async def main():
        runner, port = await _serve(16, 0.5)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(2.0)  # not reading: the answer waits in the buffers
            received = 0
            try:
                while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
                    received += len(chunk)
            except ConnectionError:
                pass
            writer.close()
            slow = await _request(
                port, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
        finally:
            await runner.cleanup()
        return received, slow

    received, slow = asyncio.run(main())
    assert received < 32_000_000  # cut off: the reader was too slow
    assert slow.startswith(b"HTTP/1.1 200")  # 1.5 s inside the handler is not idle


async def _alive(reader: asyncio.StreamReader) -> bool:
    try:
        return bool(await asyncio.wait_for(reader.read(1), 0.05)) or not reader.at_eof()
    except asyncio.TimeoutError:
        return True
    except ConnectionError:
        return False


@pytest.fixture(autouse=True)
def _no_guard_left(monkeypatch):
    monkeypatch.setattr(server, "guard", None)


def test_install_redaction_attaches_one_filter_to_each_handler():
    logger = logging.getLogger("test.redact.install")
    logger.propagate = False
    handlers = [logging.StreamHandler(), logging.StreamHandler()]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        server.install_redaction(["s3cret-value"], logger)
        server.install_redaction(["s3cret-value"], logger)  # a restart: still one each
        assert [sum(isinstance(f, RedactSecrets) for f in h.filters) for h in handlers] == [1, 1]
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
