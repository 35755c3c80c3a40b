"""Unit tests of stream_app.datasets (no broker needed)."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
from pathlib import Path

import orjson
import pytest

from stream_app import datasets
from stream_app.datasets import (
    open_bandit_user_id,
    read_events,
    shared_data_dir,
    taobao_path,
)
from stream_app.replay import infer_format

CONTRACT_TYPES = {"view", "click", "cart", "fav", "purchase", "impression"}
TYPE_ALIASES = {"pv": "view", "buy": "purchase", "addtocart": "cart", "transaction": "purchase"}

TAOBAO_ROWS = """\
1,101,11,pv,1511658000
2,102,12,pv,1511658000
1,103,11,cart,1511658001
3,101,11,fav,1511658005

2,104,13,buy,1511658010
"""

# Real header shape: unnamed index column, 4 user features, 80 user-item affinities.
OBD_HEADER = ",timestamp,item_id,position,click,propensity_score," + ",".join(
    [f"user_feature_{i}" for i in range(4)] + [f"user-item_affinity_{i}" for i in range(80)]
)
OBD_FEATURES = (
    ("81ce123cbb5bd8ce818f60fb3586bba5", "03a5648a76832f83c859d46bc06cb64a", "c2e4f76c", "f975"),
    ("81ce123cbb5bd8ce818f60fb3586bba5", "03a5648a76832f83c859d46bc06cb64a", "2723d2eb", "c39b"),
    ("cef3390ed299c09874189c387777674a", "03a5648a76832f83c859d46bc06cb64a", "9b2d331c", "270b"),
)
OBD_ROWS = [
    ("0", "2019-11-24 00:00:34.762830+00:00", "14", "3", "0", "0.0125"),
    ("1", "2019-11-24 00:00:53.965051+00:00", "27", "1", "1", "0.0125"),
    ("2", "2019-11-24 00:01:56.727734+00:00", "5", "2", "0", "0.0125"),
]


def _obd_csv(rows: list[tuple[str, ...]], features: tuple[tuple[str, ...], ...]) -> str:
    lines = [OBD_HEADER]
    for row, feats in zip(rows, features, strict=True):
        lines.append(",".join([*row, *feats, *(["0.0"] * 80)]))
    return "\n".join(lines) + "\n"


@pytest.fixture
def taobao_file(tmp_path: Path) -> Path:
    path = tmp_path / "UserBehavior_small.csv"
    path.write_text(TAOBAO_ROWS)
    return path


@pytest.fixture
def obd_file(tmp_path: Path) -> Path:
    path = tmp_path / "all.csv"
    path.write_text(_obd_csv(OBD_ROWS, OBD_FEATURES))
    return path


def assert_contract(event: dict) -> None:
    """The fields every event from a CSV reader must carry, with contract types."""
    assert isinstance(event["user_id"], (str, int))
    assert isinstance(event["item_id"], (str, int))
    assert TYPE_ALIASES.get(event["type"], event["type"]) in CONTRACT_TYPES
    assert isinstance(event["ts"], int) and event["ts"] > 0
    assert isinstance(event["event_id"], str) and event["event_id"]
    if "position" in event:
        assert isinstance(event["position"], int) and event["position"] >= 1
    if "propensity" in event:
        assert 0 < event["propensity"] <= 1
    if "label" in event:
        assert event["label"] in (0, 1)
    if "context" in event:
        ctx = event["context"]
        assert len(ctx) <= 64
        assert all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in ctx.items())
    orjson.dumps(event)  # serialisable as is


# --------------------------------------------------------------------------- taobao


def test_taobao_parsing(taobao_file: Path) -> None:
    events = list(read_events(taobao_file, "taobao"))
    assert len(events) == 5  # the blank line is skipped
    assert events[0] == {
        "event_id": "tb-1",
        "user_id": 1,
        "item_id": 101,
        "category_id": 11,
        "type": "pv",
        "ts": 1511658000,
    }
    # event ids follow file line numbers (line 5 is blank)
    assert [e["event_id"] for e in events] == ["tb-1", "tb-2", "tb-3", "tb-4", "tb-6"]
    assert [e["type"] for e in events] == ["pv", "pv", "cart", "fav", "buy"]
    for e in events:
        assert_contract(e)


def test_taobao_limit(taobao_file: Path) -> None:
    assert [e["event_id"] for e in read_events(taobao_file, "taobao", limit=2)] == ["tb-1", "tb-2"]
    assert list(read_events(taobao_file, "taobao", limit=0)) == []
    assert len(list(read_events(taobao_file, "taobao", limit=100))) == 5
    with pytest.raises(ValueError):
        read_events(taobao_file, "taobao", limit=-1)


def test_taobao_unordered_file_is_sorted_stably(tmp_path: Path) -> None:
    path = tmp_path / "shuffled.csv"
    path.write_text("1,1,1,pv,30\n2,2,1,pv,10\n3,3,1,buy,20\n4,4,1,fav,10\n")
    events = list(read_events(path, "taobao"))
    assert [e["ts"] for e in events] == [10, 10, 20, 30]
    assert [e["event_id"] for e in events] == ["tb-2", "tb-4", "tb-3", "tb-1"]
    # limit applies after sorting: the earliest events, not the first lines
    assert [e["event_id"] for e in read_events(path, "taobao", limit=2)] == ["tb-2", "tb-4"]


def test_taobao_malformed_row_is_reported_with_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("1,1,1,pv,10\n1,1,pv,11\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        list(read_events(path, "taobao"))


# --------------------------------------------------------------------------- open bandit


def test_open_bandit_parsing(obd_file: Path) -> None:
    events = list(read_events(obd_file, "open-bandit"))
    assert len(events) == 3
    first = events[0]
    assert first["event_id"] == "obd-0"
    assert first["type"] == "impression"
    assert first["item_id"] == 14
    assert first["position"] == 3
    assert first["propensity"] == pytest.approx(0.0125)
    assert first["label"] == 0
    assert first["ts"] == 1574553634762  # 2019-11-24T00:00:34.762830Z in epoch ms
    assert first["context"] == {f"user_feature_{i}": OBD_FEATURES[0][i] for i in range(4)}
    expected_uid = hashlib.sha256("|".join(OBD_FEATURES[0]).encode()).hexdigest()[:16]
    assert first["user_id"] == expected_uid == open_bandit_user_id(OBD_FEATURES[0])
    assert events[1]["label"] == 1 and events[1]["position"] == 1
    assert [e["event_id"] for e in events] == ["obd-0", "obd-1", "obd-2"]
    assert len({e["user_id"] for e in events}) == 3  # different features -> different users
    for e in events:
        assert_contract(e)
    # a directory holding all.csv is accepted as well
    assert list(read_events(obd_file.parent, "open-bandit")) == events


def test_open_bandit_ordering_and_limit(tmp_path: Path) -> None:
    rows = [OBD_ROWS[2], OBD_ROWS[0], OBD_ROWS[1]]
    path = tmp_path / "all.csv"
    path.write_text(_obd_csv(rows, OBD_FEATURES))
    events = list(read_events(path, "open-bandit"))
    assert [e["event_id"] for e in events] == ["obd-0", "obd-1", "obd-2"]
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert [e["event_id"] for e in read_events(path, "open-bandit", limit=1)] == ["obd-0"]


def test_open_bandit_rejects_other_csv(taobao_file: Path) -> None:
    with pytest.raises(ValueError, match="not an Open Bandit file"):
        list(read_events(taobao_file, "open-bandit"))


# --------------------------------------------------------------------------- jsonl


def test_jsonl_passthrough_and_malformed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good1 = {"user_id": "u1", "item_id": 7, "type": "view", "ts": 20, "context": {"a": 1}}
    good2 = {"user_id": 2, "item_id": "i", "type": "click", "ts": 10}  # out of order on purpose
    path.write_bytes(
        orjson.dumps(good1)
        + b"\n{not json\r\n\n"
        + orjson.dumps(good2)
        + b"\n[1, 2]\n"
        + b"\xff\xfe garbage"  # last line without newline, invalid UTF-8
    )
    items = list(read_events(path, "jsonl"))
    assert items == [good1, b"{not json", good2, b"[1, 2]", b"\xff\xfe garbage"]
    assert list(read_events(path, "jsonl", limit=2)) == [good1, b"{not json"]


def test_unknown_format(taobao_file: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        read_events(taobao_file, "parquet")  # type: ignore[arg-type]


def test_infer_format(tmp_path: Path, taobao_file: Path, obd_file: Path) -> None:
    (tmp_path / "x.jsonl").write_text("{}\n")
    assert infer_format(tmp_path / "x.jsonl") == "jsonl"
    assert infer_format(taobao_file) == "taobao"
    assert infer_format(obd_file) == "open-bandit"
    assert infer_format(obd_file.parent) == "open-bandit"
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="--format"):
        infer_format(tmp_path / "other.csv")


# --------------------------------------------------------------------------- locations


def test_shared_data_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPORTANCE_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path.resolve()
    assert taobao_path() is None
    (tmp_path / datasets.TAOBAO_FILENAME).write_text(TAOBAO_ROWS)
    assert taobao_path() == tmp_path.resolve() / datasets.TAOBAO_FILENAME
    assert datasets.demo_dataset() == (taobao_path(), "taobao")
    monkeypatch.setenv("IMPORTANCE_SHARED_DATA", str(tmp_path / "missing"))
    assert shared_data_dir() is None


def test_open_bandit_path_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without shared data, an already-populated cache is used and nothing is downloaded."""
    monkeypatch.setenv("IMPORTANCE_SHARED_DATA", str(tmp_path / "missing"))
    monkeypatch.setenv("IMPORTANCE_CACHE_DIR", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "open_bandit" / "random_all"
    target.mkdir(parents=True)
    (target / "all.csv").write_text(_obd_csv(OBD_ROWS, OBD_FEATURES))
    (target / "item_context.csv").write_text(",item_id\n0,0\n")

    def no_download(_target: Path) -> None:
        raise AssertionError("must not download when the cache is populated")

    monkeypatch.setattr(datasets, "_fetch_open_bandit", no_download)
    assert datasets.open_bandit_path() == target
    assert datasets.demo_dataset() == (target / "all.csv", "open-bandit")


def test_open_bandit_path_reports_pip_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPORTANCE_SHARED_DATA", str(tmp_path / "missing"))
    monkeypatch.setenv("IMPORTANCE_CACHE_DIR", str(tmp_path / "cache"))

    def failing_run(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(datasets.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match=r"pip download obp==0\.4\.1.*network is unreachable"):
        datasets.open_bandit_path()
    assert not (tmp_path / "cache" / "open_bandit" / "random_all").exists()


# --------------------------------------------------------------------------- real shared data

_SHARED = shared_data_dir()
_TAOBAO = taobao_path()


def _skip_without_taobao() -> Path:
    if _TAOBAO is None:
        pytest.skip(
            f"../shared/data absent: no {datasets.TAOBAO_FILENAME} (set IMPORTANCE_SHARED_DATA)"
        )
    return _TAOBAO


def _skip_without_shared_obd() -> Path:
    directory = _SHARED / datasets.OPEN_BANDIT_SUBDIR if _SHARED is not None else None
    if directory is None or not (directory / "all.csv").is_file():
        pytest.skip("../shared/data absent: no open_bandit/random_all/all.csv")
    return directory


def test_real_taobao_first_1000_well_formed() -> None:
    path = _skip_without_taobao()
    events = list(read_events(path, "taobao", limit=1000))
    assert len(events) == 1000
    for e in events:
        assert_contract(e)
        assert e["type"] in {"pv", "cart", "fav", "buy"}
        assert isinstance(e["category_id"], int)
    assert len({e["event_id"] for e in events}) == 1000
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    assert 1511650000 < ts[0] < 1511700000  # 2017-11-26


def test_real_taobao_all_events_ordered_and_unique() -> None:
    path = _skip_without_taobao()
    count = 0
    ids: set[str] = set()
    previous = 0
    for e in read_events(path, "taobao"):
        count += 1
        ids.add(e["event_id"])
        assert e["ts"] >= previous
        previous = e["ts"]
    assert count == 110_300  # as documented in shared/data/README.md
    assert len(ids) == count


def test_real_open_bandit() -> None:
    directory = _skip_without_shared_obd()
    events = list(read_events(directory / "all.csv", "open-bandit"))
    assert len(events) == 10_000
    for e in itertools.islice(events, 500):
        assert_contract(e)
    assert len({e["event_id"] for e in events}) == 10_000
    assert {e["position"] for e in events} == {1, 2, 3}
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    clicks = sum(e["label"] for e in events)
    assert 0 < clicks < 100  # click rate about 0.4 %


# --------------------------------------------------------------------------- obp wheel download


def test_open_bandit_download_from_obp_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetch the obp wheel with pip for real; skips when there is no package index."""
    monkeypatch.setenv("IMPORTANCE_SHARED_DATA", str(tmp_path / "missing"))
    monkeypatch.setenv("IMPORTANCE_CACHE_DIR", str(tmp_path / "cache"))
    if os.environ.get("PIP_NO_INDEX"):
        pytest.skip("PIP_NO_INDEX is set")
    try:
        directory = datasets.open_bandit_path()
    except RuntimeError as exc:
        pytest.skip(f"obp wheel download failed (no network?): {exc}")
    assert directory == tmp_path / "cache" / "open_bandit" / "random_all"
    for name, sha256 in datasets.OBP_WHEEL_FILES.values():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == sha256
    events = list(read_events(directory, "open-bandit", limit=50))
    assert len(events) == 50
    for e in events:
        assert_contract(e)
    # second call is served from the cache
    assert datasets.open_bandit_path() == directory
    # and matches the shared copy when there is one
    if _SHARED is not None and (_SHARED / datasets.OPEN_BANDIT_SUBDIR / "all.csv").is_file():
        shared = (_SHARED / datasets.OPEN_BANDIT_SUBDIR / "all.csv").read_bytes()
        assert (directory / "all.csv").read_bytes() == shared
