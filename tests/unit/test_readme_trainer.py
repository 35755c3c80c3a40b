"""The documented trainer (docs/training.md, "A trainer that uses `offset`"): the block
runs on training records written by the offline pipeline, and its offset fit on a
negative-downsampled sample recovers the full-data fit (a fit without the offset does
not)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.label_sampling import make_sampler
from models.pipeline import PipelineConfig
from stream_app.offline import training_events

pytest.importorskip("scipy", reason="the documented trainer uses scipy (pip install -e '.[bench]')")

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"
MARKER = "<!-- tested: tests/unit/test_readme_trainer.py -->"


def trainer_block() -> str:
    text = DOC.read_text()
    match = re.search(re.escape(MARKER) + r"\n```python\n(.*?)\n```", text, re.S)
    assert match, "the tested trainer block of docs/training.md is missing"
    return match.group(1)


def synthetic(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out, ts = [], 1_511_658_000
    for i in range(n):
        ts += int(rng.integers(0, 3))
        user, item = f"u{rng.integers(300)}", f"i{rng.integers(40)}"
        etype = str(rng.choice(["view", "click", "impression"]))
        label = int(rng.random() < (0.02 if int(item[1:]) % 2 else 0.08))
        out.append(
            {"event_id": f"e{i}", "user_id": user, "item_id": item, "type": etype, "ts": ts,
             "label": label}
        )  # fmt: skip
    return out


def test_the_block_runs_on_training_records(tmp_path, monkeypatch):
    config = PipelineConfig(target_keep_rate=0.2)
    records = list(training_events(synthetic(6000), config))
    assert records and all(r["label_source"] == "explicit" for r in records)
    (tmp_path / "TRAIN.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(trainer_block(), "docs/training.md", "exec"), namespace)
    assert namespace["X"].shape == (len(records), len(namespace["columns"]))
    p = namespace["p_served"]
    assert p.shape == (len(records),) and np.all((p > 0) & (p < 1))
    # served probabilities are for the stream: about its positive rate, not the sample's
    sample_rate = np.mean([r["label"] for r in records])
    stream = synthetic(6000)
    stream_rate = np.mean([e["label"] for e in stream])
    assert abs(p.mean() - stream_rate) < abs(p.mean() - sample_rate)


def test_the_offset_fit_recovers_the_full_data_fit():
    namespace: dict = {}
    block = trainer_block()
    exec(compile(block[: block.index("with open(")], "docs/training.md", "exec"), namespace)
    fit = namespace["fit_with_offset"]
    rng = np.random.default_rng(1)
    n, d = 200_000, 6
    X = np.zeros((n, d))
    X[np.arange(n), rng.integers(d, size=n)] = 1.0
    beta = np.array([-4.5, -4.0, -3.5, -3.0, -5.0, -4.2])
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(X @ beta)))).astype(float)
    sampler = make_sampler("negative", target_rate=0.1, salt=3)
    decisions = [sampler.decide(f"r{i}", int(y[i]), 0.5, {}) for i in range(n)]
    keep = np.array([dec.keep for dec in decisions])
    offset = np.array([dec.offset for dec in decisions])
    assert 0.08 < keep.mean() < 0.12 and y[keep].sum() == y.sum()  # every positive kept
    w_full, b_full = fit(X, y, np.zeros(n))
    w, b = fit(X[keep], y[keep], offset[keep])
    w_naive, b_naive = fit(X[keep], y[keep], np.zeros(keep.sum()))
    full, offset_fit, naive = X @ w_full + b_full, X @ w + b, X @ w_naive + b_naive
    assert np.max(np.abs(full - beta @ X.T)) < 0.3  # the full fit finds the true model
    assert np.max(np.abs(offset_fit - full)) < 0.3  # the offset fit finds it too
    assert np.min(np.abs(naive - full)) > 1.0  # without the offset: off by about log(1/q)
