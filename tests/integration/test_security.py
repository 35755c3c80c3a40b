"""Kafka security end to end: a throwaway broker with SASL (PLAIN, SCRAM) listeners, in
clear and over TLS; a worker configured only through KAFKA_SECURITY_PROTOCOL /
KAFKA_SASL_* / KAFKA_SSL_* scores events through it, and wrong credentials fail with a
clear authentication error.

The broker runs on its own ports (found free, well away from 9092 and the dev broker) with
its runtime state in a tmp dir (the jar cache is shared) and is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from stream_app import broker
from stream_app.broker import metadata_error
from tests.integration.conftest import consume_all, produce
from tests.integration.events import synthetic_events

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime"),
]

USER = "alice"
PASSWORD = "alice-Pa55-w0rd"
KEYSTORE_PASSWORD = "keystore-pw"


def _make_tls(directory: Path) -> tuple[Path, Path] | None:
    """A CA (PEM) and a PKCS12 keystore for a broker certificate valid for 127.0.0.1."""
    if shutil.which("openssl") is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )

    def run(*args: str) -> None:
        subprocess.run(
            ["openssl", *args],
            cwd=directory,
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=importance-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "broker.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    run("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-name", "broker",
        "-out", "broker.p12", "-passout", f"pass:{KEYSTORE_PASSWORD}")  # fmt: skip
    return directory / "ca.pem", directory / "broker.p12"


@dataclass
class SecureBroker:
    port: int
    cafile: Path | None

    @property
    def sasl_plaintext(self) -> str:
        return f"127.0.0.1:{self.port + 2}"

    @property
    def sasl_ssl(self) -> str:
        return f"127.0.0.1:{self.port + 3}"

    def env(self, protocol: str, mechanism: str, password: str = PASSWORD) -> dict[str, str]:
        """Worker environment for this broker (KAFKA_* variables only)."""
        tls = protocol == "SASL_SSL"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.sasl_ssl if tls else self.sasl_plaintext,
            "KAFKA_SECURITY_PROTOCOL": protocol,
            "KAFKA_SASL_MECHANISM": mechanism,
            "KAFKA_SASL_USERNAME": USER,
            "KAFKA_SASL_PASSWORD": password,
        }
        if tls:
            env["KAFKA_SSL_CAFILE"] = str(self.cafile)
        return env


def client_config(env: dict[str, str]) -> dict[str, str]:
    """The confluent-kafka config the service derives from the same environment."""
    from stream_app.config import Settings

    old = os.environ.copy()
    try:
        os.environ.update(env)
        return Settings.from_env().kafka_client_config()
    finally:
        os.environ.clear()
        os.environ.update(old)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory) -> Iterator[SecureBroker]:
    root = tmp_path_factory.mktemp("secure-broker")
    tls = _make_tls(root / "tls")
    port = broker.free_ports(4, 29392)
    state = root / "state"
    broker.start(
        port,
        state=state,
        sasl_users={USER: PASSWORD},
        ssl_keystore=tls[1] if tls else None,
        ssl_keystore_password=KEYSTORE_PASSWORD if tls else None,
        wait_timeout=120,
        heap="512m",  # a second broker on a small machine
    )
    try:
        yield SecureBroker(port, tls[0] if tls else None)
    finally:
        broker.stop(port, state=state)
        # the generated server.properties holds the test passwords: not left behind
        shutil.rmtree(state / "run", ignore_errors=True)


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512")],
)
def test_worker_with_sasl_credentials_scores_end_to_end(
    secure_broker, worker_factory, protocol, mechanism
):
    if protocol == "SASL_SSL" and secure_broker.cafile is None:
        pytest.skip("openssl is needed to make the TLS certificates")
    env = secure_broker.env(protocol, mechanism)
    address = env["KAFKA_BOOTSTRAP_SERVERS"]
    security = client_config(env)
    worker = worker_factory(**env)
    worker.start()

    events = synthetic_events(400, prefix=f"sec-{mechanism}")
    bad = [b'{"user_id": 1', b'{"user_id": 1, "item_id": 2, "type": "teleport", "ts": 1700000000}']
    produce(address, worker.settings.topic_events, [*events, *bad], config=security)

    expected = {e["event_id"] for e in events}
    records = consume_all(
        address,
        worker.settings.topic_scores,
        until=lambda recs: expected <= {r["event_id"] for r in recs},
        timeout=180,
        config=security,
    )
    got = {r["event_id"] for r in records}
    assert expected <= got, f"{len(expected - got)} events not scored\n{worker.log_tail()}"
    dead = consume_all(
        address,
        worker.settings.topic_dlq,
        until=lambda recs: len(recs) >= 2,
        timeout=60,
        config=security,
    )
    assert sorted(r["error"] for r in dead) == ["not_json", "unknown_type"]
    assert worker.proc.poll() is None
    log = worker.log_text()
    assert PASSWORD not in log
    assert "Traceback" not in log, worker.log_tail()


def test_plain_mechanism_round_trip(secure_broker):
    env = secure_broker.env("SASL_PLAINTEXT", "PLAIN")
    security = client_config(env)
    address = env["KAFKA_BOOTSTRAP_SERVERS"]
    assert metadata_error(address, 20.0, security) is None
    topic = f"plain-{time.time_ns()}"
    produce(address, topic, [{"n": 1}, {"n": 2}], config=security)
    records = consume_all(address, topic, until=lambda recs: len(recs) >= 2, config=security)
    assert sorted(r["n"] for r in records) == [1, 2]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_wrong_password_is_a_clear_authentication_error(secure_broker, mechanism):
    security = client_config(secure_broker.env("SASL_PLAINTEXT", mechanism, password="wrong"))
    started = time.monotonic()
    error = metadata_error(secure_broker.sasl_plaintext, 30.0, security)
    assert error is not None and error.startswith("authentication failed"), error
    assert "Authentication failed" in error
    assert time.monotonic() - started < 30  # reported when it happens, not at the timeout


def test_client_without_credentials_or_ca_is_refused(secure_broker):
    # no SASL at all against the SASL listener: never gets metadata
    assert metadata_error(secure_broker.sasl_plaintext, 3.0) is not None
    if secure_broker.cafile is None:
        return
    security = client_config(secure_broker.env("SASL_SSL", "SCRAM-SHA-256"))
    del security["ssl.ca.location"]  # the broker's CA is not trusted
    error = metadata_error(secure_broker.sasl_ssl, 30.0, security)
    assert error is not None and error.startswith("TLS failed"), error


def test_worker_with_wrong_password_fails_clearly(secure_broker, worker_factory, tmp_path):
    env = secure_broker.env("SASL_PLAINTEXT", "SCRAM-SHA-256", password="wrong-password")
    # topic creation (run by the worker before Faust starts) says why it cannot go on
    with pytest.raises(ConnectionError, match="authentication failed"):
        worker_factory(**env)
    # and so does the `importance worker` command, without a traceback
    result = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "worker"],
        env={**os.environ, **env, "IMPORTANCE_DATA_DIR": str(tmp_path / "w")},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "authentication failed" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "wrong-password" not in result.stdout + result.stderr
    # the right credentials still work: nothing was locked out
    good = client_config(secure_broker.env("SASL_PLAINTEXT", "SCRAM-SHA-256"))
    assert metadata_error(secure_broker.sasl_plaintext, 20.0, good) is None
    assert orjson.dumps(good)  # plain data, no secret objects
