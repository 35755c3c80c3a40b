"""Scale out: throughput of 1, 2, 3… workers in one consumer group on 8 partitions.

``python -m stream_app.bench.scaling [--workers 1 2 3] [--events 40000] [--partitions 8]
[--guarantee at_least_once --guarantee exactly_once]``

For each worker count, a fresh app id (consumer group) and fresh topics with
``--partitions`` partitions: the workers start and the group settles (every worker
ready, then a pause), then ``--events`` labelled impressions are produced as fast as
possible and the rate is the number of scores over the time between the first and the
last score read back. Also reported: the workers' CPU seconds per 1,000 events (less
disturbed by other load than the rate), the machine's CPU use during the run (all cores;
the broker and the producer share them) and how the by-user partitions were spread.
With several ``--guarantee`` values each worker count runs once per processing guarantee,
back to back (``exactly_once`` scores are read ``read_committed``, as its readers would).
"""

from __future__ import annotations

import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from stream_app.bench.cluster import (
    Collector,
    Worker,
    ensure_topics_for,
    isolated_env,
    isolation_for,
    iter_labelled_events,
    produce,
)

__all__ = ["assigned_partitions", "run_scaling"]

_ASSIGNED = re.compile(r"Setting newly assigned partitions")


def assigned_partitions(log: str, topic: str) -> set[int]:
    """Partitions of ``topic`` in the last assignment a Faust worker logged."""
    start = None
    for match in _ASSIGNED.finditer(log):
        start = match.end()
    if start is None:
        return set()
    block = log[start:].split("for group", 1)[0]
    parts: set[int] = set()
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == topic:
            for piece in cells[1].strip("{}").split(","):
                piece = piece.strip()
                if "-" in piece:
                    a, b = piece.split("-", 1)
                    parts.update(range(int(a), int(b) + 1))
                elif piece:
                    parts.add(int(piece))
    return parts


def run_once(
    bootstrap: str,
    workers: int,
    events: int,
    partitions: int,
    guarantee: str = "at_least_once",
    log=print,
) -> dict[str, Any]:
    import psutil

    workdir = Path(tempfile.mkdtemp(prefix="scale-"))
    env = isolated_env(
        bootstrap,
        workdir,
        prefix=f"scale{workers}",
        IMPORTANCE_PARTITIONS=str(partitions),
        IMPORTANCE_PROCESSING_GUARANTEE=guarantee,
    )
    ensure_topics_for(env)
    by_user = f"{env['IMPORTANCE_APP_ID']}-events-by-user"
    group = [Worker.for_group(env, workdir, f"w{i + 1}") for i in range(workers)]
    scores = Collector(
        bootstrap, env["IMPORTANCE_TOPIC_SCORES"], isolation=isolation_for(guarantee)
    )
    try:
        for worker in group:
            worker.start(wait=False)
        for worker in group:
            worker.wait_ready(timeout=180)
        time.sleep(8)  # let the last rebalance settle
        spread = [sorted(assigned_partitions(w.log_text(), by_user)) for w in group]
        scores.start()
        cpu0 = [w.cpu_seconds() or 0.0 for w in group]
        psutil.cpu_percent(None)
        produce(bootstrap, env["IMPORTANCE_TOPIC_EVENTS"], iter_labelled_events(events))
        if not scores.wait(lambda c: c.distinct() >= events, timeout=1800):
            raise RuntimeError(f"stuck at {scores.distinct()} of {events} scored")
        busy = psutil.cpu_percent(None)
        cpu = sum((w.cpu_seconds() or 0.0) - c for w, c in zip(group, cpu0, strict=True))
        arrived = sorted(r["_arrived"] for r in scores.snapshot())
        seconds = arrived[-1] - arrived[0]
        result = {
            "workers": workers,
            "guarantee": guarantee,
            "events": events,
            "seconds": seconds,
            "rate": (len(arrived) - 1) / max(1e-9, seconds),
            "cpu_s_per_1k": 1000 * cpu / events,
            "machine_busy_pct": busy,
            "partitions": spread,
            "duplicates": scores.count() - scores.distinct(),
        }
        log(
            f"{workers} worker(s), {guarantee}: {result['rate']:.0f} events/s over "
            f"{seconds:.1f} s, "
            f"{result['cpu_s_per_1k']:.2f} worker CPU s per 1k events, machine "
            f"{busy:.0f} % busy, by-user partitions {spread}"
        )
        return result
    finally:
        scores.stop() if scores.is_alive() else None
        for worker in group:
            worker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run_scaling(
    bootstrap: str,
    counts: tuple[int, ...] = (1, 2, 3),
    events: int = 40_000,
    partitions: int = 8,
    repeat: int = 1,
    guarantees: tuple[str, ...] = ("at_least_once",),
    log=print,
) -> list[dict[str, Any]]:
    results = []
    for _ in range(repeat):
        for workers in counts:
            for guarantee in guarantees:
                results.append(run_once(bootstrap, workers, events, partitions, guarantee, log))
    return results


@click.command()
@click.option("--bootstrap", default=None, help="Kafka (default: $KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--workers", "counts", type=int, multiple=True, default=(1, 2, 3))
@click.option("--events", type=int, default=40_000, show_default=True)
@click.option("--partitions", type=int, default=8, show_default=True)
@click.option("--repeat", type=int, default=1, show_default=True)
@click.option(
    "--guarantee",
    "guarantees",
    type=click.Choice(["at_least_once", "exactly_once"]),
    multiple=True,
    default=("at_least_once",),
    show_default=True,
)
def main(
    bootstrap: str | None,
    counts: tuple[int, ...],
    events: int,
    partitions: int,
    repeat: int,
    guarantees: tuple[str, ...],
):
    """Events/s of 1, 2, 3 workers sharing PARTITIONS partitions."""
    from stream_app.broker import bootstrap_servers

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bootstrap = bootstrap_servers(bootstrap, start_if_needed=True)
    results = run_scaling(bootstrap, counts, events, partitions, repeat, guarantees)
    base: dict[str, float] = {}
    for r in results:
        if r["workers"] == min(counts):
            base.setdefault(r["guarantee"], r["rate"])  # the first run of each guarantee
    click.echo(
        "\n| workers | guarantee | events/s | speed-up | worker CPU s / 1k events |"
        " machine CPU busy | by-user partitions per worker |"
    )
    click.echo("|---:|---|---:|---:|---:|---:|---|")
    for r in results:
        speedup = r["rate"] / base[r["guarantee"]]
        click.echo(
            f"| {r['workers']} | {r['guarantee']} | {r['rate']:.0f} | {speedup:.2f}× | "
            f"{r['cpu_s_per_1k']:.2f} | {r['machine_busy_pct']:.0f} % | {r['partitions']} |"
        )


if __name__ == "__main__":
    main()
