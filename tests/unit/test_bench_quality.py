"""Smoke test of ``importance bench quality`` in quick mode on tiny synthetic inputs
(no shared data, no network)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from stream_app.bench.quality import (
    BUDGETS,
    FULL,
    IMPORTANCE,
    IMPORTANCE_COIN,
    IMPORTANCE_LABEL,
    IMPORTANCE_MATCHED,
    NEGDS,
    SECTION_END,
    SECTION_START,
    UNIFORM,
    QualityDataset,
    quality_cmd,
    run_quality,
    write_section,
)

T0 = 1511658000


def _taobao_csv(path: Path, n_views: int = 1500) -> Path:
    """Views of 40 items by 200 users; views of items 0-7 are often carted a minute later."""
    rng = random.Random(7)
    rows: list[tuple[int, int, int, str, int]] = []
    for k in range(n_views):
        ts = T0 + 2 * k
        user, item = rng.randrange(200), rng.randrange(40)
        rows.append((user, item, item % 5, "pv", ts))
        if rng.random() < (0.3 if item < 8 else 0.02):
            rows.append((user, item, item % 5, rng.choice(["cart", "fav", "buy"]), ts + 60))
    rows.sort(key=lambda r: r[4])
    path.write_text("".join(f"{u},{i},{c},{b},{t}\n" for u, i, c, b, t in rows))
    return path


def _open_bandit_csv(path: Path, n: int = 1200) -> Path:
    """Impressions of 10 items at 3 positions; position 1 and item 0 click more often."""
    rng = random.Random(11)
    header = ",timestamp,item_id,position,click,propensity_score," + ",".join(
        f"user_feature_{i}" for i in range(4)
    )
    lines = [header]
    for k in range(n):
        item, pos = rng.randrange(10), rng.randrange(1, 4)
        click = int(rng.random() < (0.25 if item == 0 or pos == 1 else 0.03))
        feats = [f"f{i}{rng.randrange(3)}" for i in range(4)]
        ts = f"2019-11-24 00:{k // 60 % 60:02d}:{k % 60:02d}.000000+00:00"
        lines.append(f"{k},{ts},{item},{pos},{click},0.1,{','.join(feats)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_quick_mode_on_synthetic_data(tmp_path: Path) -> None:
    datasets = [
        QualityDataset("tiny-taobao", "tiny Taobao", _taobao_csv(tmp_path / "tb.csv"), "taobao"),
        QualityDataset(
            "tiny-obd", "tiny Open Bandit", _open_bandit_csv(tmp_path / "ob.csv"), "open-bandit"
        ),
        QualityDataset("absent", "absent data", None, "taobao", skip_reason="no data here"),
    ]
    out_md = tmp_path / "docs" / "benchmarks.md"
    out_md.parent.mkdir()
    out_md.write_text("# Benchmarks\n\n<!-- speed:start -->\nspeed\n<!-- speed:end -->\n")
    img_dir = tmp_path / "docs" / "img"

    results = run_quality(
        out_md, img_dir, seeds=5, quick=True, datasets=datasets, log=lambda _: None
    )

    assert results["config"]["quick"] is True
    assert results["config"]["seeds"] == 3  # quick mode caps the seeds
    assert results["datasets"]["absent"]["skipped"] == "no data here"
    for key, explicit in (("tiny-taobao", False), ("tiny-obd", True)):
        res = results["datasets"][key]
        assert res["explicit_labels"] is explicit
        assert res["train_positives"] > 0 and res["test_positives"] > 0
        methods = {r["method"] for r in res["rows"]}
        assert {FULL, UNIFORM, NEGDS, IMPORTANCE, IMPORTANCE_COIN} <= methods
        assert (IMPORTANCE_LABEL in methods) is explicit
        if IMPORTANCE_MATCHED in methods:
            assert not explicit
        for r in res["rows"]:
            assert r["runs"] == (1 if r["method"] in (FULL, IMPORTANCE_COIN) else 3)
            for v in r["auc_values"]:
                assert 0.0 <= v <= 1.0
            assert 0.0 <= r["auc"]["lo"] <= r["auc"]["mean"] <= r["auc"]["hi"] <= 1.0
            assert r["logloss"]["mean"] > 0 and math.isfinite(r["logloss"]["mean"])
            assert r["fit_s"]["mean"] >= 0
            assert 0.0 < r["kept_fraction"] <= 1.0
        full = next(r for r in res["rows"] if r["method"] == FULL)
        assert full["fit_s"]["n"] == 1 + 3 * len(BUDGETS)  # timed beside every seed's fits
        for b in BUDGETS:
            e = res["engine"][f"{b:g}"]
            assert 0.0 < e["keep_rate_examples"] <= 1.0
            assert abs(e["keep_rate_all_events"] - b) < 0.1
        assert (img_dir / f"quality-{key}.png").stat().st_size > 1000

    text = out_md.read_text()
    assert "<!-- speed:start -->\nspeed\n<!-- speed:end -->" in text
    assert text.count(SECTION_START) == 1 and text.count(SECTION_END) == 1
    assert "img/quality-tiny-taobao.png" in text and "no data here" in text


def test_write_section_replaces_only_its_part(tmp_path: Path) -> None:
    md = tmp_path / "b.md"
    write_section(md, "first")
    assert md.read_text().startswith("# Benchmarks\n")
    md.write_text(md.read_text() + "\n<!-- memory:start -->\nmem\n<!-- memory:end -->\n")
    write_section(md, "second")
    text = md.read_text()
    assert "second" in text and "first" not in text
    assert "<!-- memory:start -->\nmem\n<!-- memory:end -->" in text


def test_command_options() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(quality_cmd, ["--help"])
    assert result.exit_code == 0
    for option in ("--seeds", "--quick", "--output"):
        assert option in result.output
