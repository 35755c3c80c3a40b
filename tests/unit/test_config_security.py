"""Kafka security settings: read from the environment, validated, turned into
confluent-kafka config and Faust credentials, and the password never shown."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from stream_app.config import Settings

PASSWORD = "s3cret-Pa55"
SECURITY_VARS = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
)


@pytest.fixture
def env(monkeypatch):
    for name in SECURITY_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values: str) -> Settings:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return Settings.from_env()

    return set_env


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A throwaway CA and a client key + certificate signed by it (PEM files)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], cwd=d, check=True, capture_output=True, stdin=subprocess.DEVNULL
        )

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=client")  # fmt: skip
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.pem", "-days", "2")  # fmt: skip
    return {"ca": str(d / "ca.pem"), "cert": str(d / "client.pem"), "key": str(d / "client.key")}


def test_plaintext_is_the_default(env):
    settings = env()
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.kafka_client_config() == {"security.protocol": "PLAINTEXT"}
    assert settings.faust_credentials() is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_plaintext(env, mechanism):
    settings = env(
        KAFKA_SECURITY_PROTOCOL="sasl_plaintext",
        KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME="alice",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    assert settings.kafka_client_config() == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism.upper(),
        "sasl.username": "alice",
        "sasl.password": PASSWORD,
    }
    creds = settings.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["sasl_mechanism"] == mechanism.upper()
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("alice", PASSWORD)
    assert auth["ssl_context"] is None


def test_sasl_mechanism_defaults_to_plain(env):
    settings = env(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_USERNAME="alice",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    assert settings.kafka_client_config()["sasl.mechanism"] == "PLAIN"
    assert credentials_to_aiokafka_auth(settings.faust_credentials())["sasl_mechanism"] == "PLAIN"


def test_sasl_ssl_with_a_ca_file(env, pki):
    settings = env(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="alice",
        KAFKA_SASL_PASSWORD=PASSWORD,
        KAFKA_SSL_CAFILE=pki["ca"],
    )
    config = settings.kafka_client_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["ssl.ca.location"] == pki["ca"]
    auth = credentials_to_aiokafka_auth(settings.faust_credentials())
    assert auth["security_protocol"] == "SASL_SSL"
    context = auth["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(c["subject"] for c in context.get_ca_certs())


def test_ssl_with_client_certificate(env, pki):
    settings = env(
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CAFILE=pki["ca"],
        KAFKA_SSL_CERTFILE=pki["cert"],
        KAFKA_SSL_KEYFILE=pki["key"],
    )
    assert settings.kafka_client_config() == {
        "security.protocol": "SSL",
        "ssl.ca.location": pki["ca"],
        "ssl.certificate.location": pki["cert"],
        "ssl.key.location": pki["key"],
    }
    creds = settings.faust_credentials()
    assert isinstance(creds, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SSL"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "a"}, "PASSWORD"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "USERNAME"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_USERNAME": "a",
                "KAFKA_SASL_PASSWORD": PASSWORD,
            },
            "KAFKA_SASL_MECHANISM",
        ),
        ({"KAFKA_SASL_USERNAME": "a", "KAFKA_SASL_PASSWORD": PASSWORD}, "PLAINTEXT"),
        ({"KAFKA_SSL_CAFILE": "/ca.pem"}, "PLAINTEXT"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_USERNAME": "a",
                "KAFKA_SASL_PASSWORD": PASSWORD,
                "KAFKA_SSL_CAFILE": "/ca.pem",
            },
            "SASL_SSL",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/c.pem"}, "KEYFILE"),
    ],
)
def test_inconsistent_settings_are_refused(env, values, message):
    with pytest.raises(ValueError, match=message) as info:
        env(**values)
    assert PASSWORD not in str(info.value)


def test_password_is_never_shown(env):
    settings = env(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_USERNAME="alice",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    for text in (repr(settings), str(settings), repr(settings.faust_credentials())):
        assert PASSWORD not in text
    assert "alice" in repr(settings)


def test_the_faust_app_gets_the_credentials(env):
    from stream_app.app import create_app

    settings = env(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        KAFKA_SASL_USERNAME="alice",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    app = create_app(Settings(**{**settings.__dict__, "bootstrap_servers": "127.0.0.1:1"}))
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password) == ("alice", PASSWORD)
    assert creds.mechanism.value == "SCRAM-SHA-256"


def test_every_client_module_uses_the_security_settings():
    """Each place that builds a Kafka client merges the security config (static check)."""
    root = Path(__file__).resolve().parents[2]
    expected = {
        "stream_app/app.py": "faust_credentials()",
        "stream_app/topics.py": "kafka_client_config()",
        "stream_app/replay.py": "kafka_client_config()",
        "stream_app/cli.py": "kafka_client_config()",
        "agents/score.py": "kafka_client_config()",
    }
    for path, call in expected.items():
        assert call in (root / path).read_text(), path


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("true", True), ("false", False), ("OFF", False), ("0", False)],
)
def test_switches_for_in_place_scoring_and_rolling(env, monkeypatch, value, expected):
    for name in ("IMPORTANCE_SCORE_IN_PLACE", "IMPORTANCE_ROLLING"):
        monkeypatch.delenv(name, raising=False)
    extra = (
        {} if value is None else {"IMPORTANCE_SCORE_IN_PLACE": value, "IMPORTANCE_ROLLING": value}
    )
    settings = env(**extra)
    assert settings.score_in_place is expected
    assert settings.rolling_enabled is expected
