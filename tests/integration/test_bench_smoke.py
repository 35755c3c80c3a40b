"""Smoke tests of ``importance bench speed`` and ``importance bench memory`` (quick sizes).

They check structure and sanity only (counts match, every event scored), never timings:
the machine is shared and noisy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream_app.bench import bench_cli, update_doc_section

pytestmark = pytest.mark.integration


def test_speed_quick_against_the_broker(tmp_path: Path) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS is not set")
    from stream_app.bench.speed import SpeedConfig, render_markdown, run_speed

    cfg = SpeedConfig.quick(
        bootstrap=bootstrap,
        events=4_000,
        textbook_events=300,
        floor_events=1_000,
        latency_events=1_500,
        micro_events=300,
        rate=1_000.0,
        log=lambda _msg: None,
    )
    r = run_speed(cfg)
    assert set(r["systems"]) == {"ours", "faust-floor", "textbook", "ceiling"}
    for kind, res in r["systems"].items():
        expected = {"textbook": cfg.textbook_events, "faust-floor": cfg.floor_events}.get(
            kind, cfg.events
        )
        assert res["input_events"] == expected
        assert res["scored"] == expected, kind  # every input event got its score
        assert res["outputs"] >= expected
        assert res["events_per_s"] > 0 and res["peak_rss_mb"] > 0
    for kind in ("ours", "ceiling"):
        lat = r["systems"][kind]["latency"]
        assert lat["scored"] == cfg.latency_events, kind
        a = lat["arrival_ms"]
        assert 0 <= a["p50"] <= a["p95"] <= a["p99"] <= a["max"]
    assert r["transport"]["events"] == cfg.latency_events
    assert set(r["ratios"]) == {"ours / textbook", "ours / ceiling"}
    assert all(v > 0 and math.isfinite(v) for v in r["ratios"].values())
    assert all(us > 0 for us in r["micro_us"].values())
    text = render_markdown(r)
    assert "| ours (Faust worker) | 4,000 |" in text


def test_memory_quick_via_cli(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    result = CliRunner().invoke(
        bench_cli, ["memory", "--quick", "--events", "12000", "--every", "3000", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    r = orjson.loads(out.read_bytes())
    assert r["events"] == 12_000
    assert [s["events"] for s in r["samples"]] == [0, 3000, 6000, 9000, 12000]
    assert all(s["rss_mb"] > 0 for s in r["samples"])
    assert 0 < r["distinct_users"] <= r["config"]["users"]
    last = r["samples"][-1]
    assert last["pending"] <= r["settings"]["max_pending_per_partition"] * 4
    assert "## Memory" in result.output


def test_doc_sections_are_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    update_doc_section("speed", "speed v1", doc)
    text = doc.read_text()
    for name in ("speed", "memory", "quality"):
        assert f"<!-- {name}:start -->" in text and f"<!-- {name}:end -->" in text
    update_doc_section("quality", "quality numbers", doc)
    update_doc_section("speed", "speed v2", doc)
    text = doc.read_text()
    assert "speed v2" in text and "speed v1" not in text and "quality numbers" in text
