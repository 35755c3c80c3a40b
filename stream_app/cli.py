"""The ``importance`` command line: broker, worker, replay, score, demo, tail, bench."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import orjson

from stream_app.bench import bench_cli
from stream_app.broker import broker_cli
from stream_app.replay import replay_cmd

__all__ = ["main"]

FORMATS = click.Choice(["jsonl", "taobao", "open-bandit"])


@click.group()
@click.version_option(package_name="importance-stream")
def main() -> None:
    """importance-stream: score the training importance of behaviour events on Kafka."""


main.add_command(broker_cli, name="broker")
main.add_command(replay_cmd, name="replay")
main.add_command(bench_cli, name="bench")


def env_settings():
    """The settings from the environment; invalid ones end the command with one line per
    wrong variable (exit code 78)."""
    from stream_app.config import Settings, SettingsError
    from stream_app.worker import EXIT_BAD_SETTINGS

    try:
        return Settings.from_env()
    except SettingsError as exc:
        error = click.ClickException(f"invalid settings: {exc}")
        error.exit_code = EXIT_BAD_SETTINGS
        raise error from None


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.argument("faust_args", nargs=-1, type=click.UNPROCESSED)
def worker(loglevel: str, faust_args: tuple[str, ...]) -> None:
    """Run the Faust worker (extra arguments go to ``faust worker``)."""
    from stream_app.worker import use_uvloop

    env_settings()  # every setting checked before anything connects, creates or joins
    use_uvloop()  # before the app exists
    from stream_app.app import resolve_bootstrap, settings
    from stream_app.broker import metadata_error
    from stream_app.worker import run_worker

    bootstrap = resolve_bootstrap(settings)
    error = metadata_error(bootstrap, 10.0, settings.kafka_client_config())
    if error is not None:
        raise click.ClickException(
            f"Kafka at {bootstrap} ({settings.security_protocol}) is not usable: {error}. "
            "Run `importance broker start`, or check KAFKA_BOOTSTRAP_SERVERS and the "
            "KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* / KAFKA_SSL_* settings"
        )
    run_worker(["worker", "--loglevel", loglevel, *faust_args])


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default=None, help="Default: from the file.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--limit", type=int, default=None, help="Score at most N events.")
@click.option(
    "--training",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the training records (kept examples) a one-partition worker publishes.",
)
@click.option(
    "--sampler",
    type=str,
    default=None,
    help="Label-time sampler (default: IMPORTANCE_SAMPLER).",
)
@click.option(
    "--target-rate",
    type=float,
    default=None,
    help="Target kept fraction of labelled examples (default: IMPORTANCE_TARGET_KEEP_RATE).",
)
@click.option(
    "--salt",
    type=int,
    default=None,
    help="Salt of the sampling coin (default: IMPORTANCE_SAMPLER_SALT).",
)
@click.option(
    "--sampler-features",
    type=str,
    default=None,
    help="The trainer's feature groups for the fisher and leverage samplers, e.g. "
    "item:15,category:60,hour (default: IMPORTANCE_SAMPLER_FEATURES).",
)
def score(
    file: Path,
    fmt: str | None,
    output: Path,
    limit: int | None,
    training: Path | None,
    sampler: str | None,
    target_rate: float | None,
    salt: int | None,
    sampler_features: str | None,
) -> None:
    """Score a file offline with the worker's pipeline (no Kafka) into JSON lines: score
    records, and with --training the training records of the kept examples."""
    from models.pipeline import Outcome, PipelineConfig
    from stream_app.config import Settings, SettingsError
    from stream_app.datasets import read_events
    from stream_app.offline import process_events, score_record
    from stream_app.replay import infer_format

    env_settings()  # the environment's own problems, reported as for the worker
    options = {
        "IMPORTANCE_SAMPLER": sampler,
        "IMPORTANCE_TARGET_KEEP_RATE": target_rate,
        "IMPORTANCE_SAMPLER_SALT": salt,
        "IMPORTANCE_SAMPLER_FEATURES": sampler_features,
    }
    given = {k: str(v) for k, v in options.items() if v is not None}
    try:  # the options validated as the worker validates its settings
        settings = Settings.from_env({**os.environ, **given})
    except SettingsError as exc:
        raise click.UsageError(_option_error(exc)) from None
    config = PipelineConfig.from_settings(settings)
    fmt = fmt or infer_format(file)
    n = errors = decided = kept = positives = 0
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(output.open("wb"))
        train = stack.enter_context(training.open("wb")) if training is not None else None
        for outcome in process_events(read_events(file, fmt, limit=limit), config):
            if not isinstance(outcome, Outcome):
                out.write(orjson.dumps(outcome) + b"\n")
                errors += 1
                continue
            n += 1
            out.write(orjson.dumps(score_record(outcome)) + b"\n")
            decided += len(outcome.decided)
            kept += outcome.kept
            positives += sum(label for _, label, _ in outcome.decided)
            if train is not None:
                for _user, record in outcome.training:
                    train.write(orjson.dumps(record) + b"\n")
    seconds = time.perf_counter() - started
    click.echo(
        f"scored {n} events ({errors} invalid) in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):,.0f} events/s) -> {output}; "
        f"{decided} labelled examples ({positives} positive), "
        f"kept {kept} ({kept / max(decided, 1):.1%}) with sampler "
        f"{config.importance_sampler!r}" + (f" -> {training}" if training is not None else "")
    )


def _option_error(exc: Exception) -> str:
    """A settings error in the words of the command's options."""
    import re

    options = {
        "IMPORTANCE_SAMPLER_FEATURES": "--sampler-features",
        "IMPORTANCE_SAMPLER_SALT": "--salt",
        "IMPORTANCE_SAMPLER": "--sampler",
        "IMPORTANCE_TARGET_KEEP_RATE": "--target-rate",
    }
    pattern = r"\b(" + "|".join(options) + r")="
    return re.sub(pattern, lambda m: f"{options[m[1]]} (or {m[1]})=", str(exc))


@main.command()
@click.option("--limit", type=int, default=None, help="Replay at most N events.")
@click.option("--rate", type=float, default=2000.0, show_default=True, help="Events per second.")
@click.option(
    "--keep-running/--no-keep-running",
    default=True,
    show_default=True,
    help="Leave the worker running after the replay until Ctrl-C.",
)
def demo(limit: int | None, rate: float, keep_running: bool) -> None:
    """Broker, worker and a replay of demo data together."""
    from stream_app.broker import bootstrap_servers
    from stream_app.datasets import demo_dataset, read_events
    from stream_app.replay import replay
    from stream_app.topics import ensure_topics

    settings = env_settings()
    security = settings.kafka_client_config()
    bootstrap = bootstrap_servers(start_if_needed=True)
    click.echo(f"Kafka broker: {bootstrap}")
    ensure_topics(settings, bootstrap)
    path, fmt = demo_dataset()
    click.echo(f"demo data: {path} ({fmt})")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    log_path = Path(settings.data_dir) / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app.worker", "worker", "--loglevel", "info"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    click.echo(f"worker started (pid {proc.pid}), log: {log_path}")
    try:
        before = _end_offsets(bootstrap, settings.topic_scores, security)
        stats = replay(
            read_events(path, fmt, limit=limit),
            bootstrap,
            topic=settings.topic_events,
            rate=rate,
            limit=limit,
            producer_config=security,
        )
        click.echo(f"replayed {stats.sent} events in {stats.seconds:.1f} s")
        _wait_for_scores(bootstrap, settings.topic_scores, before, stats.sent, proc, security)
        click.echo(
            "\nWhere to look:\n"
            f"  scores:    {settings.topic_scores} (JSON, keyed by user_id)\n"
            f"  training:  {settings.topic_training}\n"
            f"  rejected:  {settings.topic_dlq}\n"
            f"  rolling:   {settings.topic_rolling} (per item, category, user)\n"
            f"  dashboard: http://{settings.web_host}:{settings.web_port}/"
            "  (API: /api/stats, /api/top/items; Prometheus: /metrics)\n"
            f"  e.g.       importance tail {settings.topic_scores} -n 5"
        )
        if keep_running:
            click.echo("worker keeps running; Ctrl-C stops it.")
            proc.wait()
    except KeyboardInterrupt:
        pass
    except click.ClickException:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        click.echo("\n".join(["worker log (last lines):", *tail]), err=True)
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _end_offsets(
    bootstrap: str, topic: str, security: dict[str, str] | None = None, retry_s: float = 30.0
) -> dict[int, int]:
    """A topic's end offset per partition (empty when it does not exist yet).

    Right after the topic was created its partitions may have no leader yet ("Not leader
    for partition"): retriable errors are retried for up to ``retry_s`` seconds."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "importance-demo", **(security or {})}
    )
    # what a topic whose partitions have no leader yet (just created) answers
    no_leader_yet = {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
    }
    deadline = time.monotonic() + retry_s
    try:
        while True:
            try:
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if meta is None or meta.error is not None:
                    return {}
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in meta.partitions
                }
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                waiting = isinstance(error, KafkaError) and (
                    error.code() in no_leader_yet or error.retriable()
                )
                if not waiting or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def _wait_for_scores(
    bootstrap: str,
    topic: str,
    start: dict[int, int],
    expected: int,
    proc: subprocess.Popen,
    security: dict[str, str] | None = None,
    timeout: float = 600.0,
) -> None:
    """Show the worker catching up until ``expected`` records were published to ``topic``
    after the offsets ``start``. Records are counted, not offsets: with ``exactly_once``
    transaction markers take offsets too (and only committed records are read)."""
    from confluent_kafka import Consumer, TopicPartition
    from tqdm import tqdm

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "importance-demo",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **(security or {}),
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in meta.partitions])
    deadline = time.monotonic() + timeout
    done = 0
    try:
        with tqdm(total=expected, desc="scored", unit="ev", unit_scale=True) as bar:
            while done < expected and time.monotonic() < deadline and proc.poll() is None:
                records = [m for m in consumer.consume(10_000, 0.5) if not m.error()]
                done += len(records)
                bar.update(len(records))
    finally:
        consumer.close()
    if proc.poll() is not None:
        raise click.ClickException(f"the worker exited with code {proc.returncode}")
    if done < expected:
        click.echo(f"worker has published {done} of {expected} records so far; see its log")


@main.command()
@click.argument("topic")
@click.option("-n", "count", type=int, default=10, show_default=True, help="Messages to show.")
@click.option("--bootstrap", default=None, help="Default: KAFKA_BOOTSTRAP_SERVERS or local.")
def tail(topic: str, count: int, bootstrap: str | None) -> None:
    """Print the last N messages of a topic (all partitions, newest last)."""
    from confluent_kafka import Consumer, TopicPartition

    from stream_app.broker import bootstrap_servers

    settings = env_settings()
    bootstrap = bootstrap_servers(bootstrap)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "importance-tail",
            "enable.auto.commit": False,
            **settings.kafka_client_config(),
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise click.ClickException(f"no topic {topic!r} at {bootstrap}")
        tps, remaining = [], 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            start = max(low, high - count)
            if high > start:
                tps.append(TopicPartition(topic, p, start))
                remaining += high - start
        consumer.assign(tps)
        messages = []
        while remaining > 0:
            msg = consumer.poll(10)
            if msg is None:
                break
            remaining -= 1
            if not msg.error():
                messages.append(msg)
        messages.sort(key=lambda m: m.timestamp()[1])
        for msg in messages[-count:]:
            click.echo(msg.value().decode("utf-8", "replace") if msg.value() else "null")
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
