"""Per-event cost of river's KNNClassifier vs FastKNNClassifier.

Run from the repository root::

    python benchmarks/knn_search.py               # window 1000, d=16, k=10, 20,000 events
    python benchmarks/knn_search.py --repeats 5 --events 5000

Each repeat streams the same events through a fresh model doing one
``predict_proba`` then one ``learn`` per event (the window fills during the first
``window`` events), and reports the median over repeats of the mean cost per event.
Rows:

* ``river KNNClassifier``: ``neighbors.KNNClassifier`` with a ``LazySearch`` engine
  (exact search, same window and k), dict input.
* ``FastKNNClassifier (dict)``: ``predict_proba_one`` / ``learn_one`` on the same dicts.
* ``FastKNNClassifier (vec)``: ``predict_proba_vec`` / ``learn_vec`` on float32 vectors.
* ``KNNImportance (vec)``: ``score`` + ``learn`` (one shared search per event).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from river import neighbors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.scorers.knn import FastKNNClassifier, KNNImportance


def make_stream(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.standard_normal(n)) > 0
    names = [f"f{j:02d}" for j in range(d)]
    dicts = [dict(zip(names, map(float, row), strict=True)) for row in X]
    return X, [bool(v) for v in y], dicts


def time_run(run: Callable[[], None], n_events: int) -> float:
    """Wall time of one run in microseconds per event (GC paused while timing)."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        run()
        elapsed = time.perf_counter() - t0
    finally:
        gc.enable()
    return elapsed / n_events * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    X, ys, dicts = make_stream(args.events, args.dim, args.seed)
    n, w, k = args.events, args.window, args.k

    def river_run() -> None:
        model = neighbors.KNNClassifier(
            n_neighbors=k, engine=neighbors.LazySearch(window_size=w), weighted=True
        )
        for x, y in zip(dicts, ys, strict=True):
            model.predict_proba_one(x)
            model.learn_one(x, y)

    def fast_dict_run() -> None:
        model = FastKNNClassifier(n_neighbors=k, window_size=w)
        for x, y in zip(dicts, ys, strict=True):
            model.predict_proba_one(x)
            model.learn_one(x, y)

    def fast_vec_run() -> None:
        model = FastKNNClassifier(n_neighbors=k, window_size=w)
        for i in range(n):
            v = X[i]
            model.predict_proba_vec(v)
            model.learn_vec(v, ys[i])

    def scorer_run() -> None:
        scorer = KNNImportance(n_neighbors=k, window_size=w)
        for i in range(n):
            v = X[i]
            scorer.score(v)
            scorer.learn(v, ys[i])

    runs = [
        ("river KNNClassifier (LazySearch)", river_run),
        ("FastKNNClassifier (dict)", fast_dict_run),
        ("FastKNNClassifier (vec)", fast_vec_run),
        ("KNNImportance score+learn (vec)", scorer_run),
    ]

    print(
        f"events={n} window={w} d={args.dim} k={k} repeats={args.repeats} "
        f"(predict + learn per event; median of repeats)"
    )
    results = []
    for name, run in runs:
        samples = [time_run(run, n) for _ in range(args.repeats)]
        results.append((name, statistics.median(samples), min(samples)))
        print(f"  measured {name}: " + ", ".join(f"{s:.1f}" for s in samples) + " us/event")

    ref = results[0][1]
    print()
    print(f"{'model':<36}{'median us/event':>17}{'min us/event':>15}{'speed-up':>11}")
    for name, med, best in results:
        print(f"{name:<36}{med:>17.1f}{best:>15.1f}{ref / med:>10.1f}x")


if __name__ == "__main__":
    main()
