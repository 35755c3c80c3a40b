"""How a worker asks its peers (stream_app/web/api.py), without a network: URLs that a
member of the group advertises but that are no usable URL, and the token-without-secret
configuration, are never asked."""

from __future__ import annotations

import asyncio

import pytest

import stream_app.web.api as api


class NoSession:
    """A client session that fails the test if anything is sent."""

    def get(self, *args, **kwargs):
        raise AssertionError(f"asked {args} {kwargs}")


@pytest.mark.parametrize(
    "url", ["http://w:99999", "file:///etc/passwd", "gopher://w:70", "w:6066", "", "http://"]
)
def test_unusable_advertised_urls_are_not_asked(url):
    answer, error = asyncio.run(api.ask_peer(NoSession(), url, "/api/stats", {}))
    assert answer is None and error.startswith("not asked"), error


def test_with_a_token_and_no_peer_secret_peers_are_not_asked(monkeypatch):
    settings = api.settings.replace(api_token="t" * 20, peer_secret=None)
    monkeypatch.setattr(api, "settings", settings)
    answer, error = asyncio.run(api.ask_peer(NoSession(), "http://w:6066", "/api/stats", {}))
    assert (answer, error) == (None, "not asked: IMPORTANCE_PEER_SECRET is not set")


def test_a_signed_request_never_carries_the_token(monkeypatch):
    settings = api.settings.replace(api_token="t" * 20, peer_secret="s" * 20)
    monkeypatch.setattr(api, "settings", settings)
    sent = {}

    class Recorder:
        def get(self, target, headers, allow_redirects):
            sent.update(target=str(target), headers=headers, redirects=allow_redirects)
            raise OSError("recorded")

    answer, error = asyncio.run(api.ask_peer(Recorder(), "http://w:6066", "/api/stats", {"a": "1"}))
    assert answer is None
    assert error == "connection failed (OSError)"
    assert sent["target"] == "http://w:6066/api/stats?a=1" and sent["redirects"] is False
    assert "t" * 20 not in repr(sent) and "s" * 20 not in repr(sent)
    assert sent["headers"]["X-Importance-Peer"].startswith("v1 t=")
    assert "Authorization" not in sent["headers"]
