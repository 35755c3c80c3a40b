"""Slow consumer: an input burst of 10 × the worker's sustainable rate for a minute.

``python -m stream_app.bench.burst [--factor 10] [--seconds 60] [--bootstrap HOST:PORT]``

1. *Sustainable rate.* A backlog of ``--calibrate`` events is produced before a fresh
   worker starts; the worker's rate is the number of scores over the time between the
   first and the last score it publishes.
2. *Burst.* Events are produced at ``factor`` × that rate for ``seconds`` seconds while
   the worker runs. Every second the script samples the worker's RSS (psutil), its CPU,
   the consumer group's lag on the input topic and on the internal by-user topic, and
   the scores published so far, until every burst event is scored.

It prints a table of the samples and a summary (peak RSS, RSS at the end, peak lag, drain
time). The worker is expected to apply back-pressure: Kafka holds the backlog, the
worker's memory stays flat while lag grows and then drains.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from stream_app.bench.cluster import (
    BASE_TS,
    Collector,
    Worker,
    ensure_topics_for,
    group_lag,
    isolated_env,
    iter_labelled_events,
    produce,
)

__all__ = ["run_burst"]


def run_burst(
    bootstrap: str,
    *,
    factor: float = 10.0,
    seconds: float = 60.0,
    calibrate: int = 15_000,
    partitions: int = 4,
    drain_timeout: float = 3600.0,
    log=print,
) -> dict[str, Any]:
    """Measure the sustainable rate, then a burst; return rates, samples and a summary."""
    workdir = Path(tempfile.mkdtemp(prefix="burst-"))
    env = isolated_env(bootstrap, workdir, prefix="burst", IMPORTANCE_PARTITIONS=str(partitions))
    ensure_topics_for(env)
    app_id = env["IMPORTANCE_APP_ID"]
    events_topic = env["IMPORTANCE_TOPIC_EVENTS"]
    by_user = f"{app_id}-events-by-user"
    worker = Worker.for_group(env, workdir, "w1")
    scores = Collector(bootstrap, env["IMPORTANCE_TOPIC_SCORES"])
    try:
        # 1. sustainable rate from a backlog
        produce(bootstrap, events_topic, iter_labelled_events(calibrate, prefix="cal", seed=1))
        scores.start()
        worker.start()
        rss_idle = worker.rss()
        if not scores.wait(lambda c: c.distinct() >= calibrate, timeout=drain_timeout):
            raise RuntimeError(f"calibration stuck at {scores.distinct()}\n{worker.log_tail()}")
        arrived = sorted(r["_arrived"] for r in scores.snapshot())
        sustainable = (len(arrived) - 1) / max(1e-9, arrived[-1] - arrived[0])
        rss_calibrated = worker.rss()
        log(
            f"sustainable rate {sustainable:.0f} events/s over {calibrate} events; "
            f"RSS {rss_idle / 2**20:.0f} MiB idle, {rss_calibrated / 2**20:.0f} MiB after"
        )
        time.sleep(3)  # let the worker commit and idle

        # 2. burst at factor × sustainable for `seconds`
        rate = factor * sustainable
        n_burst = int(rate * seconds)
        # the same users and items, later in event time
        burst = iter_labelled_events(
            n_burst, prefix="burst", seed=1, start_ts=BASE_TS + 2 * calibrate
        )
        samples: list[dict[str, Any]] = []
        produced = {"n": 0}
        t0 = time.monotonic()
        base_scored = scores.distinct()

        def producer() -> None:
            produced["n"] = produce(bootstrap, events_topic, burst, rate=rate)

        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        cpu0 = worker.cpu_seconds() or 0.0
        last_cpu, last_t = cpu0, t0
        drained_at = None
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            lag = group_lag(bootstrap, app_id, [events_topic, by_user])
            cpu = worker.cpu_seconds() or last_cpu
            row = {
                "t": round(now - t0, 1),
                "offered": round(min(now - t0, seconds) * rate) if thread.is_alive() else n_burst,
                "scored": scores.distinct() - base_scored,
                "lag_events": lag[events_topic],
                "lag_by_user": lag[by_user],
                "rss_mib": round((worker.rss() or 0) / 2**20, 1),
                "cpu": round((cpu - last_cpu) / max(1e-9, now - last_t), 2),
            }
            last_cpu, last_t = cpu, now
            samples.append(row)
            if len(samples) % 10 == 1:
                log(
                    "t={t:>6}s offered={offered:>7} scored={scored:>7} lag events="
                    "{lag_events:>7} by-user={lag_by_user:>7} RSS={rss_mib:>6} MiB "
                    "cpu={cpu}".format(**row)
                )
            if not worker.alive():
                raise RuntimeError(f"worker died during the burst\n{worker.log_tail()}")
            if not thread.is_alive() and row["scored"] >= n_burst and drained_at is None:
                drained_at = now - t0
                break
            if now - t0 > drain_timeout:
                break
        thread.join(5)
        peak = max(samples, key=lambda r: r["rss_mib"])
        summary = {
            "sustainable_rate": sustainable,
            "burst_rate": rate,
            "burst_events": n_burst,
            "burst_seconds": seconds,
            "rss_before_mib": (rss_calibrated or 0) / 2**20,
            "rss_peak_mib": peak["rss_mib"],
            "rss_peak_at_s": peak["t"],
            "rss_end_mib": samples[-1]["rss_mib"],
            "lag_peak": max(r["lag_events"] + r["lag_by_user"] for r in samples),
            "drained_after_s": drained_at,
            "burst_throughput": n_burst / drained_at if drained_at else None,
        }
        return {"summary": summary, "samples": samples}
    finally:
        scores.stop() if scores.is_alive() else None
        worker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@click.command()
@click.option("--bootstrap", default=None, help="Kafka (default: $KAFKA_BOOTSTRAP_SERVERS).")
@click.option("--factor", type=float, default=10.0, show_default=True)
@click.option("--seconds", type=float, default=60.0, show_default=True)
@click.option("--calibrate", type=int, default=15_000, show_default=True)
@click.option("--partitions", type=int, default=4, show_default=True)
def main(bootstrap: str | None, factor: float, seconds: float, calibrate: int, partitions: int):
    """Burst of FACTOR × the sustainable rate for SECONDS: worker RSS and lag over time."""
    from stream_app.broker import bootstrap_servers

    # SIGTERM ends the run through its `finally` (the worker is stopped, files removed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bootstrap = bootstrap_servers(bootstrap, start_if_needed=True)
    result = run_burst(
        bootstrap, factor=factor, seconds=seconds, calibrate=calibrate, partitions=partitions
    )
    click.echo("\n| t s | offered | scored | lag events | lag by-user | RSS MiB | CPU |")
    click.echo("|---:|---:|---:|---:|---:|---:|---:|")
    samples = result["samples"]
    step = max(1, len(samples) // 40)
    for row in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        click.echo(
            "| {t} | {offered} | {scored} | {lag_events} | {lag_by_user} | {rss_mib} | "
            "{cpu} |".format(**row)
        )
    click.echo("")
    for key, value in result["summary"].items():
        with contextlib.suppress(TypeError, ValueError):
            value = round(value, 1)
        click.echo(f"{key}: {value}")


if __name__ == "__main__":
    main()
