"""Run the Faust worker: ``importance worker`` (or ``python -m stream_app.worker worker``)."""

from __future__ import annotations

import sys

__all__ = ["run_worker"]


def run_worker(argv: list[str] | None = None) -> None:
    """Create the topics, register the agents and hand over to Faust's worker command."""
    from stream_app.app import app, resolve_bootstrap, settings
    from stream_app.topics import ensure_topics

    ensure_topics(settings, resolve_bootstrap(settings))
    import agents.decode
    import agents.health
    import agents.rolling
    import agents.score  # noqa: F401
    import stream_app.web.api  # noqa: F401

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    app.main()


if __name__ == "__main__":
    run_worker()
