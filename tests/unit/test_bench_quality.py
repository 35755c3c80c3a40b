"""``importance bench quality`` on tiny inputs made here (no shared data, no network):
the estimator's known answers, the structure of both parts and the rendered section."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from stream_app.bench.quality import (
    PRELABEL,
    TRAINER_FEATURES,
    RealConfig,
    SemiConfig,
    auc_score,
    excess_log_loss,
    fit_logistic,
    offline_name,
    paired_interval,
    quality_cmd,
    render,
    run_quality,
    synthetic_population,
)


def test_offset_fit_undoes_negative_downsampling() -> None:
    """Keep every positive and 5 % of negatives: the offset fit recovers the full-data
    probabilities, the plain fit on the sample does not."""
    from scipy import sparse

    rng = np.random.default_rng(4)
    n = 200_000
    g = rng.integers(0, 3, n)
    p = np.array([0.005, 0.01, 0.03])[g]
    y = (rng.random(n) < p).astype(float)
    x = sparse.csr_matrix((np.ones(n), (np.arange(n), g)), shape=(n, 3))
    keep = (y == 1) | (rng.random(n) < 0.05)
    off = np.full(int(keep.sum()), math.log(1 / 0.05))
    beta, b = fit_logistic(x[keep], y[keep], offset=off, l2=1e-6)
    fitted = 1 / (1 + np.exp(-(beta + b)))
    assert np.allclose(fitted, [0.005, 0.01, 0.03], rtol=0.2)
    beta_plain, b_plain = fit_logistic(x[keep], y[keep], l2=1e-6)
    assert (1 / (1 + np.exp(-(beta_plain + b_plain)))).min() > 0.05
    beta_w, b_w = fit_logistic(x[keep], y[keep], weight=np.where(y[keep] == 1, 1, 20.0), l2=1e-6)
    assert np.allclose(1 / (1 + np.exp(-(beta_w + b_w))), [0.005, 0.01, 0.03], rtol=0.2)


def test_metrics_known_values() -> None:
    assert excess_log_loss(np.array([0.3, 0.01]), np.array([0.3, 0.01])) == 0.0
    assert auc_score(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8])) == 1.0
    m, lo, hi = paired_interval([0.5, 0.7, 0.6, 0.4])
    assert lo < m < hi and lo > 0


def _tiny_semi() -> SemiConfig:
    return SemiConfig(
        budgets=(0.02, 0.25),
        n_events=20_000,
        streams=2,
        coins=2,
        l2=(0.01,),
        samplers=("negative", "uniform", "fisher"),
        offline=True,
        prelabel=True,
    )


def _open_bandit_csv(path: Path, n: int = 1500) -> Path:
    rng = random.Random(11)
    header = ",timestamp,item_id,position,click,propensity_score," + ",".join(
        f"user_feature_{i}" for i in range(4)
    )
    lines = [header]
    for k in range(n):
        item, pos = rng.randrange(10), rng.randrange(1, 4)
        click = int(rng.random() < (0.25 if item == 0 or pos == 1 else 0.03))
        feats = [f"f{i}{rng.randrange(3)}" for i in range(4)]
        ts = f"2019-11-24 {k // 3600:02d}:{k // 60 % 60:02d}:{k % 60:02d}.000000+00:00"
        lines.append(f"{k},{ts},{item},{pos},{click},0.1,{','.join(feats)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_both_parts_on_tiny_inputs(tmp_path: Path) -> None:
    semi = _tiny_semi()
    res = run_quality(
        semi_cfg=semi,
        real_cfg=RealConfig(budgets=(0.05, 0.25), salts=2, samplers=("negative", "fisher")),
        populations=[lambda: synthetic_population(n_rows=1500, n_items=30)],
        real_sets=[
            ("tiny-obd", "tiny Open Bandit", _open_bandit_csv(tmp_path / "ob.csv"), "open-bandit"),
            ("absent", "absent data", None, "taobao"),
        ],
    )
    s = res["semi"]["synthetic"]
    recs = s["records"]
    full = [r["excess"] for r in recs if r["method"] == "full"]
    uniform_2 = [
        r["excess"]
        for r in recs
        if r["method"] == "uniform" and r["budget"] == 0.02 and r["estimator"] == "offset"
    ]
    # known answer: the full-data fit is close to the true model, and uniform sampling at
    # 2 % (keeping 2 % of the positives too) is far worse than it
    assert max(full) < 0.002
    assert np.mean(uniform_2) > 3 * np.mean(full)
    methods = {r["method"] for r in recs}
    assert {"negative", "uniform", "fisher", PRELABEL, offline_name("fisher")} <= methods
    for r in recs:
        assert math.isfinite(r["excess"]) and r["excess"] >= 0 and r["coef_error"] >= 0
        if r["method"] != "full":
            assert abs(r["kept"] - r["budget"]) < 0.35 * r["budget"]
    assert {r["salt"] for r in recs} == {0, 1, 2, 3}
    rows = [r for r in s["summary"] if r["method"] == "negative"]
    assert all(r["ratio"] == 1.0 and r["units"] == 2 for r in rows)
    real = res["real"]["tiny-obd"]
    assert res["real"]["absent"]["skipped"]
    for r in real["records"]:
        assert 0.0 <= r["auc"] <= 1.0 and r["log_loss"] > 0 and r["calibration"] > 0
    assert {r["method"] for r in real["summary"]} == {"negative", "fisher", PRELABEL}
    assert {v["sampler"] for v in res["bar"]} == {"fisher"}

    res["config"] = {
        "command": "importance bench quality --test",
        "seconds": 1.0,
        "cpus": 2,
        "load": 0.5,
        "budgets": [0.02, 0.25],
        "semi_events": semi.n_events,
        "semi_streams": semi.streams,
        "semi_coins": semi.coins,
        "real_salts": 2,
        "real_l2": 1.0,
    }
    text = render(res)
    assert "### Semi-synthetic: synthetic rows" in text
    assert "### Real data: tiny Open Bandit" in text and "Skipped" in text
    assert "| fisher (offline pilot) |" in text and "| negative | 1.00×" in text


def test_command_options() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(quality_cmd, ["--help"])
    assert result.exit_code == 0
    for option in ("--quick", "--streams", "--coins", "--salts", "--part", "--output"):
        assert option in result.output


def test_partitions_part_structure() -> None:
    from stream_app.bench.quality import partitions_md, run_partitions, user_partition

    assert {user_partition(f"u{i}", 4) for i in range(100)} == {0, 1, 2, 3}
    res = run_partitions(
        synthetic_population(n_rows=800, n_items=20), parts=(1, 2), streams=2, n_events=4000
    )
    recs = res["records"]
    assert {(r["parts"], r["shared"]) for r in recs} == {(1, False), (2, False), (2, True)}
    assert {r["method"] for r in recs} == {
        "negative",
        "fisher-mix",
        "fisher-mix" + TRAINER_FEATURES,
    }
    for r in recs:
        assert 0.0 <= r["auc"] <= 1.0 and r["excess"] >= 0.0
        assert abs(r["kept"] - r["budget"]) < 0.5 * r["budget"]
    table = partitions_md(res)
    assert table.count("\n| 1 | one |") == 4
    assert table.count("\n| 2 | alone |") == 4 and table.count("\n| 2 | shared |") == 4
