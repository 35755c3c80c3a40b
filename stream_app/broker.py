"""Fetch and run a local single-node Apache Kafka broker (KRaft mode).

The broker is assembled from Maven Central with ``mvn`` (the only artifact source this
project relies on) and run with the local ``java``. Everything lives in a project-local
cache directory that git ignores:

``<kafka dir>/dist/<version>/libs/``
    Kafka jars + dependencies (shared by every broker, fetched once per version).
``<state dir>/data/<port>/``
    The broker's ``log.dirs`` (``meta.properties`` there means "already formatted").
``<state dir>/run/<port>.pid``, ``<port>.properties``, ``<port>.lock``
    Pid file (JSON), generated server config and a lock serialising start/stop.
``<state dir>/logs/<port>/``
    ``server.log`` (log4j2 file appender) and ``stdout.log`` (JVM stdout/stderr).

Environment variables:

``IMPORTANCE_KAFKA_VERSION``
    Kafka version to fetch/run (default ``4.1.1``; 4.x only).
``IMPORTANCE_KAFKA_DIR``
    Cache root. Default: ``<repo>/.kafka`` in a source checkout, otherwise
    ``$XDG_CACHE_HOME/importance-stream/kafka`` (``~/.cache/...``).
``IMPORTANCE_KAFKA_DATA_DIR``
    Root for per-broker runtime state (``data/``, ``run/``, ``logs/``); defaults to the
    cache root. Lets tests run throwaway brokers without re-fetching the jars.
``IMPORTANCE_BROKER_PORT`` / ``IMPORTANCE_BROKER_CONTROLLER_PORT``
    Client port (default 9092) and KRaft controller port (default port + 1).
``IMPORTANCE_KAFKA_HEAP``
    JVM max heap (default ``1g``).
``KAFKA_BOOTSTRAP_SERVERS``
    When set, :func:`bootstrap_servers` returns it and never starts a local broker.

Command line: ``python -m stream_app.broker {fetch,start,stop,status,reset}``; the
:data:`broker_cli` click group is also mounted by the main ``importance`` CLI.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from stream_app.clients import SASL_MECHANISMS
from stream_app.paths import repo_root

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "DEFAULT_PORT",
    "BrokerError",
    "bootstrap_servers",
    "broker_cli",
    "dist_dir",
    "fetch",
    "kafka_dir",
    "metadata_error",
    "reset",
    "start",
    "state_dir",
    "status",
    "stop",
]

log = logging.getLogger(__name__)

DEFAULT_KAFKA_VERSION = "4.1.1"
DEFAULT_PORT = 9092
DEFAULT_HEAP = "1g"
SCALA_BINARY_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"
HOST = "127.0.0.1"

_MVN_TIMEOUT_S = 1800.0
_FORMAT_TIMEOUT_S = 120.0
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(?:[-.][0-9A-Za-z.-]+)?$")
_COMPLETE_MARKER = ".complete"


class BrokerError(RuntimeError):
    """Raised when the local broker cannot be fetched, started or stopped.

    ``str(err)`` includes the tail of the broker log when one is available;
    :attr:`summary` is the one-line message (used by the CLI).
    """

    def __init__(self, summary: str, details: str | None = None) -> None:
        self.summary = summary
        self.details = details
        super().__init__(summary if not details else f"{summary}\n{details}")


# --------------------------------------------------------------------------- locations


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def kafka_dir() -> Path:
    """Cache root: ``$IMPORTANCE_KAFKA_DIR``, else ``<repo>/.kafka``, else the user cache."""
    override = _env("IMPORTANCE_KAFKA_DIR")
    if override:
        return Path(override).expanduser().resolve()
    root = repo_root()
    if root is not None:
        return root / ".kafka"
    cache_home = _env("XDG_CACHE_HOME")
    base = Path(cache_home) if cache_home else Path.home() / ".cache"
    return base / "importance-stream" / "kafka"


def state_dir() -> Path:
    """Root for broker runtime state: ``$IMPORTANCE_KAFKA_DATA_DIR`` or :func:`kafka_dir`."""
    override = _env("IMPORTANCE_KAFKA_DATA_DIR")
    return Path(override).expanduser().resolve() if override else kafka_dir()


def kafka_version(version: str | None = None) -> str:
    """The Kafka version to use: *version*, ``$IMPORTANCE_KAFKA_VERSION`` or the default."""
    resolved = version or _env("IMPORTANCE_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION
    if not _VERSION_RE.match(resolved):
        raise BrokerError(f"invalid Kafka version {resolved!r} (expected e.g. 4.1.1)")
    if int(resolved.split(".", 1)[0]) < 4:
        raise BrokerError(
            f"Kafka {resolved} is not supported: the local broker needs Kafka 4.x "
            "(KRaft-only, log4j2)"
        )
    return resolved


def dist_dir(version: str | None = None) -> Path:
    """Directory holding the jars for *version* (``<kafka dir>/dist/<version>/libs``)."""
    return kafka_dir() / "dist" / kafka_version(version) / "libs"


def _env_port(name: str, default: int | None) -> int | None:
    raw = _env(name)
    if raw is None:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise BrokerError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise BrokerError(f"{name}={port} is out of range")
    return port


def _resolve_ports(port: int | None, controller_port: int | None = None) -> tuple[int, int]:
    """Client and controller ports.

    The controller port comes from ``IMPORTANCE_BROKER_CONTROLLER_PORT`` only when the
    client port itself comes from the environment/default (an explicit *port* gets
    ``port + 1``), so tests passing a port never collide with the configured broker.
    """
    if port is None:
        resolved = _env_port("IMPORTANCE_BROKER_PORT", DEFAULT_PORT)
        assert resolved is not None
        env_controller = _env_port("IMPORTANCE_BROKER_CONTROLLER_PORT", None)
        controller = controller_port or env_controller or resolved + 1
    else:
        resolved = int(port)
        controller = controller_port or resolved + 1
    for value in (resolved, controller):
        if not 0 < value < 65536:
            raise BrokerError(f"port {value} is out of range")
    if controller == resolved:
        raise BrokerError(f"controller port must differ from the broker port ({resolved})")
    return resolved, controller


class _Paths:
    """All per-broker file locations for one port under one state dir."""

    def __init__(self, port: int, root: Path | None = None) -> None:
        self.port = port
        self.root = Path(root).expanduser().resolve() if root is not None else state_dir()
        self.data = self.root / "data" / str(port)
        self.run = self.root / "run"
        self.pid_file = self.run / f"{port}.pid"
        self.lock_file = self.run / f"{port}.lock"
        self.properties = self.run / f"{port}.properties"
        self.log4j = self.run / "log4j2.xml"
        self.logs = self.root / "logs" / str(port)
        self.server_log = self.logs / "server.log"
        self.stdout_log = self.logs / "stdout.log"

    @property
    def meta_properties(self) -> Path:
        return self.data / "meta.properties"


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on *path* (no-op where ``fcntl`` is unavailable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _which_java() -> str:
    java_home = _env("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if not found:
        raise BrokerError(
            "java not found: install a Java 17+ runtime (or set JAVA_HOME) to run the local "
            "Kafka broker"
        )
    return found


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _log_tail(paths: _Paths, since: float | None = None, lines: int = 40) -> str:
    """Tails of the broker's stdout and server logs (only files written after *since*)."""
    parts = []
    for path in (paths.stdout_log, paths.server_log):
        try:
            if since is not None and path.stat().st_mtime < since - 1:
                continue
        except OSError:
            continue
        tail = _tail(path, lines)
        if tail.strip():
            parts.append(f"--- tail of {path} ---\n{tail}")
    return "\n".join(parts) or f"(no broker output in {paths.logs})"


def _proc_state(pid: int) -> str | None:
    """Linux process state letter (``Z`` = zombie), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ..." -- comm may contain spaces/parentheses
    return stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in ("Z", "X")


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode("utf-8", errors="replace")
    except OSError:
        pass
    try:
        result = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _is_our_broker(pid: int, paths: _Paths) -> bool:
    """True when *pid* is alive and is the ``kafka.Kafka`` process for *paths*."""
    if not _pid_alive(pid):
        return False
    cmdline = _cmdline(pid)
    if cmdline is None:  # cannot inspect: trust the pid file
        return True
    return "kafka.Kafka" in cmdline and str(paths.properties) in cmdline


def _read_pid_file(paths: _Paths) -> dict[str, Any] | None:
    """Pid-file record of a live broker; stale or unreadable pid files are removed."""
    try:
        record = json.loads(paths.pid_file.read_text())
        pid = int(record["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("removing unreadable pid file %s", paths.pid_file)
        paths.pid_file.unlink(missing_ok=True)
        return None
    if not _is_our_broker(pid, paths):
        log.info("removing stale pid file %s (pid %d is not running)", paths.pid_file, pid)
        paths.pid_file.unlink(missing_ok=True)
        return None
    record["pid"] = pid
    return record


def port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now (``SO_REUSEADDR``: a port whose last
    connections linger in TIME_WAIT counts as free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int = 2, start: int = 19392, span: int = 2000) -> int:
    """The first port from ``start`` on (in steps of ``count``, within ``span``) that is free
    with the ``count - 1`` ports after it: for a throwaway broker (client and controller
    ports, and the SASL listeners' after them)."""
    for port in range(start, start + span, count):
        if all(port_free(port + i) for i in range(count)):
            return port
    raise BrokerError(f"no {count} free consecutive ports from {start} to {start + span}")


def free_port() -> int:
    """A port the system has free now (bound to port 0 and released), e.g. for the web
    server of a test or benchmark worker."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _accepting(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _metadata_ok(bootstrap: str, timeout: float, config: Mapping[str, Any] | None = None) -> bool:
    """True when a real Kafka metadata request against *bootstrap* succeeds."""
    return metadata_error(bootstrap, timeout, config) is None


def metadata_error(
    bootstrap: str, timeout: float, config: Mapping[str, Any] | None = None
) -> str | None:
    """None when a Kafka metadata request against *bootstrap* succeeds, else why not.

    *config* adds client settings, e.g. security from ``Settings.kafka_client_config()``.
    Rejected credentials or a failed TLS handshake are reported as soon as they happen
    ("authentication failed: ..."), not after *timeout*.
    """
    try:
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import AdminClient
    except ImportError:  # pragma: no cover - confluent-kafka is a hard dependency
        _host, _, port = bootstrap.rpartition(":")
        return None if _accepting(int(port), timeout) else f"nothing listens at {bootstrap}"
    quiet = logging.getLogger(f"{__name__}.librdkafka")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    errors: list[Any] = []
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000)),
            **(config or {}),
            "logger": quiet,
            "error_cb": errors.append,
        }
    )
    fatal = {
        KafkaError._AUTHENTICATION: "authentication failed",
        KafkaError.SASL_AUTHENTICATION_FAILED: "authentication failed",
        KafkaError.UNSUPPORTED_SASL_MECHANISM: "authentication failed",
        KafkaError._SSL: "TLS failed",
    }
    deadline = time.monotonic() + timeout
    last = f"no answer from {bootstrap} within {timeout:g} s"
    while True:
        remaining = deadline - time.monotonic()
        try:
            if admin.list_topics(timeout=max(0.1, min(1.0, remaining))).brokers:
                return None
        except Exception as exc:
            last = str(exc)
        admin.poll(0)  # serves error_cb
        for err in errors:
            if err.code() in fatal:
                return f"{fatal[err.code()]}: {err.str()}"
        if remaining <= 0:
            return errors[-1].str() if errors else last


# --------------------------------------------------------------------------- fetch


_POM_TEMPLATE = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId>
  <artifactId>kafka-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def _is_fetched(libs: Path) -> bool:
    return (libs / _COMPLETE_MARKER).is_file() and any(libs.glob("kafka_*.jar"))


def fetch(version: str | None = None) -> Path:
    """Download Kafka *version* and its runtime dependencies with Maven (idempotent).

    Returns the ``libs`` directory to put on the Java classpath.
    """
    resolved = kafka_version(version)
    libs = dist_dir(resolved)
    if _is_fetched(libs):
        return libs
    base = libs.parent
    with _file_lock(base.parent / f"{resolved}.lock"):
        if _is_fetched(libs):
            return libs
        mvn = shutil.which("mvn")
        if not mvn:
            raise BrokerError(
                "mvn not found: Maven 3.8+ is needed to fetch Kafka from Maven Central "
                "(or point KAFKA_BOOTSTRAP_SERVERS at an existing broker)"
            )
        _which_java()  # fail early with a clear message
        base.mkdir(parents=True, exist_ok=True)
        pom = base / "pom.xml"
        pom.write_text(
            _POM_TEMPLATE.format(scala=SCALA_BINARY_VERSION, version=resolved, log4j=LOG4J_VERSION)
        )
        staging = base / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        log.info("fetching Kafka %s with Maven into %s", resolved, libs)
        started = time.monotonic()
        try:
            result = subprocess.run(
                cmd,
                cwd=base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_MVN_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BrokerError(
                f"fetching Kafka {resolved} with Maven timed out after {_MVN_TIMEOUT_S:.0f}s"
            ) from None
        if result.returncode != 0 or not any(staging.glob("kafka_*.jar")):
            output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-40:])
            raise BrokerError(
                f"fetching Kafka {resolved} with Maven failed (exit {result.returncode})",
                output or None,
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (libs / _COMPLETE_MARKER).write_text(f"{resolved}\n")
        log.info("fetched Kafka %s in %.1fs", resolved, time.monotonic() - started)
    return libs


# --------------------------------------------------------------------------- start/stop


_LOG4J2_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by stream_app.broker: log4j2 config for the local Kafka broker. -->
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <ThresholdFilter level="WARN" onMatch="ACCEPT" onMismatch="DENY"/>
    </Console>
    <RollingFile name="FILE" fileName="${sys:kafka.logs.dir}/server.log"
                 filePattern="${sys:kafka.logs.dir}/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies>
        <SizeBasedTriggeringPolicy size="50 MB"/>
      </Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.network.RequestChannel$" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="INFO">
      <AppenderRef ref="STDOUT"/>
      <AppenderRef ref="FILE"/>
    </Root>
  </Loggers>
</Configuration>
"""


_SAFE_CREDENTIAL = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")


class _Sasl:
    """Extra SASL listeners of a test broker: SASL_PLAINTEXT, and SASL_SSL with a keystore."""

    def __init__(
        self,
        users: Mapping[str, str],
        port: int,
        ssl_port: int | None = None,
        keystore: Path | None = None,
        keystore_password: str | None = None,
    ) -> None:
        for name, password in users.items():
            if not (_SAFE_CREDENTIAL.match(name) and _SAFE_CREDENTIAL.match(password)):
                raise BrokerError("SASL user names and passwords may use only [A-Za-z0-9._~-]")
        if keystore is not None and not (
            keystore_password and _SAFE_CREDENTIAL.match(keystore_password)
        ):
            raise BrokerError("the TLS keystore needs a password of [A-Za-z0-9._~-]")
        self.users = dict(users)
        self.port = port
        self.ssl_port = ssl_port if keystore is not None else None
        self.keystore = keystore
        self.keystore_password = keystore_password

    def listeners(self) -> dict[str, int]:
        out = {"SASL_PLAINTEXT": self.port}
        if self.ssl_port is not None:
            out["SASL_SSL"] = self.ssl_port
        return out

    def properties(self) -> dict[str, str]:
        plain_users = " ".join(f'user_{name}="{pw}"' for name, pw in self.users.items())
        props = {"sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS)}
        for listener in self.listeners():
            prefix = f"listener.name.{listener.lower()}"
            props[f"{prefix}.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            )
            for mechanism in SASL_MECHANISMS[1:]:
                props[f"{prefix}.{mechanism.lower()}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
        if self.keystore is not None:
            prefix = "listener.name.sasl_ssl"
            props[f"{prefix}.ssl.keystore.type"] = "PKCS12"
            props[f"{prefix}.ssl.keystore.location"] = str(self.keystore)
            props[f"{prefix}.ssl.keystore.password"] = str(self.keystore_password)
            props[f"{prefix}.ssl.key.password"] = str(self.keystore_password)
        return props

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments creating the SCRAM credentials (KRaft)."""
        args = []
        for name, password in self.users.items():
            for mechanism in SASL_MECHANISMS[1:]:
                args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return args


def _server_properties(
    paths: _Paths, port: int, controller_port: int, sasl: _Sasl | None = None
) -> str:
    extra = sasl.listeners() if sasl else {}
    listeners = [f"PLAINTEXT://{HOST}:{port}", *(f"{n}://{HOST}:{p}" for n, p in extra.items())]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT", *(f"{n}:{n}" for n in extra)]
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": ",".join([*listeners, f"CONTROLLER://{HOST}:{controller_port}"]),
        "advertised.listeners": ",".join(listeners),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(protocols),
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(paths.data),
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        **(sasl.properties() if sasl else {}),
    }
    lines = ["# Generated by stream_app.broker -- rewritten on every start."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _java_base(java: str, libs: Path, paths: _Paths, heap: str | None = None) -> list[str]:
    cmd = [java]
    if heap:
        cmd.append(f"-Xmx{heap}")
    cmd += [
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={paths.logs}",
        f"-Dlog4j2.configurationFile={paths.log4j}",
        "-cp",
        f"{libs}{os.sep}*",
    ]
    return cmd


def _random_cluster_id() -> str:
    """A Kafka ``Uuid`` string (url-safe base64 of 16 random bytes, not starting with '-')."""
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _format_storage(
    java: str, libs: Path, paths: _Paths, extra_args: tuple[str, ...] | list[str] = ()
) -> None:
    """Format the KRaft log dir once (skipped when ``meta.properties`` exists)."""
    if paths.meta_properties.is_file():
        return
    # never formatted: anything left over is from an aborted attempt
    shutil.rmtree(paths.data, ignore_errors=True)
    paths.data.mkdir(parents=True, exist_ok=True)
    cmd = [
        *_java_base(java, libs, paths, heap="256m"),
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _random_cluster_id(),
        "-c",
        str(paths.properties),
        *extra_args,
    ]
    try:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_FORMAT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BrokerError(f"formatting {paths.data} timed out") from None
    if result.returncode != 0 or not paths.meta_properties.is_file():
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise BrokerError(
            f"formatting Kafka storage in {paths.data} failed (exit {result.returncode})",
            output or None,
        )


def _launch(cmd: list[str], log_file: Path) -> int:
    """Start *cmd* fully detached (new session, reparented to init); return its pid.

    A tiny ``sh`` backgrounds the JVM and exits, so the broker is never our child:
    no zombies, no ``ResourceWarning`` and it outlives this Python process.
    """
    script = 'log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
    result = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(log_file), *cmd],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=30,
        check=False,
    )
    try:
        return int(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BrokerError(
            "could not launch the Kafka broker process", result.stderr.strip() or None
        ) from None


def _wait_ready(
    pid: int, paths: _Paths, bootstrap: str, deadline: float, *, port: int, since: float | None
) -> None:
    """Poll until a metadata request succeeds; raise if *pid* dies or *deadline* passes."""
    while True:
        if not _pid_alive(pid):
            raise BrokerError(
                f"Kafka broker on port {port} exited during startup (logs: {paths.logs})",
                _log_tail(paths, since),
            )
        remaining = deadline - time.monotonic()
        if _accepting(port, timeout=min(1.0, max(0.1, remaining))) and _metadata_ok(
            bootstrap, timeout=max(0.5, min(5.0, remaining))
        ):
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka broker on port {port} (pid {pid}) did not answer a metadata request "
                f"in time (logs: {paths.logs})",
                _log_tail(paths, since),
            )
        time.sleep(0.25)


def _signal_and_wait(pid: int, paths: _Paths, timeout: float) -> None:
    """SIGTERM *pid*, wait up to *timeout* seconds, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    log.warning("Kafka broker pid %d ignored SIGTERM for %.0fs: killing it", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    if _pid_alive(pid):
        raise BrokerError(f"Kafka broker pid {pid} survived SIGKILL")


def start(
    port: int | None = None,
    *,
    wait_timeout: float = 60.0,
    version: str | None = None,
    controller_port: int | None = None,
    state: str | os.PathLike[str] | None = None,
    heap: str | None = None,
    sasl_users: Mapping[str, str] | None = None,
    ssl_keystore: str | os.PathLike[str] | None = None,
    ssl_keystore_password: str | None = None,
) -> str:
    """Start (or reuse) the local Kafka broker and return its bootstrap ``host:port``.

    Idempotent: a live broker started by us on *port* is reused. Fetches Kafka and
    formats storage when needed, launches the JVM detached and waits until a metadata
    request succeeds (*wait_timeout* seconds, counted from launch; a first fetch may take
    longer). *state* overrides :func:`state_dir` (data, pid file, logs). Raises
    :class:`BrokerError` if the port is taken by something else, or if the broker exits
    or does not answer in time (the message then includes the log tail).

    For security tests, *sasl_users* (``{"alice": "secret"}``) adds a ``SASL_PLAINTEXT``
    listener on port + 2 accepting PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for these users,
    and *ssl_keystore* (a PKCS12 file with the broker's key and certificate, protected by
    *ssl_keystore_password*) a ``SASL_SSL`` listener on port + 3. The PLAINTEXT listener
    stays (inter-broker and readiness). SCRAM credentials are created when the storage is
    first formatted, so give a broker with users its own *state* directory.
    """
    port, controller_port = _resolve_ports(port, controller_port)
    paths = _Paths(port, Path(state) if state is not None else None)
    sasl = None
    if sasl_users:
        sasl = _Sasl(
            sasl_users,
            port + 2,
            port + 3,
            Path(ssl_keystore).resolve() if ssl_keystore is not None else None,
            ssl_keystore_password,
        )
    bootstrap = f"{HOST}:{port}"
    with _file_lock(paths.lock_file):
        record = _read_pid_file(paths)
        if record is not None:
            since = record.get("started_at")
            deadline = time.monotonic() + wait_timeout
            _wait_ready(record["pid"], paths, bootstrap, deadline, port=port, since=since)
            return bootstrap
        for candidate in (port, controller_port, *(sasl.listeners().values() if sasl else ())):
            if _port_in_use(candidate):
                raise BrokerError(
                    f"port {candidate} on {HOST} is already in use by a process that is not a "
                    f"broker started from {paths.root}; stop it or pick another port "
                    "(IMPORTANCE_BROKER_PORT / --port)"
                )
        resolved = kafka_version(version)
        java = _which_java()
        libs = fetch(resolved)
        for directory in (paths.run, paths.logs, paths.data):
            directory.mkdir(parents=True, exist_ok=True)
        paths.log4j.write_text(_LOG4J2_XML)
        paths.properties.write_text(_server_properties(paths, port, controller_port, sasl))
        if sasl:  # holds the test users' passwords
            paths.properties.chmod(0o600)
        _format_storage(java, libs, paths, sasl.format_args() if sasl else [])
        heap = heap or _env("IMPORTANCE_KAFKA_HEAP") or DEFAULT_HEAP
        cmd = [*_java_base(java, libs, paths, heap), "kafka.Kafka", str(paths.properties)]
        if paths.stdout_log.exists():
            paths.stdout_log.replace(paths.stdout_log.with_name("stdout.log.1"))
        started_at = time.time()
        paths.stdout_log.write_text(f"=== Kafka {resolved} on {bootstrap}, {time.ctime()} ===\n")
        pid = _launch(cmd, paths.stdout_log)
        deadline = time.monotonic() + wait_timeout  # fetching/formatting do not count
        paths.pid_file.write_text(
            json.dumps(
                {
                    "pid": pid,
                    "port": port,
                    "controller_port": controller_port,
                    "version": resolved,
                    "started_at": started_at,
                }
            )
            + "\n"
        )
        try:
            _wait_ready(pid, paths, bootstrap, deadline, port=port, since=started_at)
        except BaseException:
            # do not leave a half-started broker behind
            with contextlib.suppress(BrokerError):
                _signal_and_wait(pid, paths, timeout=10)
            paths.pid_file.unlink(missing_ok=True)
            raise
        log.info("Kafka %s broker ready on %s (pid %d)", resolved, bootstrap, pid)
    return bootstrap


def stop(
    port: int | None = None,
    timeout: float = 30,
    *,
    state: str | os.PathLike[str] | None = None,
) -> bool:
    """Stop the local broker on *port* (SIGTERM, then SIGKILL after *timeout* seconds).

    Returns True when a running broker was stopped, False when none was running.
    """
    port, _ = _resolve_ports(port)
    paths = _Paths(port, Path(state) if state is not None else None)
    with _file_lock(paths.lock_file):
        record = _read_pid_file(paths)
        if record is None:
            return False
        _signal_and_wait(record["pid"], paths, timeout)
        paths.pid_file.unlink(missing_ok=True)
    log.info("stopped Kafka broker on port %d (pid %d)", port, record["pid"])
    return True


def status(
    port: int | None = None,
    *,
    state: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Describe the local broker on *port*: running/pid/version and its directories."""
    port, controller_port = _resolve_ports(port)
    paths = _Paths(port, Path(state) if state is not None else None)
    record = _read_pid_file(paths)
    version = (record or {}).get("version") or _env("IMPORTANCE_KAFKA_VERSION")
    version = version or DEFAULT_KAFKA_VERSION
    libs = kafka_dir() / "dist" / version / "libs"
    running = record is not None
    return {
        "running": running,
        "pid": record["pid"] if record else None,
        "port": port,
        "controller_port": (record or {}).get("controller_port", controller_port),
        "bootstrap_servers": f"{HOST}:{port}",
        "accepting": running and _accepting(port, timeout=0.5),
        "version": version,
        "fetched": _is_fetched(libs),
        "formatted": paths.meta_properties.is_file(),
        "kafka_dir": str(kafka_dir()),
        "dist_dir": str(libs),
        "state_dir": str(paths.root),
        "data_dir": str(paths.data),
        "log_dir": str(paths.logs),
        "pid_file": str(paths.pid_file),
    }


def reset(
    port: int | None = None,
    *,
    state: str | os.PathLike[str] | None = None,
) -> Path:
    """Stop the broker on *port* (if running) and delete its data; returns the data dir."""
    port, _ = _resolve_ports(port)
    stop(port, state=state)
    paths = _Paths(port, Path(state) if state is not None else None)
    with _file_lock(paths.lock_file):
        shutil.rmtree(paths.data, ignore_errors=True)
    return paths.data


def bootstrap_servers(explicit: str | None = None, *, start_if_needed: bool = False) -> str:
    """The Kafka to use, the one place that decides it: ``explicit`` (a ``--bootstrap``
    option, the validated setting) when given, else ``$KAFKA_BOOTSTRAP_SERVERS`` if set,
    else the local broker's address (the broker started first if asked)."""
    configured = explicit or _env("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        return configured
    if start_if_needed:
        return start()
    port, _ = _resolve_ports(None)
    return f"{HOST}:{port}"


# --------------------------------------------------------------------------- CLI


def _fail(exc: BrokerError) -> click.ClickException:
    return click.ClickException(exc.summary.splitlines()[0])


_port_option = click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Broker port (default: $IMPORTANCE_BROKER_PORT or 9092).",
)


@click.group(name="broker")
def broker_cli() -> None:
    """Manage the local single-node Kafka broker (fetched from Maven Central)."""


@broker_cli.command("fetch")
@click.option("--version", "version", default=None, help="Kafka version (default 4.1.1).")
def _fetch_cmd(version: str | None) -> None:
    """Download Kafka jars with Maven; prints the libs directory."""
    try:
        click.echo(str(fetch(version)))
    except BrokerError as exc:
        raise _fail(exc) from exc


@broker_cli.command("start")
@_port_option
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
def _start_cmd(port: int | None, timeout: float) -> None:
    """Start the broker (no-op if running); prints the bootstrap address."""
    try:
        click.echo(start(port, wait_timeout=timeout))
    except BrokerError as exc:
        if exc.details:
            click.echo(exc.details, err=True)
        raise _fail(exc) from exc


@broker_cli.command("stop")
@_port_option
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait.")
def _stop_cmd(port: int | None, timeout: float) -> None:
    """Stop the broker (no-op if not running)."""
    try:
        stopped = stop(port, timeout)
    except BrokerError as exc:
        raise _fail(exc) from exc
    resolved, _ = _resolve_ports(port)
    click.echo(f"stopped broker on port {resolved}" if stopped else f"no broker on port {resolved}")


@broker_cli.command("status")
@_port_option
def _status_cmd(port: int | None) -> None:
    """Print the broker status as JSON."""
    try:
        click.echo(json.dumps(status(port), indent=2))
    except BrokerError as exc:
        raise _fail(exc) from exc


@broker_cli.command("reset")
@_port_option
@click.confirmation_option(prompt="Stop the broker and delete all its topics?")
def _reset_cmd(port: int | None) -> None:
    """Stop the broker and delete its data directory."""
    try:
        click.echo(f"deleted {reset(port)}")
    except BrokerError as exc:
        raise _fail(exc) from exc


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    broker_cli(prog_name="python -m stream_app.broker")
