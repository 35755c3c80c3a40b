"""``importance bench restart``: restart time against state size.

For each state size (``--users``: distinct users, each with a pending label and rolling
state: one event each, all within the attribution window) one worker builds the state
with the local store, then is SIGKILLed, and each of these is timed from the new
process's start (or, for the failover, from the SIGKILL):

* ``memory``: a restart with ``IMPORTANCE_TABLE_STORE=memory`` (every changelog read from
  the beginning: the service before the local store);
* ``rocksdb``: a restart on the same machine with the local store (its copies, then the
  changelog tail);
* ``failover``: a second worker with ``IMPORTANCE_STANDBY_REPLICAS=1`` keeps standby
  copies; the first is SIGKILLed and the survivor takes every partition over (the group
  notices the death after the session timeout, 10 s).

Each row: seconds until ``/readyz`` answers 200, until the first probe event (sent once
``/readyz`` is 200) is scored, until one probe per partition is scored, and the
changelog records read again. The table goes to ``docs/scaling.md`` (section
``restart``) with ``--write-docs``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

__all__ = ["RestartRow", "restart_cmd", "run_restart_bench"]

BASE_TS = 1_700_000_000.0
PARTITIONS = 4


@dataclass
class RestartRow:
    users: int
    mode: str
    ready_s: float
    first_scored_s: float
    all_scored_s: float
    replayed: int
    loaded: int
    changelog_records: int
    recovery_s: float | None
    note: str = ""


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int | None, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return None, None


def state_events(users: int, prefix: str) -> Any:
    """One view per user (``u<i>``), 1,000 items in 50 categories, event times 1 ms apart
    (all within the attribution window: every user keeps a pending label)."""
    for i in range(users):
        item = i % 1000
        yield {
            "event_id": f"{prefix}-{i}",
            "user_id": f"u{i}",
            "item_id": f"i{item}",
            "category_id": f"c{item % 50}",
            "type": "view",
            "ts": BASE_TS + i * 0.001,
            "position": 1 + i % 10,
        }


def probe_events(prefix: str, partitions: int) -> list[dict[str, Any]]:
    """One event per partition of the by-user topic (new users), later than the state."""
    from stream_app.output import partition_for

    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        user = f"probe-{prefix}-{i}"
        found.setdefault(partition_for(user.encode(), partitions), user)
        i += 1
    return [
        {
            "event_id": f"{prefix}-probe-{p}",
            "user_id": user,
            "item_id": "i1",
            "category_id": "c1",
            "type": "view",
            "ts": BASE_TS + 2000.0,
            "position": 1,
        }
        for p, user in sorted(found.items())
    ]


class ScoreWatch:
    """Reads the scores topic from its current end, noting when given event ids appear."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"restart-bench-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        meta = self.consumer.list_topics(topic, timeout=30).topics[topic]
        assign = []
        for p in meta.partitions:
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), 10)
            assign.append(TopicPartition(topic, p, high))
        self.consumer.assign(assign)
        self.seen: dict[str, float] = {}

    def wait(self, ids: set[str], timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ids <= self.seen.keys():
            for msg in self.consumer.consume(num_messages=1000, timeout=0.05):
                if msg.error():
                    continue
                try:
                    event_id = orjson.loads(msg.value()).get("event_id")
                except Exception:
                    continue
                if event_id in ids and event_id not in self.seen:
                    self.seen[event_id] = time.monotonic()
        return {i: t for i, t in self.seen.items() if i in ids}

    def close(self) -> None:
        self.consumer.close()


def _tables(port: int) -> dict[str, Any]:
    status, body = _get(port, "/api/stats", timeout=30)
    return (body or {}).get("tables", {}) if status == 200 else {}


def _wait_ready(worker: Any, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"{worker.name} exited:\n{worker.log_tail()}")
        status, _ = _get(worker.web_port, "/readyz", timeout=2)
        if status == 200:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"{worker.name} not ready after {timeout} s:\n{worker.log_tail()}")


def _wait_scored(worker: Any, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        status, body = _get(worker.web_port, "/api/stats", timeout=30)
        scored = (body or {}).get("totals", {}).get("scored", 0) if status == 200 else last
        if scored >= n:
            return
        last = scored
        time.sleep(1.0)
    raise TimeoutError(f"{worker.name}: {last} of {n} scored after {timeout} s")


def _settle(worker: Any, quiet_s: float = 3.0, timeout: float = 600.0) -> None:
    """Until the table sizes and standby copies stop changing (the re-keyed rolling
    contributions are in, the standbys caught up)."""
    deadline = time.monotonic() + timeout
    before = None
    while time.monotonic() < deadline:
        # table sizes, and the standby copies' records (a standby that caught up)
        sizes = {t: (v.get("keys"), v.get("standby")) for t, v in _tables(worker.web_port).items()}
        if sizes and sizes == before:
            return
        before = sizes
        time.sleep(quiet_s)


def _changelog_records(bootstrap: str, app_id: str, tables: list[str]) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex})
    total = 0
    try:
        for table in tables:
            topic = f"{app_id}-{table}-changelog"
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            for p in meta.partitions if meta else ():
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), 10)
                total += high - low
    finally:
        consumer.close()
    return total


def _measure(
    bootstrap: str,
    worker: Any,
    started: float,
    probes: list[dict[str, Any]],
    scores_topic: str,
    events_topic: str,
    timeout: float,
) -> tuple[float, float, float, dict[str, Any]]:
    from stream_app.bench.cluster import produce

    ready = _wait_ready(worker, timeout)
    watch = ScoreWatch(bootstrap, scores_topic)
    try:
        produce(bootstrap, events_topic, probes)
        seen = watch.wait({p["event_id"] for p in probes}, timeout)
    finally:
        watch.close()
    if len(seen) < len(probes):
        raise TimeoutError(f"{len(seen)} of {len(probes)} probes scored:\n{worker.log_tail()}")
    _status, body = _get(worker.web_port, "/api/stats", timeout=30)
    return (
        ready - started,
        min(seen.values()) - started,
        max(seen.values()) - started,
        body or {},
    )


def _sums(body: dict[str, Any], before: dict[str, Any] | None = None) -> tuple[int, int]:
    tables = body.get("tables", {})
    old = (before or {}).get("tables", {})

    def total(field: str) -> int:
        return sum(
            int(v.get(field, 0)) - int(old.get(t, {}).get(field, 0)) for t, v in tables.items()
        )

    return total("replayed"), total("loaded")


def run_restart_bench(
    bootstrap: str,
    sizes: list[int],
    modes: list[str],
    workdir: Path,
    timeout: float = 1800.0,
    echo: Any = print,
    static: bool = True,
) -> list[RestartRow]:
    """Build each state size once and time the restarts in ``modes``."""
    from stream_app.bench.cluster import Worker, ensure_topics_for, isolated_env, produce

    rows: list[RestartRow] = []
    for users in sizes:
        env = isolated_env(
            bootstrap,
            workdir,
            prefix=f"rs{users}",
            IMPORTANCE_PARTITIONS=str(PARTITIONS),
            IMPORTANCE_TABLE_STORE="rocksdb",
            IMPORTANCE_STANDBY_REPLICAS="1",
            IMPORTANCE_MAX_PENDING_PER_PARTITION=str(max(200_000, users)),
            IMPORTANCE_SNAPSHOT_INTERVAL_S="5",
            # static membership: a restarted worker takes its partitions back at once
            IMPORTANCE_GROUP_INSTANCE_ID="auto" if static else "",
        )
        env.pop("IMPORTANCE_API_TOKEN", None)
        ensure_topics_for(env)
        app_id = env["IMPORTANCE_APP_ID"]
        events_topic, scores_topic = env["IMPORTANCE_TOPIC_EVENTS"], env["IMPORTANCE_TOPIC_SCORES"]
        first = Worker.for_group(env, workdir, "first")
        echo(f"[{users:,} users] building the state ({app_id})")
        built = time.monotonic()
        first.start(timeout=timeout)
        produce(bootstrap, events_topic, state_events(users, app_id))
        _wait_scored(first, users, timeout)
        _settle(first)
        tables = sorted(_tables(first.web_port))
        records = _changelog_records(bootstrap, app_id, tables)
        keys = sum(v.get("keys", 0) for v in _tables(first.web_port).values())
        echo(
            f"[{users:,} users] state built in {time.monotonic() - built:.0f} s: {keys:,} "
            f"table keys, {records:,} changelog records"
        )
        first.kill()
        for mode in modes:
            probes = probe_events(f"{app_id}-{mode}", PARTITIONS)
            if mode in ("memory", "rocksdb"):
                worker = first
                if mode == "memory":
                    worker = Worker.for_group(env, workdir, "memory")
                    worker.env["IMPORTANCE_TABLE_STORE"] = "memory"
                    worker.env["IMPORTANCE_STANDBY_REPLICAS"] = "0"
                    worker.env["IMPORTANCE_WEB_PORT"] = first.env["IMPORTANCE_WEB_PORT"]
                started = time.monotonic()
                worker.start(wait=False)
                ready, first_s, all_s, body = _measure(
                    bootstrap, worker, started, probes, scores_topic, events_topic, timeout
                )
                replayed, loaded = _sums(body)
                note = "SIGKILL, restart on the same machine; times from the new process's start"
                worker.kill()
            elif mode == "failover":
                first.start(timeout=timeout)
                survivor = Worker.for_group(env, workdir, "standby")
                survivor.start(timeout=timeout)
                # both ready, the survivor's standby copies caught up
                _wait_ready(first, timeout)
                _wait_ready(survivor, timeout)
                _settle(survivor)
                before = _get(survivor.web_port, "/api/stats", timeout=30)[1] or {}
                first.kill()
                started = time.monotonic()
                time.sleep(1.0)  # /readyz still answers 200 until the group rebalances
                _wait_rebalanced(survivor, before, timeout)
                ready, first_s, all_s, body = _measure(
                    bootstrap, survivor, started, probes, scores_topic, events_topic, timeout
                )
                replayed, loaded = _sums(body, before)
                note = (
                    "SIGKILL of one of two workers; times from the SIGKILL (session timeout 10 s)"
                )
                survivor.kill()
            else:
                raise click.BadParameter(f"unknown mode {mode!r}")
            recovery = (body.get("recovery") or {}).get("last_recovery_s")
            row = RestartRow(
                users, mode, ready, first_s, all_s, replayed, loaded, records, recovery, note
            )
            rows.append(row)
            echo(
                f"[{users:,} users] {mode}: /readyz 200 after {ready:.1f} s, first probe scored "
                f"{first_s:.1f} s, all {all_s:.1f} s; {replayed:,} changelog records read, "
                f"{loaded:,} loaded from local copies"
            )
        for name in ("first", "memory", "standby"):
            shutil.rmtree(workdir / f"{app_id}-{name}", ignore_errors=True)
    return rows


def _wait_rebalanced(worker: Any, before: dict[str, Any], timeout: float) -> None:
    """Until ``worker`` holds more partitions in memory than ``before`` and is ready."""
    old = sum(v.get("partitions_loaded", 0) for v in before.get("tables", {}).values())
    old += sum(v.get("partitions_without_copy", 0) for v in before.get("tables", {}).values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tables = _tables(worker.web_port)
        now = sum(v.get("partitions_loaded", 0) for v in tables.values())
        now += sum(v.get("partitions_without_copy", 0) for v in tables.values())
        if now > old:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{worker.name} took nothing over:\n{worker.log_tail()}")


def render(rows: list[RestartRow]) -> str:
    lines = [
        "| users | restart | `/readyz` 200 | first new event scored | one per partition "
        "scored | changelog records read | loaded from local copies | changelog records |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "memory": "memory store (before)",
        "rocksdb": "local store, same machine",
        "failover": "failover to a standby",
    }
    for r in rows:
        lines.append(
            f"| {r.users:,} | {names.get(r.mode, r.mode)} | {r.ready_s:.1f} s | "
            f"{r.first_scored_s:.1f} s | {r.all_scored_s:.1f} s | {r.replayed:,} | "
            f"{r.loaded:,} | {r.changelog_records:,} |"
        )
    return "\n".join(lines)


@click.command(name="restart")
@click.option("--users", default="10000,100000", show_default=True, help="State sizes.")
@click.option(
    "--modes", default="memory,rocksdb,failover", show_default=True, help="Restarts to time."
)
@click.option("--timeout", default=1800.0, show_default=True, help="Seconds per wait.")
@click.option(
    "--static/--dynamic",
    default=True,
    show_default=True,
    help="Workers with IMPORTANCE_GROUP_INSTANCE_ID=auto (static group membership).",
)
@click.option("--write-docs/--no-write-docs", default=False, help="Update docs/scaling.md.")
def restart_cmd(users: str, modes: str, timeout: float, static: bool, write_docs: bool) -> None:
    """Restart time (SIGKILL → /readyz 200 → first new event scored) against state size:
    memory store, local store, failover to a standby."""
    from stream_app.app import resolve_bootstrap
    from stream_app.config import Settings

    bootstrap = resolve_bootstrap(Settings.from_env())
    sizes = [int(s) for s in users.split(",") if s.strip()]
    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="importance-restart-"))
    try:
        rows = run_restart_bench(bootstrap, sizes, wanted, workdir, timeout, click.echo, static)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = render(rows)
    click.echo(table)
    if write_docs:
        from stream_app.bench import docs_dir, update_doc_section

        machine = f"{os.cpu_count()} cores"
        body = (
            f"Measured with `importance bench restart --users {users} --modes {modes} "
            f"{'--static' if static else '--dynamic'}` "
            f"({machine}, shared; local broker; {PARTITIONS} partitions). Times are from the "
            "new process's start (restarts) or from the SIGKILL (failover: the group notices "
            "the death after the 10 s session timeout).\n\n" + table
        )
        path = update_doc_section("restart", body, docs_dir() / "scaling.md")
        click.echo(f"wrote {path}")
