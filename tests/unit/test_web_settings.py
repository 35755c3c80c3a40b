"""The web server's settings: defaults, ranges, and errors that name the variable."""

from __future__ import annotations

import pytest

from stream_app.config import Settings


def from_env(monkeypatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def test_defaults():
    s = Settings()
    assert (s.web_idle_timeout_s, s.web_max_connections, s.web_backlog) == (15.0, 512, 1024)
    assert s.advertised_url == "http://127.0.0.1:6066" and s.peer_secret is None


def test_values_are_read(monkeypatch):
    s = from_env(
        monkeypatch,
        IMPORTANCE_WEB_IDLE_TIMEOUT_S="2.5",
        IMPORTANCE_WEB_MAX_CONNECTIONS="64",
        IMPORTANCE_WEB_BACKLOG="16",
        IMPORTANCE_WEB_ADVERTISED_URL="https://worker-3.internal:8443/",
        IMPORTANCE_PEER_SECRET="s" * 16,
        IMPORTANCE_API_TOKEN="t" * 16,
    )
    assert (s.web_idle_timeout_s, s.web_max_connections, s.web_backlog) == (2.5, 64, 16)
    assert s.advertised_url == "https://worker-3.internal:8443"
    assert "s" * 16 not in repr(s)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMPORTANCE_WEB_IDLE_TIMEOUT_S", "0"),
        ("IMPORTANCE_WEB_IDLE_TIMEOUT_S", "-1"),
        ("IMPORTANCE_WEB_IDLE_TIMEOUT_S", "nan"),
        ("IMPORTANCE_WEB_IDLE_TIMEOUT_S", "inf"),
        ("IMPORTANCE_WEB_IDLE_TIMEOUT_S", "3601"),
        ("IMPORTANCE_WEB_IDLE_TIMEOUT_S", "soon"),
        ("IMPORTANCE_WEB_MAX_CONNECTIONS", "0"),
        ("IMPORTANCE_WEB_MAX_CONNECTIONS", "100000"),
        ("IMPORTANCE_WEB_MAX_CONNECTIONS", "1.5"),
        ("IMPORTANCE_WEB_BACKLOG", "0"),
        ("IMPORTANCE_WEB_BACKLOG", "70000"),
        ("IMPORTANCE_WEB_ADVERTISED_URL", "worker-1:6066"),
        ("IMPORTANCE_WEB_ADVERTISED_URL", "http://worker-1"),
        ("IMPORTANCE_WEB_ADVERTISED_URL", "ftp://worker-1:21"),
        ("IMPORTANCE_WEB_ADVERTISED_URL", "http://worker-1:6066/api"),
        ("IMPORTANCE_WEB_ADVERTISED_URL", "http://worker-1:6066/?x=1"),
        ("IMPORTANCE_WEB_ADVERTISED_URL", "http://worker-1:99999"),
        ("IMPORTANCE_PEER_SECRET", "too-short"),
    ],
)
def test_nonsense_is_refused_with_the_variables_name(monkeypatch, name, value):
    with pytest.raises(ValueError, match=name):
        from_env(monkeypatch, **{name: value})


def test_credentials_in_a_refused_url_are_not_echoed(monkeypatch):
    with pytest.raises(ValueError) as info:
        from_env(monkeypatch, IMPORTANCE_WEB_ADVERTISED_URL="http://admin:hunter2@w:6066")
    assert "hunter2" not in str(info.value)


def test_the_peer_secret_is_not_the_api_token(monkeypatch):
    with pytest.raises(ValueError, match="must differ from IMPORTANCE_API_TOKEN"):
        from_env(monkeypatch, IMPORTANCE_PEER_SECRET="same-" * 4, IMPORTANCE_API_TOKEN="same-" * 4)
