"""A rogue member of the group, on a real broker: a real worker joins the group but
advertises (``IMPORTANCE_WEB_ADVERTISED_URL``) the URL of a fake server run by the test,
which records what it receives and answers made-up data. The honest worker must never
send it the client's token or a reusable secret, and must not merge its answers unless
they are signed with the peer secret and pass the checks.

The fake signs answers by the scheme documented in ``stream_app/web/peers.py``,
implemented here again on purpose (a second reading of the documentation)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.integration.test_api import get_json, http, wait_for
from tests.integration.test_scaling import GROUP_KEYS, wait_for_split

pytestmark = pytest.mark.integration

TOKEN = "client-token-" + "4b1d9e0c77a2"
SECRET = "group-secret-" + "93f0a6c1d25e"
FORGED = "forged-item"


def forged_top(entity: str, window: str, k: int, by: str, rows: int = 1) -> dict:
    size = {"5m": 300.0, "1h": 3600.0}[window]
    return {
        "entity": entity,
        "window": window,
        "window_start": 1_500_000_000.0,
        "window_end": 1_500_000_000.0 + size,
        "now": 1_500_000_100.0,
        "by": by,
        "k": k,
        "entities": max(rows, 1),
        "top": [
            {
                "id": FORGED if i == 0 else f"{FORGED}-{i}",
                "events": 1_000_000,
                "importance": 999_999.0,
                "mean_importance": 0.999999,
                "kept": 1_000_000,
                "p_mean": 0.5,
            }
            for i in range(rows)
        ],
        "scope": "local",
    }


class FakePeer:
    """An HTTP server that records requests and answers as ``mode`` says."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.mode = "unsigned"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append({"path": self.path, "headers": dict(self.headers.items())})
                status, body, headers = fake.answer(self.path, dict(self.headers.items()))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sign(self, headers: dict, status: int, body: bytes) -> dict:
        match = re.search(r"n=([0-9a-f]{32})", headers.get("X-Importance-Peer", ""))
        nonce = match.group(1) if match else ""
        text = "\n".join(
            ("importance-peer-v1-answer", nonce, str(status), hashlib.sha256(body).hexdigest())
        )
        return {
            "X-Importance-Peer-Answer": hmac.new(
                SECRET.encode(), text.encode(), hashlib.sha256
            ).hexdigest()
        }

    def answer(self, target: str, headers: dict) -> tuple[int, bytes, dict]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        k = int(query.get("k", "20"))
        mode = self.mode
        if url.path.startswith("/api/users/"):
            user = unquote(url.path.split("/")[3])
            items = [
                {"item_id": f"{FORGED}-{i}", "score": 1.0, "events": 1, "last_ts": 1.5e9}
                for i in range(k * 3 if mode == "rows" else 1)
            ]
            doc = {"user_id": user, "k": k, "half_life_s": 1800.0, "as_of": 1.5e9, "items": items}
        else:
            entity = {"items": "item", "categories": "category", "users": "user"}[
                url.path.rsplit("/", 1)[1]
            ]
            window, by = query.get("window", "5m"), query.get("by", "importance")
            doc = forged_top(entity, window, k, by, rows=k + 50 if mode == "rows" else 1)
            if mode == "k":
                doc["k"] = 1000
            elif mode == "negative":
                doc["top"][0]["events"] = -5
            elif mode == "importance":
                doc["top"][0]["importance"] = 5e6  # more than 1 per event
            elif mode == "long-id":
                doc["top"][0]["id"] = "x" * 10_000
            elif mode == "entity":
                doc["entity"] = "category" if entity != "category" else "item"
            elif mode == "window":
                doc["window_end"] += 60
            elif mode == "types":
                doc["top"][0]["events"] = "many"
            elif mode == "list":
                doc = [doc]
        body = json.dumps(doc).encode()
        if mode == "nan":
            body = body.replace(b'"p_mean": 0.5', b'"p_mean": NaN')
        elif mode == "big":
            body = json.dumps({**doc, "padding": "p" * 2_000_000}).encode()
        if mode == "unsigned":
            return 200, body, {}
        signed = self.sign(headers, 200, body)
        if mode == "bad-signature":
            signed = {"X-Importance-Peer-Answer": "0" * 64}
        return 200, body, signed


@pytest.fixture(scope="module")
def rogue_group(bootstrap, tmp_path_factory):
    """An honest worker (token and peer secret) and a member that advertises the fake."""
    from tests.integration.conftest import worker_factory

    fake = FakePeer()
    factory = worker_factory.__wrapped__(bootstrap, tmp_path_factory.mktemp("rogue"))
    make = next(factory)
    try:
        honest = make(IMPORTANCE_API_TOKEN=TOKEN, IMPORTANCE_PEER_SECRET=SECRET)
        rogue = make(
            **{k: honest.env[k] for k in GROUP_KEYS if k in honest.env},
            IMPORTANCE_WEB_ADVERTISED_URL=fake.url,
        )
        honest.start()
        rogue.start()
        wait_for_split(honest, rogue, f"{honest.settings.app_id}-rolling-by-item", 4)
        port = honest.settings.web_port

        def fanned_out():
            status, doc = get_json(port, "/api/top/items?window=1h&k=10", token=TOKEN)
            urls = [w["url"] for w in doc.get("workers", [])]
            return doc if status == 200 and fake.url in urls else None

        wait_for(fanned_out, timeout=60, what="the honest worker asking the fake")
        yield honest, fake
    finally:  # the workers stop even when the setup failed
        next(factory, None)
        fake.close()


def test_the_rogue_member_never_receives_the_token_or_the_secret(rogue_group):
    honest, fake = rogue_group
    port = honest.settings.web_port
    fake.mode = "unsigned"
    get_json(port, "/api/top/categories?window=5m&k=5", token=TOKEN)
    for user in ("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"):
        get_json(port, f"/api/users/{user}/top-items?k=3", token=TOKEN)
    assert fake.requests, "the honest worker never asked the fake"
    paths = {r["path"].split("?")[0] for r in fake.requests}
    assert "/api/top/items" in paths and any(p.startswith("/api/users/") for p in paths), paths
    for request in fake.requests:
        seen = request["path"] + json.dumps(request["headers"])
        assert TOKEN not in seen and SECRET not in seen, request
        assert "Authorization" not in request["headers"], request
        signature = request["headers"].get("X-Importance-Peer", "")
        assert re.fullmatch(r"v1 t=\d+, n=[0-9a-f]{32}, s=[0-9a-f]{64}", signature), request
    # one signature per request: nonces do not repeat
    nonces = [
        re.search(r"n=(\w+)", r["headers"]["X-Importance-Peer"]).group(1) for r in fake.requests
    ]
    assert len(set(nonces)) == len(nonces)


def test_unsigned_made_up_answers_are_not_merged(rogue_group):
    honest, fake = rogue_group
    port = honest.settings.web_port
    fake.mode = "unsigned"
    status, doc = get_json(port, "/api/top/items?window=1h&k=10", token=TOKEN)
    assert status == 200
    assert FORGED not in {row["id"] for row in doc["top"]}
    rogue = [w for w in doc["workers"] if w["url"] == fake.url]
    assert rogue == [{"url": fake.url, "error": "unsigned answer"}], doc["workers"]
    assert doc["partial"] is True
    # users the rogue member owns get a 502, never its made-up items
    answers = [get_json(port, f"/api/users/u{i}/top-items?k=3", token=TOKEN) for i in range(0, 40)]
    statuses = {status for status, _ in answers}
    assert statuses == {200, 502}, statuses
    for status, body in answers:
        assert FORGED not in json.dumps(body)
        if status == 502:
            assert body["error"] == "bad_gateway" and "unsigned answer" in body["detail"]


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("bad-signature", "bad answer signature"),
        ("k", "invalid answer: k is 1000, asked 10"),
        ("rows", "invalid answer: 60 rows for k=10"),
        ("negative", "invalid answer: events must be an integer"),
        ("importance", "invalid answer: importance must be a number"),
        ("types", "invalid answer: events must be an integer"),
        ("long-id", "invalid answer: id must be a string"),
        ("entity", "invalid answer: entity is"),
        ("window", "invalid answer: the window spans 3660 s"),
        ("list", "invalid answer: not a JSON object"),
        ("nan", "invalid answer: not JSON"),
        ("big", "invalid answer: answer over 262144 bytes"),
    ],
)
def test_signed_answers_are_checked_before_they_are_merged(rogue_group, mode, error):
    """A member that knows the secret (buggy, or compromised) still cannot get an answer
    of the wrong shape, type, size or k merged."""
    honest, fake = rogue_group
    fake.mode = mode
    status, doc = get_json(honest.settings.web_port, "/api/top/items?window=1h&k=10", token=TOKEN)
    assert status == 200
    assert not any(row["id"].startswith(FORGED) for row in doc["top"]), doc["top"][:3]
    rogue = next(w for w in doc["workers"] if w["url"] == fake.url)
    assert rogue.get("error", "").startswith(error), rogue
    assert doc["partial"] is True


def test_signed_user_answers_are_checked(rogue_group):
    honest, fake = rogue_group
    fake.mode = "rows"  # more items than k
    answers = [
        get_json(honest.settings.web_port, f"/api/users/u{i}/top-items?k=3", token=TOKEN)
        for i in range(40)
    ]
    bad = [body for status, body in answers if status == 502]
    assert bad and all("items must be a list of at most k=3" in b["detail"] for b in bad), bad[:2]
    assert all(FORGED not in json.dumps(body) for _, body in answers)


def test_a_signed_valid_answer_is_merged(rogue_group):
    """The trust model: what the peer secret signs and passes the checks is merged (a
    member that knows the secret is trusted), and is marked verified."""
    honest, fake = rogue_group
    fake.mode = "signed"
    status, doc = get_json(honest.settings.web_port, "/api/top/items?window=1h&k=10", token=TOKEN)
    assert status == 200 and doc["partial"] is False
    assert doc["top"][0]["id"] == FORGED
    rogue = next(w for w in doc["workers"] if w["url"] == fake.url)
    assert rogue["verified"] is True and "error" not in rogue


def test_peer_requests_need_a_valid_signature(rogue_group):
    """The honest worker's side: a peer header without the secret, replayed, or for
    another target is refused (401), and a peer header is no way around the token."""
    honest, fake = rogue_group
    port = honest.settings.web_port
    import urllib.request

    def with_peer_header(path: str, value: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        request.add_header("X-Importance-Peer", value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    path = "/api/top/items?by=importance&k=10&scope=local&window=1h"
    forged = "v1 t=1700000000, n=" + "a" * 32 + ", s=" + "b" * 64
    assert with_peer_header(path, forged) == 401
    assert with_peer_header(path, "garbage") == 401
    # a request the honest worker signed for the fake, replayed against the honest one
    fake.requests.clear()
    fake.mode = "unsigned"
    get_json(port, "/api/top/items?window=1h&k=10", token=TOKEN)
    sent = next(r for r in fake.requests if r["path"].startswith("/api/top/items"))
    assert with_peer_header(sent["path"], sent["headers"]["X-Importance-Peer"]) == 401
    assert http(port, "/api/stats")[0] == 401  # still needs the token
