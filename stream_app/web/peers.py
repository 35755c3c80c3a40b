"""Requests between the workers of a group, and what their answers may contain.

A worker asks the others for their share of a top list (``/api/top/*?scope=local``) and
forwards ``/api/users/{user_id}/top-items`` to the owner of the user's partition. The
URLs come from the group's assignment, i.e. from whatever each member advertises, so a
member is not trusted for being in the group:

* **Requests** carry ``X-Importance-Peer: v1 t=<unix time>, n=<nonce>, s=<signature>``,
  an HMAC-SHA256 with the group's peer secret (``IMPORTANCE_PEER_SECRET``) over the
  method, the target's origin (its advertised ``scheme://host:port``), the raw path, the
  sorted query, the time and the nonce. The secret itself never travels, nor does the
  client's token; a signature is good for one target, one request, ±30 s and once.
* **Answers** carry ``X-Importance-Peer-Answer: <signature>``, an HMAC over the
  request's nonce, the status and the SHA-256 of the body: a member that does not know
  the secret cannot make up an answer that is merged.
* **Every answer is checked** (:func:`check_top_answer`, :func:`check_user_answer`:
  types, ranges, sizes, ``k``, the window asked) before it is merged, signed or not.

This module is pure (no Faust, no I/O) so the rules are unit-tested alone.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = [
    "ANSWER_HEADER",
    "MAX_ANSWER_BYTES",
    "MAX_SKEW_S",
    "PEER_HEADER",
    "InvalidAnswer",
    "PeerAuthError",
    "PeerVerifier",
    "answer_signature_ok",
    "check_top_answer",
    "check_user_answer",
    "origin",
    "sign_answer",
    "sign_request",
]

PEER_HEADER = "X-Importance-Peer"
ANSWER_HEADER = "X-Importance-Peer-Answer"
#: how far a request's time may be from the receiver's clock
MAX_SKEW_S = 30.0
#: the largest answer a worker reads from another (k ≤ 100 rows need about 20 KB)
MAX_ANSWER_BYTES = 256 * 1024
MAX_ID_LENGTH = 256
MAX_COUNT = 10**12
_VERSION = "importance-peer-v1"
_HEADER_RE = re.compile(r"^v1 t=(\d{1,12}), n=([0-9a-f]{32}), s=([0-9a-f]{64})$")


class PeerAuthError(Exception):
    """A peer request's signature is missing, malformed, stale, replayed or wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidAnswer(ValueError):
    """A peer's answer does not have the shape, types or ranges of a real one."""


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL, lower-case, with the port spelled out.

    >>> origin("HTTP://Worker-1:6066/"), origin("https://w.example")
    ('http://worker-1:6066', 'https://w.example:443')
    """
    parts = urlsplit(str(url).strip())
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def _canonical_query(query: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    pairs = query.items() if isinstance(query, Mapping) else query
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(pairs))


def _mac(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def _request_text(method: str, target: str, raw_path: str, query: Any, t: int, nonce: str) -> str:
    return "\n".join(
        (_VERSION, method.upper(), origin(target), raw_path, _canonical_query(query), str(t), nonce)
    )


def sign_request(
    secret: str,
    method: str,
    target: str,
    raw_path: str,
    query: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> tuple[str, str]:
    """The ``X-Importance-Peer`` header value for one request, and its nonce."""
    t = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(16)
    sig = _mac(secret, _request_text(method, target, raw_path, query, t, nonce))
    return f"v1 t={t}, n={nonce}, s={sig}", nonce


class PeerVerifier:
    """Checks the requests that reach this worker (``target`` = its advertised URL):
    signature, time within :data:`MAX_SKEW_S`, nonce not seen before."""

    def __init__(
        self,
        secret: str,
        target: str,
        *,
        max_skew_s: float = MAX_SKEW_S,
        clock: Callable[[], float] = time.time,
        max_nonces: int = 100_000,
    ) -> None:
        self.secret = secret
        self.target = origin(target)
        self.max_skew_s = max_skew_s
        self.clock = clock
        self.max_nonces = max_nonces
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> time it expires

    def verify(self, header: str, method: str, raw_path: str, query: Any) -> str:
        """The request's nonce; raises :class:`PeerAuthError` with the reason."""
        match = _HEADER_RE.match(header.strip())
        if not match:
            raise PeerAuthError("malformed peer header")
        t, nonce, sig = int(match.group(1)), match.group(2), match.group(3)
        now = self.clock()
        expected = _mac(self.secret, _request_text(method, self.target, raw_path, query, t, nonce))
        if not hmac.compare_digest(sig, expected):
            raise PeerAuthError("bad signature (another peer secret, or another target URL)")
        if abs(now - t) > self.max_skew_s:
            raise PeerAuthError(f"request time {now - t:+.0f} s off this worker's clock")
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            raise PeerAuthError("replayed request")
        if len(self._seen) >= self.max_nonces:
            self._seen.popitem(last=False)
        self._seen[nonce] = now + 2 * self.max_skew_s
        return nonce


def _answer_text(nonce: str, status: int, body: bytes) -> str:
    return "\n".join((f"{_VERSION}-answer", nonce, str(status), hashlib.sha256(body).hexdigest()))


def sign_answer(secret: str, nonce: str, status: int, body: bytes) -> str:
    """The ``X-Importance-Peer-Answer`` header value of an answer to a peer request."""
    return _mac(secret, _answer_text(nonce, status, body))


def answer_signature_ok(
    secret: str, nonce: str, status: int, body: bytes, header: str | None
) -> bool:
    """Whether ``header`` signs this answer to the request with ``nonce``."""
    if not header:
        return False
    return hmac.compare_digest(header.strip(), sign_answer(secret, nonce, status, body))


# -- what answers may contain ----------------------------------------------------------
def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(doc: Mapping, name: str, lo: int, hi: int) -> int:
    value = doc.get(name)
    if type(value) is not int or not lo <= value <= hi:
        raise InvalidAnswer(f"{name} must be an integer in [{lo}, {hi}], got {_short(value)}")
    return value


def _number(doc: Mapping, name: str, lo: float, hi: float) -> float:
    value = doc.get(name)
    if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidAnswer(f"{name} must be a number in [{lo:g}, {hi:g}], got {_short(value)}")
    return float(value)


def _time(doc: Mapping, name: str) -> float | None:
    if doc.get(name) is None:
        return None
    return _number(doc, name, 0.0, 1e11)


def _id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_LENGTH:
        raise InvalidAnswer(f"{name} must be a string of 1 to {MAX_ID_LENGTH} characters")
    return value


def _same(doc: Mapping, name: str, asked: Any) -> None:
    value = doc.get(name)
    if type(value) is not type(asked) or value != asked:
        raise InvalidAnswer(f"{name} is {_short(value)}, asked {asked!r}")


def check_top_answer(
    doc: Any, *, entity: str, window: str, window_size: float, k: int, by: str
) -> dict[str, Any]:
    """A clean copy of a peer's ``scope=local`` top list, or :class:`InvalidAnswer`.

    >>> row = {"id": "a", "events": 2, "importance": 1.2, "mean_importance": 0.6,
    ...        "kept": 1, "p_mean": 0.3}
    >>> doc = {"entity": "item", "window": "5m", "k": 5, "by": "importance",
    ...        "scope": "local", "entities": 1, "window_start": 0.0,
    ...        "window_end": 300.0, "now": 250.0, "top": [row]}
    >>> check_top_answer(doc, entity="item", window="5m", window_size=300.0, k=5,
    ...                  by="importance")["top"][0]["id"]
    'a'
    >>> check_top_answer({**doc, "k": 500}, entity="item", window="5m",
    ...                  window_size=300.0, k=5, by="importance")
    Traceback (most recent call last):
    ...
    stream_app.web.peers.InvalidAnswer: k is 500, asked 5
    """
    if not isinstance(doc, dict):
        raise InvalidAnswer("not a JSON object")
    for name, asked in (
        ("entity", entity),
        ("window", window),
        ("k", k),
        ("by", by),
        ("scope", "local"),
    ):
        _same(doc, name, asked)
    entities = _int(doc, "entities", 0, MAX_COUNT)
    start, end, now = _time(doc, "window_start"), _time(doc, "window_end"), _time(doc, "now")
    if (start is None) != (end is None):
        raise InvalidAnswer("window_start and window_end go together")
    if start is not None and end is not None and not math.isclose(end - start, window_size):
        raise InvalidAnswer(f"the window spans {end - start:g} s, not {window_size:g} s")
    top = doc.get("top")
    if not isinstance(top, list):
        raise InvalidAnswer("top must be a list")
    if len(top) > min(k, entities):
        raise InvalidAnswer(f"{len(top)} rows for k={k} and {entities} entities")
    rows: list[dict[str, Any]] = []
    ids: set[str] = set()
    for row in top:
        if not isinstance(row, dict):
            raise InvalidAnswer("a row is not an object")
        key = _id(row.get("id"), "id")
        if key in ids:
            raise InvalidAnswer("an id appears twice")
        ids.add(key)
        events = _int(row, "events", 1, MAX_COUNT)
        tolerance = 1e-6 * events  # figures are rounded to 6 decimals
        rows.append(
            {
                "id": key,
                "events": events,
                "importance": _number(row, "importance", 0.0, events + tolerance),
                "mean_importance": _number(row, "mean_importance", 0.0, 1.0 + 1e-6),
                "kept": _int(row, "kept", 0, events),
                "p_mean": _number(row, "p_mean", 0.0, 1.0 + 1e-6),
            }
        )
    return {"entities": entities, "window_start": start, "window_end": end, "now": now, "top": rows}


def check_user_answer(doc: Any, *, user_id: str, k: int, half_life_s: float) -> dict[str, Any]:
    """A clean copy of the owner's ``/api/users/{user_id}/top-items`` answer, or
    :class:`InvalidAnswer`."""
    if not isinstance(doc, dict):
        raise InvalidAnswer("not a JSON object")
    _same(doc, "user_id", user_id)
    _same(doc, "k", k)
    if _number(doc, "half_life_s", 0.0, 1e9) != half_life_s:
        raise InvalidAnswer(f"half_life_s is {_short(doc.get('half_life_s'))}, not {half_life_s}")
    items = doc.get("items")
    if not isinstance(items, list) or len(items) > k:
        raise InvalidAnswer(f"items must be a list of at most k={k}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            raise InvalidAnswer("an item is not an object")
        key = _id(item.get("item_id"), "item_id")
        if key in seen:
            raise InvalidAnswer("an item appears twice")
        seen.add(key)
        events = _int(item, "events", 1, MAX_COUNT)
        out.append(
            {
                "item_id": key,
                "score": _number(item, "score", 0.0, events + 1e-6 * events),
                "events": events,
                "last_ts": _number(item, "last_ts", 0.0, 1e11),
            }
        )
    return {
        "user_id": user_id,
        "k": k,
        "half_life_s": half_life_s,
        "as_of": _time(doc, "as_of"),
        "items": out,
    }
