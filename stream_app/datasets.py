"""Readers that turn the project's datasets into event dicts of the ``events`` topic contract.

Three formats are supported by :func:`read_events`:

``taobao``
    The Taobao UserBehavior CSV (no header: ``user_id,item_id,category_id,behavior,timestamp``).
    Each row becomes ``{"event_id": "tb-<line>", "user_id", "item_id", "category_id",
    "type": <pv|cart|fav|buy>, "ts": <unix seconds>}``. The raw behaviour string is kept as the
    type; the service maps the aliases (pv -> view, buy -> purchase).
``open-bandit``
    ``all.csv`` of the Open Bandit Dataset sample (header ``,timestamp,item_id,position,click,
    propensity_score,user_feature_0..3,user-item_affinity_0..79``). Each row becomes an
    ``impression`` with ``position``, ``propensity``, ``label`` (= click), ``ts`` in epoch
    milliseconds and ``context`` holding the four user features. The dataset has no user id, so
    ``user_id`` is derived from the user features (see :func:`open_bandit_user_id`).
``jsonl``
    One JSON object per line, passed through unchanged and in file order (a replay file may be
    deliberately out of order). A line that is not valid JSON, or whose JSON value is not an
    object, is yielded as the raw line (``bytes``, without the line terminator) so that a replay
    can deliberately include malformed messages. Blank lines are skipped.

The CSV formats are yielded in event-time order: the file is scanned once to check that it is
already ordered (both shipped files are) and streamed; only an unordered file is loaded into
memory and stably sorted. Everything is read with the ``csv`` module, row by row.

This module does not import any Kafka client.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import orjson

from stream_app.paths import repo_root

__all__ = [
    "OBP_WHEEL_FILES",
    "OBP_WHEEL_REQUIREMENT",
    "EventFormat",
    "demo_dataset",
    "open_bandit_path",
    "open_bandit_user_id",
    "read_events",
    "repo_root",
    "shared_data_dir",
    "taobao_path",
]

EventFormat = Literal["jsonl", "taobao", "open-bandit"]

TAOBAO_FILENAME = "taobao_userbehavior_110k.csv"
OPEN_BANDIT_SUBDIR = Path("open_bandit") / "random_all"

#: The obp release whose wheel ships the Open Bandit Dataset sample.
OBP_WHEEL_REQUIREMENT = "obp==0.4.1"
#: Member of the obp wheel -> (file name in the cache dir, sha256 of its content).
OBP_WHEEL_FILES: dict[str, tuple[str, str]] = {
    "obp/dataset/obd/random/all/all.csv": (
        "all.csv",
        "7168295b6e0a9eabcf3392320a5dd434e542b68e705d5cd9491499af589812f1",
    ),
    "obp/dataset/obd/random/all/item_context.csv": (
        "item_context.csv",
        "eba04cc23d5f130a93ff174c5392986882b94c3839433cb8143870eaa6221358",
    ),
}

_OBD_REQUIRED_COLUMNS = (
    "timestamp",
    "item_id",
    "position",
    "click",
    "propensity_score",
    "user_feature_0",
    "user_feature_1",
    "user_feature_2",
    "user_feature_3",
)
_OBD_USER_FEATURES = _OBD_REQUIRED_COLUMNS[5:]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


# --------------------------------------------------------------------------- locations


def shared_data_dir() -> Path | None:
    """The shared real-data folder (env ``IMPORTANCE_SHARED_DATA``, else ``<repo>/../shared/data``).

    Returns None when the folder does not exist.
    """
    env = os.environ.get("IMPORTANCE_SHARED_DATA")
    if env:
        candidate: Path | None = Path(env).expanduser()
    else:
        root = repo_root()
        candidate = root.parent / "shared" / "data" if root is not None else None
    if candidate is not None and candidate.is_dir():
        return candidate.resolve()
    return None


def taobao_path() -> Path | None:
    """Path of the shared Taobao UserBehavior slice, or None when it is not available."""
    shared = shared_data_dir()
    if shared is None:
        return None
    path = shared / TAOBAO_FILENAME
    return path if path.is_file() else None


def cache_dir() -> Path:
    """Download cache: env ``IMPORTANCE_CACHE_DIR``, else ``<repo>/.cache/data`` in a checkout,
    else ``~/.cache/importance-stream/data``."""
    env = os.environ.get("IMPORTANCE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    if root is not None:
        return root / ".cache" / "data"
    return Path.home() / ".cache" / "importance-stream" / "data"


def _has_open_bandit_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name, _ in OBP_WHEEL_FILES.values())


def open_bandit_path() -> Path:
    """Directory holding the Open Bandit sample (``all.csv`` and ``item_context.csv``).

    Uses the shared data folder when it has the files; otherwise downloads the ``obp==0.4.1``
    wheel once with pip, extracts the two CSVs into ``<cache_dir()>/open_bandit/random_all`` and
    returns that directory. Raises RuntimeError when the download or the extraction fails.
    """
    shared = shared_data_dir()
    if shared is not None and _has_open_bandit_files(shared / OPEN_BANDIT_SUBDIR):
        return shared / OPEN_BANDIT_SUBDIR
    target = cache_dir() / OPEN_BANDIT_SUBDIR
    if _has_open_bandit_files(target):
        return target
    _fetch_open_bandit(target)
    return target


def _fetch_open_bandit(target: Path) -> None:
    """Download the obp wheel with pip and extract the two CSVs into ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="obp-", dir=target.parent) as tmp:
        wheel_dir = Path(tmp) / "wheel"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            OBP_WHEEL_REQUIREMENT,
            "-d",
            str(wheel_dir),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(
                f"could not fetch the Open Bandit sample: `{' '.join(cmd)}` failed: {exc}"
            ) from exc
        wheels = sorted(wheel_dir.glob("obp-*.whl")) if wheel_dir.is_dir() else []
        if proc.returncode != 0 or not wheels:
            detail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise RuntimeError(
                "could not fetch the Open Bandit sample: "
                f"`pip download {OBP_WHEEL_REQUIREMENT}` exited {proc.returncode}"
                f" (no network or no package index?): {detail}"
            )
        staging = Path(tmp) / "extracted"
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, (name, sha256) in OBP_WHEEL_FILES.items():
                try:
                    data = wheel.read(member)
                except KeyError as exc:
                    raise RuntimeError(f"{wheels[0].name} has no member {member}") from exc
                digest = hashlib.sha256(data).hexdigest()
                if digest != sha256:
                    raise RuntimeError(
                        f"{wheels[0].name}:{member} has sha256 {digest}, expected {sha256}"
                    )
                (staging / name).write_bytes(data)
        # Publish atomically so that a concurrent reader never sees half a directory.
        try:
            staging.rename(target)
        except OSError:
            if not _has_open_bandit_files(target):
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)


def demo_dataset() -> tuple[Path, str]:
    """The dataset for demos: the shared Taobao slice when present, else the Open Bandit sample.

    Returns ``(path, fmt)`` ready for :func:`read_events`; may download (see
    :func:`open_bandit_path`).
    """
    taobao = taobao_path()
    if taobao is not None:
        return taobao, "taobao"
    return open_bandit_path() / "all.csv", "open-bandit"


# --------------------------------------------------------------------------- readers


def read_events(
    path: str | os.PathLike[str],
    fmt: EventFormat,
    limit: int | None = None,
) -> Iterator[dict[str, Any] | bytes]:
    """Yield contract events from ``path`` in format ``fmt``, at most ``limit`` of them.

    CSV formats are yielded in event-time order; jsonl in file order, with unparsable or
    non-object lines yielded as raw ``bytes`` (see the module docstring). For ``open-bandit``
    ``path`` may also be the directory holding ``all.csv``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    p = Path(path)
    if fmt == "jsonl":
        return islice(_read_jsonl(p), limit)
    if fmt == "taobao":
        return _time_ordered(lambda: _read_taobao(p), limit)
    if fmt == "open-bandit":
        if p.is_dir():
            p = p / "all.csv"
        return _time_ordered(lambda: _read_open_bandit(p), limit)
    raise ValueError(f"unknown format {fmt!r}: expected jsonl, taobao or open-bandit")


def _time_ordered(
    make: Callable[[], Iterator[tuple[int, dict[str, Any]]]], limit: int | None
) -> Iterator[dict[str, Any]]:
    """Stream ``(ts, event)`` pairs as events in time order, sorting only if the file is not."""
    previous: int | None = None
    ordered = True
    for ts, _ in make():
        if previous is not None and ts < previous:
            ordered = False
            break
        previous = ts
    if ordered:
        for _, event in islice(make(), limit):
            yield event
        return
    pairs = list(make())
    pairs.sort(key=lambda pair: pair[0])  # stable: ties keep file order
    for _, event in islice(pairs, limit):
        yield event


def _read_jsonl(path: Path) -> Iterator[dict[str, Any] | bytes]:
    with path.open("rb") as f:
        for raw in f:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield line
                continue
            yield value if isinstance(value, dict) else line


def _int(value: str) -> int | str:
    """Ids stay ints when they look like ints, else strings."""
    try:
        return int(value)
    except ValueError:
        return value


def _read_taobao(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 5:
                raise ValueError(f"{path}:{line_no}: expected 5 columns, got {len(row)}: {row!r}")
            user_id, item_id, category_id, behavior, timestamp = (c.strip() for c in row)
            try:
                ts = int(timestamp)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: bad timestamp {timestamp!r}") from None
            yield (
                ts,
                {
                    "event_id": f"tb-{line_no}",
                    "user_id": _int(user_id),
                    "item_id": _int(item_id),
                    "category_id": _int(category_id),
                    "type": behavior,
                    "ts": ts,
                },
            )


def open_bandit_user_id(features: list[str] | tuple[str, ...]) -> str:
    """Stable pseudo user id for an Open Bandit row: the first 16 hex chars of
    sha256("user_feature_0|user_feature_1|user_feature_2|user_feature_3").

    >>> open_bandit_user_id(["a", "b", "c", "d"]) == open_bandit_user_id(("a", "b", "c", "d"))
    True
    >>> len(open_bandit_user_id(["a", "b", "c", "d"]))
    16
    """
    return hashlib.sha256("|".join(features).encode("utf-8")).hexdigest()[:16]


def _epoch_ms(value: str) -> int:
    """Epoch milliseconds of an ISO-8601 timestamp (naive means UTC)."""
    dt = datetime.fromisoformat(value.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // _MS


def _read_open_bandit(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        col = {name: i for i, name in enumerate(header)}
        missing = [c for c in _OBD_REQUIRED_COLUMNS if c not in col]
        if missing:
            raise ValueError(f"{path}: not an Open Bandit file, missing columns {missing}")
        index_col = 0 if header[0] in ("", "Unnamed: 0", "index") else None
        i_ts, i_item, i_pos = col["timestamp"], col["item_id"], col["position"]
        i_click, i_prop = col["click"], col["propensity_score"]
        i_feats = [col[c] for c in _OBD_USER_FEATURES]
        data_row = -1
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            data_row += 1
            try:
                row_index = int(row[index_col]) if index_col is not None else data_row
                ts = _epoch_ms(row[i_ts])
                feats = [row[i] for i in i_feats]
                event = {
                    "event_id": f"obd-{row_index}",
                    "user_id": open_bandit_user_id(feats),
                    "item_id": int(row[i_item]),
                    "type": "impression",
                    "ts": ts,
                    "position": int(row[i_pos]),
                    "propensity": float(row[i_prop]),
                    "label": int(row[i_click]),
                    "context": dict(zip(_OBD_USER_FEATURES, feats, strict=True)),
                }
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{path}:{line_no}: malformed Open Bandit row: {exc}") from None
            yield ts, event
