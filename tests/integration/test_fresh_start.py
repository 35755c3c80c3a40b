"""``importance worker`` from a fresh checkout (no ``.cache``) and from any working
directory: the data directory is created with its parents."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from stream_app.bench.cluster import wait_worker_ready
from stream_app.broker import free_port
from stream_app.config import repo_root

pytestmark = pytest.mark.integration

#: what a clone holds that the worker needs (the rest: docs, tests, benchmarks)
CHECKOUT = ("stream_app", "agents", "models", "pyproject.toml")


def fresh_checkout(target: Path) -> Path:
    """A copy of the package sources without any ``.cache`` or ``__pycache__``."""
    root = repo_root()
    assert root is not None, "the tests run from a checkout"
    target.mkdir(parents=True)
    for name in CHECKOUT:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target / name)
    return target


def run_worker(bootstrap: str, cwd: Path, log_path: Path, pythonpath: Path | None, **env: str):
    suffix = uuid.uuid4().hex[:8]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("IMPORTANCE_", "KAFKA_"))}
    environ.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "IMPORTANCE_APP_ID": f"fresh-{suffix}",
            "IMPORTANCE_TOPIC_EVENTS": f"events-{suffix}",
            "IMPORTANCE_TOPIC_SCORES": f"scores-{suffix}",
            "IMPORTANCE_TOPIC_DLQ": f"dlq-{suffix}",
            "IMPORTANCE_TOPIC_TRAINING": f"training-{suffix}",
            "IMPORTANCE_TOPIC_ROLLING": f"rolling-{suffix}",
            "IMPORTANCE_PARTITIONS": "2",
            "IMPORTANCE_WEB_PORT": str(free_port()),
            **env,
        }
    )
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    # the command line's entry point, as `importance worker` runs it
    code = "from stream_app.cli import main; main()"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "worker"],
            cwd=cwd,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_fresh_checkout_worker_starts_from_another_directory(bootstrap, tmp_path):
    """A clone without ``.cache``, started from an unrelated working directory: the
    default data directory (``<checkout>/.cache/worker``) is created, the worker gets
    ready."""
    checkout = fresh_checkout(tmp_path / "clone")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log_path = tmp_path / "worker.log"
    proc = run_worker(bootstrap, elsewhere, log_path, checkout)
    try:
        wait_worker_ready(proc, log_path, 0, 120)
    finally:
        stop(proc)
    log = log_path.read_text(errors="replace")
    assert "FileNotFoundError" not in log, log[-3000:]
    assert (checkout / ".cache" / "worker").is_dir(), "the checkout's own data directory"
    assert not (elsewhere / ".cache").exists(), "nothing written to the working directory"


def test_data_dir_with_missing_parents(bootstrap, tmp_path):
    """``IMPORTANCE_DATA_DIR`` naming a directory whose parents do not exist (relative:
    to the working directory) is created with them."""
    cwd = tmp_path / "run"
    cwd.mkdir()
    log_path = tmp_path / "worker.log"
    proc = run_worker(bootstrap, cwd, log_path, None, IMPORTANCE_DATA_DIR="state/deep/er/worker")
    try:
        wait_worker_ready(proc, log_path, 0, 120)
    finally:
        stop(proc)
    assert (cwd / "state" / "deep" / "er" / "worker").is_dir()
