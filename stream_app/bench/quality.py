"""``importance bench quality``: does importance sampling pay?

The same downstream model (L2 logistic regression on the engine's hashed features) is
trained on a time-ordered split of real data (first 70 % of the stream to train, last
30 % to test) from:

* the full training data;
* uniform random samples at budgets of 10 %, 25 % and 50 % (weight ``1/budget``);
* negative downsampling with recalibration (He et al. 2014): every positive, negatives
  at the rate ``w`` that meets the budget, trained unweighted, predictions recalibrated
  with ``q = p / (p + (1 - p) / w)``;
* this service's importance sampling at the same budgets: the engine (the one the
  Faust worker runs) scores the training stream online with ``target_rate = budget``
  and the model is trained on the kept events with the weight ``1/π``.

AUC, log-loss and the training (fit) time are reported with a 95 % confidence interval
(Student t) over the seeds. See :func:`run_quality` and ``docs/benchmarks.md``.

How the engine pass is reused across seeds
------------------------------------------
The engine's importance of an event does not depend on the sampler (the sampler only
reads it), and the keep probability ``π`` depends only on the importances and the
target rate, never on the coin. So the engine runs once per (dataset, budget); its
records give ``π`` for every event, and each seed draws its own coin ``keep = u < π``
with ``u`` from numpy's generator. That is the service's decision with another coin,
statistically the same thing. The service's own coin (``crc32(event_id)``) is also
reported, once, as "service coin": those rows use the records' ``keep`` and ``weight``
unchanged. (Salting the crc32 coin is no seed: ``crc32(id, salt)`` is ``crc32(id)``
XOR a constant for ids of one length, so salted coins are strongly correlated.)
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from models.engine import ImportanceEngine
from models.events import CONVERSION_TYPES, EXPOSURE_TYPES, Event, validate_event
from models.features import hashed_features
from models.sampling import ImportanceSampler

__all__ = [
    "BUDGETS",
    "QualityDataset",
    "default_datasets",
    "quality_cmd",
    "run_quality",
    "write_section",
]

BUDGETS: tuple[float, ...] = (0.10, 0.25, 0.50)
TRAIN_FRACTION = 0.7
WINDOW_S = 1800.0
HASH_BITS = 18
MODEL_C = 1.0
QUICK_EVENT_LIMIT = 30_000
QUICK_MAX_SEEDS = 3
SECTION_START = "<!-- quality:start -->"
SECTION_END = "<!-- quality:end -->"
CLAIM = "about +15 % accuracy and −30 % training time from prioritising important samples"

# Method keys, in table order, with their labels.
FULL = "full"
UNIFORM = "uniform"
NEGDS = "negative downsampling"
IMPORTANCE = "importance"
IMPORTANCE_COIN = "importance (service coin)"
IMPORTANCE_MATCHED = "importance (matched budget)"
IMPORTANCE_LABEL = "importance (label-aware)"
METHOD_ORDER = (FULL, UNIFORM, NEGDS, IMPORTANCE, IMPORTANCE_COIN, IMPORTANCE_MATCHED)
METHOD_ORDER += (IMPORTANCE_LABEL,)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class QualityDataset:
    """One input of the benchmark.

    ``key`` names the image (``quality-<key>.png``); ``path`` and ``fmt`` go to
    :func:`stream_app.datasets.read_events`; a ``path`` of None skips the dataset with
    ``skip_reason``. Exposures carrying an explicit ``label`` (Open Bandit clicks) use it;
    otherwise a view is positive when the same user carts, favs or buys the item within
    ``window_s`` (the service's attribution).
    """

    key: str
    title: str
    path: Path | None
    fmt: str
    skip_reason: str = ""
    window_s: float = WINDOW_S


def default_datasets() -> list[QualityDataset]:
    """The Taobao slice (skipped without the shared data) and the Open Bandit sample."""
    from stream_app.datasets import open_bandit_path, taobao_path

    out: list[QualityDataset] = []
    taobao = taobao_path()
    out.append(
        QualityDataset(
            key="taobao",
            title="Taobao UserBehavior slice (views → cart/fav/buy)",
            path=taobao,
            fmt="taobao",
            skip_reason=(
                ""
                if taobao is not None
                else "the shared Taobao slice (../shared/data/taobao_userbehavior_110k.csv,"
                " or $IMPORTANCE_SHARED_DATA) is not available: Taobao part skipped"
            ),
        )
    )
    try:
        obd: Path | None = open_bandit_path()
        reason = ""
    except RuntimeError as exc:
        obd, reason = None, f"the Open Bandit sample could not be fetched: {exc}"
    out.append(
        QualityDataset(
            key="openbandit",
            title="Open Bandit sample (ZOZOTOWN, uniform-random policy, clicks)",
            path=obd,
            fmt="open-bandit",
            skip_reason=reason,
        )
    )
    return out


@dataclass
class Prepared:
    """A dataset read, labelled, split and featurised."""

    raw_train: list[dict[str, Any]]  # the training part of the stream, as read
    events_train: list[Event]
    train_rows: np.ndarray  # index in events_train of each training example
    y_train: np.ndarray
    y_test: np.ndarray
    x_train: Any  # scipy.sparse.csr_matrix
    x_test: Any
    explicit: bool
    n_events: int
    label_note: str
    lookahead_positives: tuple[int, int] = (0, 0)
    span_s: float = 0.0


def _attribution_labels(events: Sequence[Event], window_s: float) -> list[int | None]:
    """The service's attribution, offline: an exposure is positive when the same user
    converts the same item later in the stream, at or after its time and at most
    ``window_s`` after it (the per-user bounds of the live attribution are not applied)."""
    pending: dict[tuple[str, str], list[int]] = {}
    labels: list[int | None] = [None] * len(events)
    for i, ev in enumerate(events):
        if ev.type in CONVERSION_TYPES:
            later = []
            for j in pending.pop((ev.user_id, ev.item_id), []):
                if events[j].ts > ev.ts:  # an exposure after the conversion stays open
                    later.append(j)
                elif events[j].ts >= ev.ts - window_s:
                    labels[j] = 1
            if later:
                pending[(ev.user_id, ev.item_id)] = later
        elif ev.type in EXPOSURE_TYPES:
            if ev.label is not None:
                labels[i] = ev.label
                continue
            labels[i] = 0
            pending.setdefault((ev.user_id, ev.item_id), []).append(i)
    return labels


def _matrix(events: Iterable[Event]) -> Any:
    from scipy import sparse

    indptr, indices = [0], []
    for ev in events:
        indices.extend(sorted(hashed_features(ev, HASH_BITS)))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float64)
    return sparse.csr_matrix(
        (data, np.asarray(indices, dtype=np.int32), np.asarray(indptr, dtype=np.int64)),
        shape=(len(indptr) - 1, 1 << HASH_BITS),
    )


def prepare(ds: QualityDataset, limit: int | None = None) -> Prepared:
    """Read, label (see :class:`QualityDataset`), split 70/30 in stream order, featurise."""
    from stream_app.datasets import read_events

    assert ds.path is not None
    raw = [r for r in read_events(ds.path, ds.fmt, limit=limit) if isinstance(r, dict)]
    events = [validate_event(r, now=float("inf")) for r in raw]
    if len(events) < 20:
        raise ValueError(f"{ds.title}: only {len(events)} events")
    explicit = any(ev.label is not None for ev in events)
    labels = _attribution_labels(events, ds.window_s)
    cut = int(TRAIN_FRACTION * len(events))
    rows = np.array([i for i in range(len(events)) if labels[i] is not None], dtype=np.int64)
    train_rows, test_rows = rows[rows < cut], rows[rows >= cut]
    y = np.array([labels[i] for i in rows], dtype=np.int8)
    y_train, y_test = y[rows < cut], y[rows >= cut]
    if explicit:
        note = "label = the click logged with the impression"
        far = (0, 0)
    else:
        note = (
            f"label = the same user carts, favs or buys the viewed item within "
            f"{ds.window_s / 60:.0f} min (the service's attribution window)"
        )
        inf = _attribution_labels(events, math.inf)
        far = (
            sum(inf[i] for i in train_rows),
            sum(inf[i] for i in test_rows),
        )
    x_train = _matrix(events[i] for i in train_rows)
    x_test = _matrix(events[i] for i in test_rows)
    # Keep only the hash buckets that occur: the same model (a bucket absent from the
    # training rows gets weight 0 under L2 anyway), fitted without 2**18-long vectors.
    used = np.union1d(x_train.indices, x_test.indices)
    return Prepared(
        raw_train=raw[:cut],
        events_train=events[:cut],
        train_rows=train_rows,
        y_train=y_train,
        y_test=y_test,
        x_train=x_train[:, used],
        x_test=x_test[:, used],
        explicit=explicit,
        n_events=len(events),
        label_note=note,
        lookahead_positives=far,
        span_s=events[-1].ts - events[0].ts,
    )


# --------------------------------------------------------------------------- engine


@dataclass
class EnginePass:
    """The engine's records over the training stream, restricted to training examples."""

    budget: float
    seconds: float
    importance_all: np.ndarray  # every event of the training stream
    event_ids: list[str]
    pi: np.ndarray  # training examples only
    keep: np.ndarray
    weight: np.ndarray
    keep_rate_all: float


def _engine_pass(prep: Prepared, budget: float, *, label_aware: bool) -> EnginePass:
    """Run the worker's engine over the training stream with ``target_rate=budget``.

    Attribution-labelled data goes through :func:`stream_app.offline.score_events` (the
    worker's path: delayed labels learned when they resolve). Explicitly labelled data
    is scored with the label withheld and learned from right after the score, unless
    ``label_aware``, which feeds the events as they are (the worker then scores a
    labelled event with its realised gradient).
    """
    from stream_app.offline import score_events

    started = time.perf_counter()
    if prep.explicit and not label_aware:
        engine = ImportanceEngine(target_rate=budget)
        records = []
        for ev in prep.events_train:
            scored = engine.score(dataclasses.replace(ev, label=None))
            records.append(scored.record(updates=engine.updates, version=engine.version))
            if ev.label is not None:
                engine.learn(ev, ev.label)
    else:
        records = list(score_events(prep.raw_train, target_rate=budget))
    seconds = time.perf_counter() - started
    if len(records) != len(prep.events_train) or any("error" in r for r in records):
        raise RuntimeError("the engine rejected events that validated")
    rows = prep.train_rows
    # the pre-label rule (score records no longer carry a keep decision): the same sampler
    # and coin as before, over the published importances
    sampler = ImportanceSampler(target_rate=budget)
    decisions = [sampler.decide(r["event_id"], r["importance"]) for r in records]
    pi = np.array([decisions[i].probability for i in rows])
    keep = np.array([decisions[i].keep for i in rows], dtype=bool)
    weight = np.array([decisions[i].weight for i in rows])
    return EnginePass(
        budget=budget,
        seconds=seconds,
        importance_all=np.array([r["importance"] for r in records]),
        event_ids=[r["event_id"] for r in records],
        pi=pi,
        keep=keep,
        weight=weight,
        keep_rate_all=float(np.mean([d.keep for d in decisions])),
    )


def _replay_pi(ep: EnginePass, rows: np.ndarray, target_rate: float) -> np.ndarray:
    """π of the training examples from the service's sampler replayed over the engine's
    importances (the importance does not depend on the sampler)."""
    sampler = ImportanceSampler(target_rate=target_rate)
    pis = np.array(
        [
            sampler.decide(eid, float(imp)).probability
            for eid, imp in zip(ep.event_ids, ep.importance_all, strict=True)
        ]
    )
    return pis[rows]


def _matched_pi(ep: EnginePass, rows: np.ndarray, budget: float) -> tuple[float, np.ndarray]:
    """The target rate whose mean π over the training examples equals ``budget``."""
    lo, hi = budget, 1.0
    best = (budget, _replay_pi(ep, rows, budget))
    if best[1].mean() >= budget:
        lo, hi = 1e-3, budget
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        pis = _replay_pi(ep, rows, mid)
        if abs(pis.mean() - budget) < abs(best[1].mean() - budget):
            best = (mid, pis)
        if pis.mean() < budget:
            lo = mid
        else:
            hi = mid
    return best


# --------------------------------------------------------------------------- training


def _fit_predict(
    x: Any, y: np.ndarray, w: np.ndarray | None, x_test: Any
) -> tuple[np.ndarray, float, bool]:
    """Fit the downstream model; returns test probabilities, fit seconds, degenerate."""
    from sklearn.linear_model import LogisticRegression

    if len(y) == 0 or y.min() == y.max():
        # One class only: the best model is a constant (smoothed weighted rate).
        ww = np.ones(len(y)) if w is None else w
        rate = (float(np.sum(ww * y)) + 0.5) / (float(np.sum(ww)) + 1.0)
        return np.full(x_test.shape[0], rate), 0.0, True
    model = LogisticRegression(C=MODEL_C, solver="lbfgs", max_iter=1000)
    started = time.perf_counter()
    model.fit(x, y, sample_weight=w)
    seconds = time.perf_counter() - started
    return model.predict_proba(x_test)[:, 1], seconds, False


def auc_score(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (Mann–Whitney, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    y = np.asarray(y)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary log-loss with probabilities clipped to [1e-15, 1 - 1e-15]."""
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _stat(values: Sequence[float], floor: float = -math.inf) -> dict[str, float]:
    """Mean and 95 % Student-t confidence interval (its lower end at least ``floor``)."""
    from scipy.stats import t

    a = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(a) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    m = float(a.mean())
    if len(a) < 2:
        return {"mean": m, "lo": m, "hi": m, "n": 1}
    h = float(t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return {"mean": m, "lo": max(floor, m - h), "hi": m + h, "n": len(a)}


def _diff_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean of a − mean of b with a Welch 95 % interval."""
    from scipy.stats import t

    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return d, d, d
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    h = float(t.ppf(0.975, df) * se)
    return d, d - h, d + h


def _bootstrap_auc(y: np.ndarray, p: np.ndarray, n: int, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the test AUC over bootstrap resamples of the test set."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        v = auc_score(y[idx], p[idx])
        if not math.isnan(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


@dataclass
class _Runs:
    auc: list[float] = field(default_factory=list)
    logloss: list[float] = field(default_factory=list)
    fit_s: list[float] = field(default_factory=list)
    kept: list[float] = field(default_factory=list)
    positives: list[float] = field(default_factory=list)
    degenerate: int = 0

    def add(self, prep: Prepared, mask: np.ndarray, w: np.ndarray | None, recal: float = 1.0):
        x, y = prep.x_train[mask], prep.y_train[mask]
        p, seconds, degenerate = _fit_predict(x, y, None if w is None else w[mask], prep.x_test)
        if recal < 1.0:
            p = p / (p + (1.0 - p) / recal)
        self.auc.append(auc_score(prep.y_test, p))
        self.logloss.append(log_loss(prep.y_test, p))
        self.fit_s.append(seconds)
        self.kept.append(float(mask.mean()))
        self.positives.append(float(y.sum()))
        self.degenerate += int(degenerate)
        return p

    def row(self, method: str, budget: float) -> dict[str, Any]:
        return {
            "method": method,
            "budget": budget,
            "kept_fraction": float(np.mean(self.kept)),
            "positives": float(np.mean(self.positives)),
            "auc": _stat(self.auc),
            "logloss": _stat(self.logloss),
            "fit_s": _stat(self.fit_s, floor=0.0),
            "auc_values": list(self.auc),
            "runs": len(self.auc),
            "degenerate": self.degenerate,
        }


def _seed_rng(seed: int, dataset: str, method: str, budget: float) -> np.random.Generator:
    key = [seed, round(budget * 1000), *dataset.encode(), *method.encode()]
    return np.random.default_rng(key)


def evaluate(
    ds: QualityDataset,
    prep: Prepared,
    seeds: int,
    budgets: Sequence[float] = BUDGETS,
    bootstrap: int = 500,
    log=print,
) -> dict[str, Any]:
    """All methods at all budgets over ``seeds`` seeds; returns the dataset's results."""
    n = len(prep.y_train)
    n_pos = int(prep.y_train.sum())
    every = np.ones(n, dtype=bool)
    rows: list[dict[str, Any]] = []

    # The full-data fit is deterministic: fitted once for the metrics, then again beside
    # every seed's fits only to time it under the same machine load as they are.
    full = _Runs()
    p_full = full.add(prep, every, None)

    engine: dict[str, Any] = {}
    for budget in budgets:
        runs = {m: _Runs() for m in (UNIFORM, NEGDS, IMPORTANCE)}
        ep = _engine_pass(prep, budget, label_aware=False)
        w_neg = min(1.0, max(1e-3, (budget * n - n_pos) / max(1, n - n_pos)))
        extra: dict[str, tuple[np.ndarray, str]] = {}
        info: dict[str, Any] = {
            "target_rate": budget,
            "seconds": ep.seconds,
            "events": len(prep.events_train),
            "events_per_s": len(prep.events_train) / ep.seconds,
            "keep_rate_all_events": ep.keep_rate_all,
            "keep_rate_examples": float(ep.keep.mean()),
            "mean_pi_examples": float(ep.pi.mean()),
            # How far the service's crc32 coin is from a fair coin, in binomial sds.
            "coin_z": float(
                (ep.keep.sum() - ep.pi.sum()) / max(1e-12, math.sqrt(np.sum(ep.pi * (1 - ep.pi))))
            ),
            "negative_rate": w_neg,
        }
        if abs(ep.pi.mean() - budget) > 0.005:
            target, pis = _matched_pi(ep, prep.train_rows, budget)
            replay = _replay_pi(ep, prep.train_rows, budget)
            info["matched_target_rate"] = target
            info["matched_mean_pi_examples"] = float(pis.mean())
            info["replay_max_abs_pi_error"] = float(np.max(np.abs(replay - ep.pi)))
            extra[IMPORTANCE_MATCHED] = (pis, "matched")
        if prep.explicit:
            ep_label = _engine_pass(prep, budget, label_aware=True)
            info["label_aware_seconds"] = ep_label.seconds
            info["label_aware_mean_pi_examples"] = float(ep_label.pi.mean())
            extra[IMPORTANCE_LABEL] = (ep_label.pi, "label")
        engine[f"{budget:g}"] = info
        for m in extra:
            runs[m] = _Runs()
        for seed in range(seeds):
            full.fit_s.append(_fit_predict(prep.x_train, prep.y_train, None, prep.x_test)[1])
            u = _seed_rng(seed, ds.key, UNIFORM, budget).random(n)
            runs[UNIFORM].add(prep, u < budget, np.full(n, 1.0 / budget))
            u = _seed_rng(seed, ds.key, NEGDS, budget).random(n)
            runs[NEGDS].add(prep, (prep.y_train == 1) | (u < w_neg), None, recal=w_neg)
            u = _seed_rng(seed, ds.key, IMPORTANCE, budget).random(n)
            runs[IMPORTANCE].add(prep, u < ep.pi, 1.0 / ep.pi)
            for m, (pis, tag) in extra.items():
                u = _seed_rng(seed, ds.key, tag, budget).random(n)
                runs[m].add(prep, u < pis, 1.0 / pis)
        coin = _Runs()
        coin.add(prep, ep.keep, np.where(ep.keep, ep.weight, 0.0))
        runs[IMPORTANCE_COIN] = coin
        for m in METHOD_ORDER:
            if m in runs:
                rows.append(runs[m].row(m, budget))
        summary = ", ".join(
            f"{m} {runs[m].row(m, budget)['auc']['mean']:.4f}" for m in (UNIFORM, NEGDS, IMPORTANCE)
        )
        log(f"  budget {_pct(budget)}: engine {ep.seconds:.1f} s; AUC {summary}")

    full_row = full.row(FULL, 1.0)
    full_row["auc_test_bootstrap"] = _bootstrap_auc(prep.y_test, p_full, bootstrap)
    rows.insert(0, full_row)
    log(f"  full data: AUC {full_row['auc']['mean']:.4f}, fit {full_row['fit_s']['mean']:.2f} s")
    return {
        "seeds": seeds,
        "title": ds.title,
        "n_events": prep.n_events,
        "n_train_events": len(prep.events_train),
        "n_train_examples": n,
        "n_test_examples": len(prep.y_test),
        "train_positives": n_pos,
        "test_positives": int(prep.y_test.sum()),
        "lookahead_positives": prep.lookahead_positives,
        "span_s": prep.span_s,
        "explicit_labels": prep.explicit,
        "label": prep.label_note,
        "engine": engine,
        "rows": rows,
    }


# --------------------------------------------------------------------------- verdicts


def _row(res: dict[str, Any], method: str, budget: float) -> dict[str, Any] | None:
    for r in res["rows"]:
        if r["method"] == method and (method == FULL or abs(r["budget"] - budget) < 1e-9):
            return r
    return None


def _primary_importance(res: dict[str, Any], budget: float) -> dict[str, Any]:
    """The importance row that is compared at equal budget: the matched one if present."""
    return _row(res, IMPORTANCE_MATCHED, budget) or _row(res, IMPORTANCE, budget)  # type: ignore[return-value]


def compare(res: dict[str, Any], budgets: Sequence[float] = BUDGETS) -> list[dict[str, Any]]:
    """Per budget: importance vs uniform and vs negative downsampling, and the gap to full."""
    full = _row(res, FULL, 1.0)
    assert full is not None
    full_auc = full["auc"]["mean"]
    full_fit = full["fit_s"]["mean"]
    out = []
    for budget in budgets:
        imp = _primary_importance(res, budget)
        uni = _row(res, UNIFORM, budget)
        neg = _row(res, NEGDS, budget)
        d_uni = _diff_ci(imp["auc_values"], uni["auc_values"])
        d_neg = _diff_ci(imp["auc_values"], neg["auc_values"])
        lift = full_auc - 0.5
        out.append(
            {
                "budget": budget,
                "importance_method": imp["method"],
                "auc_importance": imp["auc"]["mean"],
                "auc_uniform": uni["auc"]["mean"],
                "auc_negds": neg["auc"]["mean"],
                "auc_full": full_auc,
                "diff_vs_uniform": d_uni,
                "diff_vs_negds": d_neg,
                "rel_vs_uniform_pct": 100.0 * (imp["auc"]["mean"] / uni["auc"]["mean"] - 1.0),
                "rel_vs_full_pct": 100.0 * (imp["auc"]["mean"] / full_auc - 1.0),
                "lift_recovered_pct": (
                    100.0 * (imp["auc"]["mean"] - 0.5) / lift if lift > 0 else float("nan")
                ),
                "fit_vs_full_pct": 100.0 * (imp["fit_s"]["mean"] / full_fit - 1.0),
                "uniform_fit_vs_full_pct": 100.0 * (uni["fit_s"]["mean"] / full_fit - 1.0),
            }
        )
    return out


def _verdict(d: tuple[float, float, float]) -> str:
    if d[1] > 0:
        return "better"
    if d[2] < 0:
        return "worse"
    return "no significant difference"


# --------------------------------------------------------------------------- report


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _fmt_ci(s: dict[str, float], digits: int = 4) -> str:
    if s["n"] == 0:
        return "n/a"
    if s["n"] == 1 or s["hi"] - s["lo"] < 10 ** (-digits):
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['lo']:.{digits}f}, {s['hi']:.{digits}f}]"


def _fmt_diff(d: tuple[float, float, float]) -> str:
    return f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"


def _dataset_md(key: str, res: dict[str, Any], img_rel: str, budgets: Sequence[float]) -> str:
    lines = [f"### {res['title']}", ""]
    if "skipped" in res:
        return "\n".join([*lines, f"**Skipped:** {res['skipped']}.", ""])
    full = _row(res, FULL, 1.0)
    lines += [
        f"- {res['n_events']:,} events over {res['span_s'] / 3600:.1f} h; first 70 % "
        f"({res['n_train_events']:,} events) to train, last 30 % to test.",
        f"- Training examples: {res['n_train_examples']:,} with {res['train_positives']} "
        f"positives ({100 * res['train_positives'] / max(1, res['n_train_examples']):.2f} %); "
        f"test examples: {res['n_test_examples']:,} with {res['test_positives']} positives.",
        f"- {res['label']}.",
    ]
    if not res["explicit_labels"]:
        far = res["lookahead_positives"]
        lines.append(
            f"- With the whole rest of the slice as lookahead instead of the window there "
            f"would be {far[0]} / {far[1]} positives (train / test): hardly more, so the "
            "service's 30-minute window is kept."
        )
    lo, hi = full["auc_test_bootstrap"]
    lines += [
        f"- Full-data AUC {full['auc']['mean']:.4f}; its 95 % bootstrap interval over the "
        f"test set is [{lo:.4f}, {hi:.4f}]. That interval is the test set's own noise and "
        "is wider than the seed intervals below, which only measure the sampling.",
        "",
        f"![AUC against the kept fraction, {res['title']}]({img_rel})",
        "",
        "| method | budget | kept | positives kept | AUC [95 % CI] | log-loss [95 % CI] "
        "| fit s [95 % CI] |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in res["rows"]:
        budget = "100 %" if r["method"] == FULL else _pct(r["budget"])
        deg = f" ({r['degenerate']} runs one-class)" if r["degenerate"] else ""
        lines.append(
            f"| {r['method']}{deg} | {budget} | {r['kept_fraction']:.3f} | "
            f"{r['positives']:.1f} | {_fmt_ci(r['auc'])} | {_fmt_ci(r['logloss'], 5)} | "
            f"{_fmt_ci(r['fit_s'], 3)} |"
        )
    lines += [
        "",
        "Engine pass over the training stream (the service's sampler at `target_rate` = "
        "budget, its own coin):",
        "",
        "| budget | engine s | events/s | kept, all events | kept, training examples "
        "| mean π, training examples | matched target rate | negatives rate w |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in budgets:
        e = res["engine"][f"{b:g}"]
        matched = f"{e['matched_target_rate']:.4f}" if "matched_target_rate" in e else "—"
        lines.append(
            f"| {_pct(b)} | {e['seconds']:.1f} | {e['events_per_s']:,.0f} | "
            f"{e['keep_rate_all_events']:.4f} | {e['keep_rate_examples']:.4f} | "
            f"{e['mean_pi_examples']:.4f} | {matched} | {e['negative_rate']:.4f} |"
        )
    errs = [
        res["engine"][f"{b:g}"]["replay_max_abs_pi_error"]
        for b in budgets
        if "replay_max_abs_pi_error" in res["engine"][f"{b:g}"]
    ]
    if errs:
        lines += [
            "",
            "Replaying the service's sampler over the engine's recorded importances at the "
            f"nominal target rate reproduces the records' π within {max(errs):.1e} (the "
            "records round to 6 decimals), so the matched rows are the service's sampler.",
        ]
    odd = [(b, res["engine"][f"{b:g}"]) for b in budgets]
    odd = [(b, e) for b, e in odd if abs(e["coin_z"]) > 3]
    if odd:
        lines += [
            "",
            "The service's coin (`crc32(event_id)`) is not a fair coin on these ids: it kept "
            + "; ".join(
                f"{e['keep_rate_examples']:.4f} of the training examples where the mean π is "
                f"{e['mean_pi_examples']:.4f} at {_pct(b)} ({e['coin_z']:+.1f} binomial sd)"
                for b, e in odd
            )
            + ". The seeded rows use numpy's generator instead.",
        ]
    cmp_rows = compare(res, budgets)
    lines += [
        "",
        "Importance sampling against the baselines at equal budget (AUC difference, Welch "
        "95 % CI over seeds):",
        "",
        "| budget | importance row | − uniform | verdict | − neg. downsampling | verdict "
        "| share of full data's AUC lift over 0.5 |",
        "| ---: | --- | --- | --- | --- | --- | ---: |",
    ]
    for c in cmp_rows:
        lines.append(
            f"| {_pct(c['budget'])} | {c['importance_method']} | {_fmt_diff(c['diff_vs_uniform'])} "
            f"| {_verdict(c['diff_vs_uniform'])} | {_fmt_diff(c['diff_vs_negds'])} | "
            f"{_verdict(c['diff_vs_negds'])} | {c['lift_recovered_pct']:.0f} % |"
        )
    lines += ["", f"**Verdict ({key}).** " + _dataset_verdict(res, cmp_rows), ""]
    return "\n".join(lines)


def _dataset_verdict(res: dict[str, Any], cmp_rows: list[dict[str, Any]]) -> str:
    verdicts = [_verdict(c["diff_vs_uniform"]) for c in cmp_rows]
    budgets = ", ".join(_pct(c["budget"]) for c in cmp_rows)
    if all(v == "better" for v in verdicts):
        head = f"Importance sampling beats uniform sampling at every budget ({budgets})."
    elif all(v == "worse" for v in verdicts):
        head = f"Importance sampling is worse than uniform sampling at every budget ({budgets})."
    elif all(v == "no significant difference" for v in verdicts):
        head = (
            "Importance sampling does not beat uniform sampling: at every budget the AUC "
            "difference is within the noise of the seeds."
        )
    else:
        parts = [f"{_pct(c['budget'])}: {v}" for c, v in zip(cmp_rows, verdicts, strict=True)]
        head = "Against uniform sampling, importance sampling is " + "; ".join(parts) + "."
    rel = ", ".join(f"{c['rel_vs_uniform_pct']:+.1f} %" for c in cmp_rows)
    gap = ", ".join(
        f"{c['auc_importance']:.4f} vs {c['auc_full']:.4f} ({c['rel_vs_full_pct']:+.1f} %)"
        for c in cmp_rows
    )
    neg = [_verdict(c["diff_vs_negds"]) for c in cmp_rows]
    neg_txt = ", ".join(f"{_pct(c['budget'])}: {v}" for c, v in zip(cmp_rows, neg, strict=True))
    return (
        f"{head} Relative AUC change against uniform: {rel}. Against full data: {gap}. "
        f"Against negative downsampling (which keeps every positive): {neg_txt}."
    )


def render_section(results: dict[str, Any], img_rel_dir: str) -> str:
    """The markdown of the quality section (between, not including, the markers)."""
    cfg = results["config"]
    budgets = cfg["budgets"]
    out = [
        "",
        "## Quality: does importance sampling pay?",
        "",
        f"Generated by `importance bench quality` ({'quick mode, ' if cfg['quick'] else ''}"
        f"{cfg['seeds']} seeds, {cfg['seconds']:.0f} s on {cfg['cpus']} CPUs). "
        "Regenerate with `importance bench quality --output docs/benchmarks.md`.",
        "",
        "**Setup.**",
        "",
        "- Time-ordered split: the first 70 % of each stream trains, the last 30 % tests.",
        f"- Downstream model: scikit-learn `LogisticRegression(C={MODEL_C:g}, solver='lbfgs')` "
        f"on the engine's hashed indicator features (`models.features.hashed_features`, "
        f"2^{HASH_BITS} buckets; only the buckets that occur become columns, which is the "
        "same model) as a sparse matrix, the same for every method; no tuning.",
        "- *uniform*: each training example kept with probability = budget, weight 1/budget "
        "(so every weighted method minimises an unbiased estimate of the full-data loss under "
        "the same L2 penalty).",
        "- *negative downsampling* (He et al. 2014): all positives, negatives at the rate w "
        "that meets the budget, unweighted, predictions recalibrated with "
        "q = p / (p + (1 − p)/w).",
        "- *importance*: the service's engine (`models.engine.ImportanceEngine`, the one the "
        "worker runs) scores the training stream online with `target_rate` = budget; every "
        "training example is kept with its keep probability π and weighted 1/π. Importance is "
        "computed before the label is known: Taobao labels reach the engine through the "
        "worker's delayed attribution (`stream_app.offline.score_events`); Open Bandit clicks "
        "are withheld from the scored event and learned right after it.",
        "- The engine runs once per (dataset, budget): π does not depend on the coin, so each "
        "seed draws its own coin u < π with numpy's generator — the service's decision with "
        "another coin. *importance (service coin)* uses the records' own `keep` and `weight` "
        "(one run, no interval).",
        "- The sampler tunes the mean π over *all* events. On Taobao, cart/fav/buy events are "
        "scored too (they are important) and take part of the budget, so fewer views are kept "
        "than the budget. *importance (matched budget)* replays the service's "
        "`ImportanceSampler` over the engine's importances with the target rate at which the "
        "mean π over the training examples equals the budget; it is the row compared at "
        "equal budget when present.",
        "- *importance (label-aware)* (Open Bandit only): the events go to the engine with "
        "their click, as the worker receives them; the worker then scores a labelled event "
        "with its realised gradient. Shown for reference; not the honest comparison.",
        "- Intervals: 95 % Student t over seeds (the seeds change the random sampling; the "
        "full-data fit is deterministic and is repeated beside each seed's fits only to time "
        "it under the same load). Fit time is "
        "`fit()` alone, one thread, on a machine shared with other jobs (indicative).",
        "",
    ]
    for key, res in results["datasets"].items():
        out.append(_dataset_md(key, res, f"{img_rel_dir}/quality-{key}.png", budgets))
    out += ["### Conclusion", "", _conclusion(results), ""]
    return "\n".join(out)


def _conclusion(results: dict[str, Any]) -> str:
    parts = []
    engine_dearer = []
    for key, res in results["datasets"].items():
        if "skipped" in res:
            parts.append(f"- **{key}**: skipped ({res['skipped']}).")
            continue
        cmp_rows = compare(res, results["config"]["budgets"])
        verdicts = [_verdict(c["diff_vs_uniform"]) for c in cmp_rows]
        better = sum(v == "better" for v in verdicts)
        worse = sum(v == "worse" for v in verdicts)
        claim = sum(
            v == "better" and c["rel_vs_uniform_pct"] >= 15.0
            for v, c in zip(verdicts, cmp_rows, strict=True)
        )
        rel = ", ".join(f"{c['rel_vs_uniform_pct']:+.1f} %" for c in cmp_rows)
        fit = ", ".join(f"{c['fit_vs_full_pct']:+.0f} %" for c in cmp_rows)
        ufit = ", ".join(f"{c['uniform_fit_vs_full_pct']:+.0f} %" for c in cmp_rows)
        eng = np.mean([e["seconds"] for e in res["engine"].values()])
        full_fit = _row(res, FULL, 1.0)["fit_s"]["mean"]
        engine_dearer.append(eng > full_fit)
        budgets = ", ".join(_pct(c["budget"]) for c in cmp_rows)
        parts.append(
            f"- **{key}**: at equal budget ({budgets}) importance sampling is significantly "
            f"better than uniform sampling at {better}, significantly worse at {worse} and "
            f"indistinguishable at {len(cmp_rows) - better - worse} budget(s); AUC change "
            f"against uniform {rel}. A significant gain of 15 % or more: at {claim} budget(s). "
            f"Fit time against full data: importance {fit}, uniform {ufit}. Scoring the "
            f"training stream with the engine took {eng:.1f} s, against {full_fit:.2f} s "
            f"for the full-data fit."
        )
    text = "\n".join(parts)
    n_cmp = len(results["config"]["budgets"]) * sum(
        "skipped" not in r for r in results["datasets"].values()
    )
    text += (
        f"\n\nThese are {n_cmp} comparisons with uniform sampling at 95 %: with no real "
        "difference anywhere, one of them comes out 'significant' by chance about "
        f"{100 * (1 - 0.95**n_cmp):.0f} % of the time. The intervals measure the sampling "
        "over seeds on one fixed test set; the test sets have few positives, and their own "
        "noise (the bootstrap intervals above) is larger."
    )
    cost = (
        " Here the engine pass that decides the sample costs more than fitting this model on "
        "all the data."
        if engine_dearer and all(engine_dearer)
        else ""
    )
    return (
        f"The product's premise was {CLAIM}. Measured here:\n\n{text}\n\n"
        "Where importance sampling is not significantly better than uniform sampling, the "
        "claimed accuracy gain is not reproduced on this data. The training-time saving is "
        "that of any subsample of the same size, not something importance adds." + cost
    )


def write_section(out_md: Path, body: str) -> None:
    """Replace the text between the quality markers (create the file or the section)."""
    block = f"{SECTION_START}\n{body.strip()}\n\n{SECTION_END}"
    if out_md.exists():
        text = out_md.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END), re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m: block, text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        text = f"# Benchmarks\n\n{block}\n"
    out_md.write_text(text, encoding="utf-8")


def plot(key: str, res: dict[str, Any], path: Path) -> None:
    """AUC (and log-loss) against the fraction of training examples kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    full = _row(res, FULL, 1.0)
    styles = {
        UNIFORM: ("tab:blue", "o", "-"),
        NEGDS: ("tab:green", "s", "-"),
        IMPORTANCE: ("tab:red", "^", "-"),
        IMPORTANCE_MATCHED: ("tab:orange", "v", "--"),
        IMPORTANCE_LABEL: ("tab:purple", "D", ":"),
        IMPORTANCE_COIN: ("black", "x", "none"),
    }
    for ax, metric, name in ((axes[0], "auc", "test AUC"), (axes[1], "logloss", "test log-loss")):
        ax.axhline(full[metric]["mean"], color="gray", lw=1.2, label="full data")
        ax.plot([1.0], [full[metric]["mean"]], "o", color="gray")
        if metric == "auc":
            lo, hi = full["auc_test_bootstrap"]
            ax.axhspan(lo, hi, color="gray", alpha=0.12, label="full data, test bootstrap 95 %")
        for method, (color, marker, ls) in styles.items():
            rs = sorted(
                (r for r in res["rows"] if r["method"] == method), key=lambda r: r["budget"]
            )
            if not rs:
                continue
            x = [r["kept_fraction"] for r in rs]
            y = [r[metric]["mean"] for r in rs]
            err = [
                [r[metric]["mean"] - r[metric]["lo"] for r in rs],
                [r[metric]["hi"] - r[metric]["mean"] for r in rs],
            ]
            ax.errorbar(x, y, yerr=err, color=color, marker=marker, ls=ls, capsize=3, label=method)
        ax.set_xscale("log")
        ticks = sorted({*res_budgets(res), 1.0})
        ax.set_xticks(ticks)
        ax.set_xticklabels([_pct(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("fraction of training examples kept (realised)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{res['title']}: mean and 95 % CI over {res['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def res_budgets(res: dict[str, Any]) -> list[float]:
    return sorted({r["budget"] for r in res["rows"] if r["method"] != FULL})


# --------------------------------------------------------------------------- entry points


def run_quality(
    out_md: Path,
    img_dir: Path,
    seeds: int = 10,
    quick: bool = False,
    *,
    datasets: Sequence[QualityDataset] | None = None,
    budgets: Sequence[float] = BUDGETS,
    log=print,
) -> dict[str, Any]:
    """Run the benchmark, write the quality section of ``out_md`` and the PNGs in
    ``img_dir``, and return the results.

    ``quick`` caps the seeds at 3, reads at most 30,000 events per dataset and uses 100
    bootstrap resamples. ``datasets`` defaults to :func:`default_datasets`.
    """
    started = time.perf_counter()
    if seeds < 1:
        raise ValueError("seeds must be >= 1")
    if quick:
        seeds = min(seeds, QUICK_MAX_SEEDS)
    datasets = list(default_datasets() if datasets is None else datasets)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        results = _run(datasets, seeds, quick, budgets, log)
    results["config"]["seconds"] = time.perf_counter() - started
    try:
        img_rel = Path(_relpath(img_dir, out_md.parent)).as_posix()
    except ValueError:
        img_rel = img_dir.as_posix()
    for key, res in results["datasets"].items():
        if "skipped" not in res:
            image = img_dir / f"quality-{key}.png"
            plot(key, res, image)
            res["image"] = str(image)
    write_section(out_md, render_section(results, img_rel))
    log(f"wrote {out_md} in {results['config']['seconds']:.0f} s")
    return results


def _run(
    datasets: Sequence[QualityDataset],
    seeds: int,
    quick: bool,
    budgets: Sequence[float],
    log,
) -> dict[str, Any]:
    limit = QUICK_EVENT_LIMIT if quick else None
    results: dict[str, Any] = {
        "config": {
            "seeds": seeds,
            "quick": quick,
            "budgets": list(budgets),
            "train_fraction": TRAIN_FRACTION,
            "model": f"LogisticRegression(C={MODEL_C:g}, lbfgs)",
            "hash_bits": HASH_BITS,
            "cpus": _cpus(),
        },
        "datasets": {},
    }
    for ds in datasets:
        if ds.path is None:
            log(f"{ds.key}: skipped: {ds.skip_reason}")
            results["datasets"][ds.key] = {"title": ds.title, "skipped": ds.skip_reason}
            continue
        log(f"{ds.key}: {ds.title}")
        prep = prepare(ds, limit=limit)
        res = evaluate(ds, prep, seeds, budgets, bootstrap=100 if quick else 500, log=log)
        results["datasets"][ds.key] = res
    return results


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _default_output() -> Path:
    from stream_app.datasets import repo_root

    root = repo_root()
    return (root if root is not None else Path.cwd()) / "docs" / "benchmarks.md"


@click.command("quality")
@click.option("--seeds", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--quick", is_flag=True, help="3 seeds at most, 30,000 events per dataset.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Markdown file whose quality section is rewritten [default: docs/benchmarks.md].",
)
@click.option(
    "--img-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the PNGs go [default: img/ beside the output].",
)
def quality_cmd(seeds: int, quick: bool, output: Path | None, img_dir: Path | None) -> None:
    """Does importance sampling pay? Downstream AUC/log-loss/fit time against baselines."""
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            f"{exc.name} is missing: pip install 'importance-stream[bench]'"
        ) from None
    output = output or _default_output()
    run_quality(output, img_dir or output.parent / "img", seeds=seeds, quick=quick, log=click.echo)


if __name__ == "__main__":  # pragma: no cover
    quality_cmd()
