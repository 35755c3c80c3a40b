"""Run the Faust worker: ``importance worker`` (or ``python -m stream_app.worker worker``)."""

from __future__ import annotations

import gc
import sys

__all__ = [
    "EXIT_BAD_SETTINGS",
    "check_settings",
    "configure_limits",
    "run_worker",
    "tune_gc",
    "use_uvloop",
]

#: exit code of a worker whose settings are invalid (EX_CONFIG)
EXIT_BAD_SETTINGS = 78


def check_settings() -> None:
    """Validate every setting before anything else; on a bad one print one line per
    wrong variable and exit with :data:`EXIT_BAD_SETTINGS` (no topic created, no group
    joined)."""
    from stream_app.config import Settings, SettingsError, unknown_variables

    try:
        Settings.from_env()
    except SettingsError as exc:
        print(f"importance worker: invalid settings: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    unknown = unknown_variables()
    if unknown:
        print(
            f"importance worker: warning: unknown variables ignored: {', '.join(unknown)}",
            file=sys.stderr,
        )


def configure_limits(settings, bootstrap: str, output, dead_letters) -> None:
    """Read the message limits of the topics the worker writes (``max.message.bytes``)
    and the broker's ``message.max.bytes``: records over them are replaced by dead
    letters, and dead letters are cut to fit the dead-letter topic."""
    from stream_app.topics import MODEL_STATE_MAX_BYTES, model_state_topic, topic_limits

    topics = [
        settings.topic_scores,
        settings.topic_training,
        settings.topic_dlq,
        settings.topic_rolling,
        settings.topic_by_user,
        model_state_topic(settings),
    ]
    limits, broker_limit = topic_limits(settings, bootstrap, topics)
    output.set_limits(limits, broker_limit)
    dlq = min(limits.get(settings.topic_dlq, broker_limit), MODEL_STATE_MAX_BYTES)
    try:
        dead_letters.set_limit(dlq)
    except ValueError as exc:
        print(f"importance worker: {settings.topic_dlq}: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)


def run_worker(argv: list[str] | None = None) -> None:
    """Validate the settings, create the topics, read their limits, register the agents
    and hand over to Faust's worker command."""
    check_settings()
    use_uvloop()
    from stream_app.app import app, output, resolve_bootstrap, settings
    from stream_app.topics import ensure_topics

    bootstrap = resolve_bootstrap(settings)
    ensure_topics(settings, bootstrap)
    import agents.failures

    configure_limits(settings, bootstrap, output, agents.failures.dead_letters)
    import agents.decode
    import agents.health
    import agents.rolling
    import agents.score
    import stream_app.web.api  # noqa: F401
    from stream_app.offset_guard import (
        fetch_active_partitions_only,
        hold_streams_until_ready,
        seek_uncommitted_to_start,
    )

    # Faust empties the streams' queues at the end of a recovery: deliver nothing before
    hold_streams_until_ready(app)
    # and it drops records fetched while their partitions were not active: fetch only
    # active ones, and fetch again from the start where no offset was committed
    fetch_active_partitions_only()
    seek_uncommitted_to_start()
    shorten_fetch_wait()
    # every table is declared by now (the agents' modules): no need for Faust's pause
    from stream_app.faust_internals import start_tables_at_once

    start_tables_at_once()
    if settings.exactly_once:
        # offsets are committed in the output producer's transactions
        from stream_app.transactions import install

        install(app, output, settings, before_commit=agents.rolling.flush)
    else:
        # Faust flushes its producer before every offset commit: write out the rolling
        # batch and flush ours there too.
        output.install_barrier(app, before=agents.rolling.flush_async)
        if output.mirrors:
            install_store_copy(app, output)
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    tune_gc()
    app.main()


#: seconds between copies of delivered changelog records into the local table stores
#: (at_least_once; with exactly_once they are copied when their transaction commits)
STORE_COPY_INTERVAL_S = 0.25


def install_store_copy(app, output) -> None:
    """Copy delivered changelog records into the local stores every
    :data:`STORE_COPY_INTERVAL_S` seconds, besides every offset commit: what a SIGKILLed
    worker's successor reads again from the changelogs is what was delivered since."""

    @app.timer(interval=STORE_COPY_INTERVAL_S)
    async def copy_delivered() -> None:
        output.poll()  # serve the delivery reports waiting
        output.persist_mirrors()


#: how long the stream consumer's fetch requests wait at the broker for data (Faust: a
#: fixed 1,500 ms)
FETCH_MAX_WAIT_MS = 100

_fetch_wait_patched = False


def shorten_fetch_wait() -> None:
    """Make the stream consumer's fetch requests wait at most :data:`FETCH_MAX_WAIT_MS`
    at the broker.

    The broker answers the requests of one connection in order, and the consumer asks
    for offsets (the recovery's highwaters and start offsets) on the connection its
    fetches use: with Faust's 1,500 ms, each such question at a worker's start waited
    behind a fetch of partitions without new data, 1.0-1.5 s, three times before
    "Worker ready". An idle worker sends about ten fetch requests a second instead of
    one every 1.5 s."""
    global _fetch_wait_patched
    if _fetch_wait_patched:
        return
    from stream_app.faust_internals import patch_create_worker_consumer, set_fetch_max_wait

    def wrap(create):
        def _create_worker_consumer(self, transport):
            consumer = create(self, transport)
            set_fetch_max_wait(consumer, FETCH_MAX_WAIT_MS)
            return consumer

        return _create_worker_consumer

    patch_create_worker_consumer(wrap)
    _fetch_wait_patched = True


def tune_gc() -> None:
    """Collect the young generation every 50,000 allocations instead of 700.

    The worker allocates a few hundred objects per event and keeps millions alive
    (pending labels, rolling panes, models), so the default thresholds run the cyclic
    collector several hundred times a second over a growing heap; with these thresholds
    ``importance bench speed --system ours`` is faster, and raising them further gained
    little more. The objects created at start-up are frozen out of every collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def use_uvloop() -> bool:
    """Run on uvloop when it is installed (less CPU per consumed message than asyncio's
    own loop: docs/benchmarks.md, "What limits throughput"). Must run before the app gets
    its event loop."""
    try:
        import mode.loop
        import uvloop  # noqa: F401
    except ImportError:
        return False
    mode.loop.use("uvloop")
    return True


if __name__ == "__main__":
    run_worker()
