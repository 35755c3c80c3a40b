"""Does ``IMPORTANCE_PROCESSING_GUARANTEE=exactly_once`` give exactly-once output?

``python -m stream_app.bench.eos [--events 10000] [--bootstrap HOST:PORT]``

Runs a worker with ``exactly_once``, produces ``--events`` labelled events, SIGKILLs the
worker once a third of them are scored, restarts it, waits up to ``--timeout`` seconds
for every event, then reads ``importance-scores`` twice, with ``isolation.level``
``read_committed`` and ``read_uncommitted`` (and ``training-samples`` likewise), and
prints records, distinct events, duplicates and missing events for each, plus whether
the worker stalled. ``read_committed`` readers should see every event once;
``read_uncommitted`` ones also see what the killed worker's open transaction held (see
``stream_app/transactions.py`` and ``docs/scaling.md``, "Exactly-once").
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click
import orjson

from stream_app.bench.cluster import (
    Collector,
    Worker,
    ensure_topics_for,
    isolated_env,
    labelled_events,
    produce,
)

__all__ = ["read_topic", "run_eos"]


def read_topic(bootstrap: str, topic: str, isolation: str) -> list[dict]:
    """Every record of ``topic`` as a consumer with ``isolation`` sees it now."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"eos-{uuid.uuid4().hex}",
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    out: list[dict] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        done: set[int] = set()
        deadline = time.monotonic() + 60
        while len(done) < len(meta.partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                if msg.error():
                    done.add(msg.partition())
                else:
                    out.append(orjson.loads(msg.value()))
    finally:
        consumer.close()
    return out


def run_eos(bootstrap: str, events: int = 10_000, timeout: float = 240.0, log=print) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="eos-"))
    env = isolated_env(
        bootstrap, workdir, prefix="eos", IMPORTANCE_PROCESSING_GUARANTEE="exactly_once"
    )
    ensure_topics_for(env)
    worker = Worker.for_group(env, workdir, "w1")
    scores = Collector(bootstrap, env["IMPORTANCE_TOPIC_SCORES"])
    try:
        worker.start()
        scores.start()
        produce(bootstrap, env["IMPORTANCE_TOPIC_EVENTS"], labelled_events(events, prefix="eos"))
        if not scores.wait(lambda c: c.distinct() >= events // 3, timeout=timeout):
            log(f"stalled before the kill at {scores.distinct()} scored")
        killed_at = scores.distinct()
        worker.kill()
        worker.start()
        log(f"killed after {killed_at} scored events and restarted")
        complete = scores.wait(lambda c: c.distinct() >= events, timeout=timeout)
        stalled_at = None if complete else scores.distinct()
        time.sleep(3)
        result = {"events": events, "killed_after": killed_at, "stalled_at": stalled_at}
        for name, topic in (
            ("importance-scores", env["IMPORTANCE_TOPIC_SCORES"]),
            ("training-samples", env["IMPORTANCE_TOPIC_TRAINING"]),
        ):
            for isolation in ("read_committed", "read_uncommitted"):
                records = read_topic(bootstrap, topic, isolation)
                ids = [r["event_id"] for r in records]
                row = {
                    "records": len(records),
                    "distinct": len(set(ids)),
                    "duplicates": len(ids) - len(set(ids)),
                }
                if name == "importance-scores":
                    row["missing"] = events - len(set(ids))
                result[f"{name} {isolation}"] = row
                log(f"{name}, {isolation}: {row}")
        result["transactional"] = "exactly_once: outputs, changelogs" in worker.log_text()
        log(f"worker committed in transactions: {result['transactional']}")
        if stalled_at is not None:
            log(f"the worker stopped making progress at {stalled_at} of {events} events")
        result["log_tail"] = worker.log_tail(20)
        return result
    finally:
        scores.stop() if scores.is_alive() else None
        worker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@click.command()
@click.option("--bootstrap", default=None, help="Kafka (default: $KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--events", type=int, default=10_000, show_default=True)
@click.option("--timeout", type=float, default=240.0, show_default=True)
def main(bootstrap: str | None, events: int, timeout: float) -> None:
    """Kill an exactly_once worker once; count duplicates as read_committed sees them."""
    from stream_app.broker import bootstrap_servers

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_eos(bootstrap_servers(bootstrap, start_if_needed=True), events, timeout)


if __name__ == "__main__":
    main()
