"""Signed requests between workers and the checks of their answers (stream_app/web/peers.py)."""

from __future__ import annotations

import copy

import pytest

from stream_app.web.peers import (
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

SECRET = "0123456789abcdef-peer"
TARGET = "http://10.0.0.7:6066"
QUERY = {"window": "5m", "k": "20", "by": "importance", "scope": "local"}


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def verifier(clock: Clock) -> PeerVerifier:
    return PeerVerifier(SECRET, TARGET + "/", clock=clock)


def test_a_signed_request_verifies_once():
    clock = Clock()
    header, nonce = sign_request(SECRET, "GET", TARGET, "/api/top/items", QUERY, now=clock.t)
    v = verifier(clock)
    # the query's order does not matter
    assert v.verify(header, "GET", "/api/top/items", list(reversed(QUERY.items()))) == nonce
    with pytest.raises(PeerAuthError, match="replayed"):
        v.verify(header, "GET", "/api/top/items", QUERY)


@pytest.mark.parametrize(
    "change",
    [
        {"method": "POST"},
        {"path": "/api/top/users"},
        {"query": {**QUERY, "k": "100"}},
        {"query": {**QUERY, "extra": "1"}},
        {"secret": "another-secret-0123456"},
        {"target": "http://10.0.0.8:6066"},  # signed for another worker: no relaying
    ],
)
def test_any_change_breaks_the_signature(change):
    clock = Clock()
    signed = {"method": "GET", "path": "/api/top/items", "query": QUERY, "target": TARGET}
    header, _ = sign_request(
        change.get("secret", SECRET),
        signed["method"],
        change.get("target", TARGET),
        signed["path"],
        signed["query"],
        now=clock.t,
    )
    with pytest.raises(PeerAuthError, match="bad signature"):
        verifier(clock).verify(
            header,
            change.get("method", "GET"),
            change.get("path", "/api/top/items"),
            change.get("query", QUERY),
        )


def test_stale_and_future_requests_are_refused():
    clock = Clock()
    v = verifier(clock)
    for offset in (-31, 31, -3600 * 5):
        header, _ = sign_request(SECRET, "GET", TARGET, "/api/stats", {}, now=clock.t + offset)
        with pytest.raises(PeerAuthError, match="off this worker's clock"):
            v.verify(header, "GET", "/api/stats", {})
    header, _ = sign_request(SECRET, "GET", TARGET, "/api/stats", {}, now=clock.t - 29)
    v.verify(header, "GET", "/api/stats", {})


@pytest.mark.parametrize(
    "header",
    ["", "Bearer x", "v1 t=1, n=zz, s=00", "v1 t=1800000000, n=" + "a" * 32 + ", s=" + "b" * 63],
)
def test_malformed_headers_are_refused(header):
    with pytest.raises(PeerAuthError, match="malformed"):
        verifier(Clock()).verify(header, "GET", "/api/stats", {})


def test_nonces_are_forgotten_after_their_window_and_bounded():
    clock = Clock()
    v = PeerVerifier(SECRET, TARGET, clock=clock, max_nonces=3)
    headers = [
        sign_request(SECRET, "GET", TARGET, "/api/stats", {}, now=clock.t)[0] for _ in range(5)
    ]
    for header in headers:
        v.verify(header, "GET", "/api/stats", {})
    assert len(v._seen) == 3
    clock.t += 61
    header, _ = sign_request(SECRET, "GET", TARGET, "/api/stats", {}, now=clock.t)
    v.verify(header, "GET", "/api/stats", {})
    assert len(v._seen) == 1


def test_answer_signatures_bind_nonce_status_and_body():
    sig = sign_answer(SECRET, "n1", 200, b'{"a":1}')
    assert answer_signature_ok(SECRET, "n1", 200, b'{"a":1}', sig)
    assert not answer_signature_ok(SECRET, "n2", 200, b'{"a":1}', sig)
    assert not answer_signature_ok(SECRET, "n1", 400, b'{"a":1}', sig)
    assert not answer_signature_ok(SECRET, "n1", 200, b'{"a":2}', sig)
    assert not answer_signature_ok("another-secret-0123456", "n1", 200, b'{"a":1}', sig)
    assert not answer_signature_ok(SECRET, "n1", 200, b'{"a":1}', None)


def test_origin_normalises():
    assert origin("HTTP://Host:80/") == origin("http://host") == "http://host:80"
    assert origin("https://h:8443/x?y") == "https://h:8443"


ROW = {
    "id": "item-1",
    "events": 4,
    "importance": 2.0,
    "mean_importance": 0.5,
    "kept": 1,
    "p_mean": 0.25,
}
TOP = {
    "entity": "item",
    "window": "5m",
    "window_start": 1_500_000_000.0,
    "window_end": 1_500_000_300.0,
    "now": 1_500_000_200.0,
    "by": "importance",
    "k": 3,
    "entities": 7,
    "top": [ROW, {**ROW, "id": "item-2", "importance": 1.0, "mean_importance": 0.25}],
    "scope": "local",
    "extra": "ignored",
}
ASK = {"entity": "item", "window": "5m", "window_size": 300.0, "k": 3, "by": "importance"}


def test_a_real_top_answer_passes_and_comes_back_clean():
    clean = check_top_answer(copy.deepcopy(TOP), **ASK)
    assert clean["entities"] == 7 and [r["id"] for r in clean["top"]] == ["item-1", "item-2"]
    assert "extra" not in clean and set(clean["top"][0]) == set(ROW)
    empty = {**TOP, "top": [], "entities": 0, "window_start": None, "window_end": None}
    assert check_top_answer(empty, **ASK)["top"] == []


def _broken(path, value):
    doc = copy.deepcopy(TOP)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("k",), 100, "k is 100, asked 3"),
        (("k",), True, "k is True"),
        (("entity",), "user", "entity is"),
        (("window",), "1h", "window is"),
        (("by",), "events", "by is"),
        (("scope",), "cluster", "scope is"),
        (("entities",), -1, "entities must be an integer"),
        (("entities",), 1.5, "entities must be an integer"),
        (("entities",), 1, "2 rows for k=3 and 1 entities"),
        (("window_end",), 1_500_000_360.0, "the window spans 360 s"),
        (("window_end",), None, "go together"),
        (("now",), "soon", "now must be a number"),
        (("now",), float("inf"), "now must be a number"),
        (("top",), {"a": 1}, "top must be a list"),
        (("top",), [ROW] * 4, "4 rows for k=3"),
        (("top",), [ROW, ROW], "an id appears twice"),
        (("top",), ["row"], "a row is not an object"),
        (("top", 0, "id"), "", "id must be a string"),
        (("top", 0, "id"), 7, "id must be a string"),
        (("top", 0, "id"), "x" * 257, "id must be a string"),
        (("top", 0, "events"), 0, "events must be an integer"),
        (("top", 0, "events"), "4", "events must be an integer"),
        (("top", 0, "kept"), 5, "kept must be an integer in [0, 4]"),
        (("top", 0, "importance"), 4.1, "importance must be a number"),
        (("top", 0, "importance"), -0.1, "importance must be a number"),
        (("top", 0, "importance"), float("nan"), "importance must be a number"),
        (("top", 0, "mean_importance"), 1.5, "mean_importance must be a number"),
        (("top", 0, "p_mean"), None, "p_mean must be a number"),
        (("top", 0, "p_mean"), KeyError, "p_mean must be a number"),
    ],
)
def test_broken_top_answers_are_refused(path, value, message):
    with pytest.raises(InvalidAnswer) as info:
        check_top_answer(_broken(path, value), **ASK)
    assert message in str(info.value)


def test_a_top_answer_that_is_not_an_object_is_refused():
    for doc in ([TOP], "top", None, 3):
        with pytest.raises(InvalidAnswer, match="not a JSON object"):
            check_top_answer(doc, **ASK)


def test_refusals_do_not_echo_long_values():
    doc = _broken(("entity",), "E" * 5000)
    with pytest.raises(InvalidAnswer) as info:
        check_top_answer(doc, **ASK)
    assert len(str(info.value)) < 100


USER = {
    "user_id": "u1",
    "k": 2,
    "half_life_s": 1800.0,
    "as_of": 1_500_000_000.0,
    "items": [{"item_id": "a", "score": 0.7, "events": 1, "last_ts": 1_500_000_000.0}],
}


def test_user_answers():
    ask = {"user_id": "u1", "k": 2, "half_life_s": 1800.0}
    assert check_user_answer(copy.deepcopy(USER), **ask)["items"][0]["item_id"] == "a"
    assert check_user_answer({**USER, "items": [], "as_of": None}, **ask)["items"] == []
    bad = [
        ({**USER, "user_id": "u2"}, "user_id is"),
        ({**USER, "k": 20}, "k is 20"),
        ({**USER, "half_life_s": 60.0}, "half_life_s"),
        ({**USER, "items": USER["items"] * 3}, "at most k=2"),
        ({**USER, "items": USER["items"] * 2}, "appears twice"),
        ({**USER, "items": [{**USER["items"][0], "score": 2.0}]}, "score must be"),
        ({**USER, "items": [{**USER["items"][0], "events": 0}]}, "events must be"),
        ({**USER, "items": [{**USER["items"][0], "last_ts": "x"}]}, "last_ts must be"),
        ({**USER, "as_of": -1.0}, "as_of must be"),
        ([USER], "not a JSON object"),
    ]
    for doc, message in bad:
        with pytest.raises(InvalidAnswer) as info:
            check_user_answer(doc, **ask)
        assert message in str(info.value), (doc, info.value)
