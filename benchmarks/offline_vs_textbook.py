"""Offline scoring, whole process: ``importance score`` vs a textbook river loop over the
same CSV rows, timed in the same run.

Run from the repository root::

    python benchmarks/offline_vs_textbook.py                       # the Taobao slice
    python benchmarks/offline_vs_textbook.py --rows 20000 --textbook-rows 5000

Each side is its own process (``/usr/bin/env python ...``), timed from start to exit, so
imports, reading the file and writing the output count: ``importance score FILE --format
taobao -o OUT`` over the first ``--rows`` rows, and the textbook loop (``textbook`` below:
river's OneHotEncoder + StandardScaler + LogisticRegression and its default
KNNClassifier, one event at a time, what ``stream_app.bench.baselines.run_textbook`` does
without Kafka) over the first ``--textbook-rows`` rows (it slows down as it runs: give it
the same rows as ours for a fair ratio, fewer to keep the run short). Prints events/s of
each and the ratio.
"""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "taobao_userbehavior_110k.csv"


def textbook(path: str, out: str) -> int:
    """The textbook loop over a Taobao CSV (user,item,category,behavior,ts), one JSON line
    per event."""
    import orjson

    from stream_app.bench.baselines import _TEXTBOOK_CONVERSIONS, textbook_features, textbook_models

    logistic, knn = textbook_models()
    counts: Counter[str] = Counter()
    n = 0
    with open(path, encoding="utf-8") as rows, open(out, "wb") as sink:
        for line in rows:
            user, item, category, behavior, ts = line.rstrip("\n").split(",")
            x = textbook_features(
                {
                    "user_id": user,
                    "item_id": item,
                    "category_id": category,
                    "type": behavior,
                    "ts": ts,
                }
            )
            p_lr = logistic.predict_proba_one(x).get(True, 0.5)
            p_knn = knn.predict_proba_one(x).get(True, 0.5)
            counts[item] += 1
            behavior_score = 0.5 * x["level"] + 0.5 / math.sqrt(counts[item])
            importance = (
                0.5 * 4 * p_lr * (1 - p_lr) + 0.3 * 4 * p_knn * (1 - p_knn) + 0.2 * behavior_score
            )
            label = behavior.lower() in _TEXTBOOK_CONVERSIONS
            logistic.learn_one(x, label)
            knn.learn_one(x, label)
            record = {"user_id": user, "item_id": item, "importance": importance}
            sink.write(orjson.dumps(record) + b"\n")
            n += 1
    return n


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rows", type=int, default=110_300)
    parser.add_argument("--textbook-rows", type=int, default=20_000)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data at {args.data} (see ../shared/data/README.md)")
    with tempfile.TemporaryDirectory() as tmp:
        ours_in, book_in = Path(tmp, "ours.csv"), Path(tmp, "book.csv")
        with args.data.open(encoding="utf-8") as rows:
            lines = list(itertools.islice(rows, max(args.rows, args.textbook_rows)))
        ours_in.write_text("".join(lines[: args.rows]), encoding="utf-8")
        book_in.write_text("".join(lines[: args.textbook_rows]), encoding="utf-8")
        out = str(Path(tmp, "out.jsonl"))
        cli = [sys.executable, "-m", "stream_app.cli", "score", str(ours_in)]
        ours_s = _timed([*cli, "--format", "taobao", "-o", out])
        n_ours = min(args.rows, len(lines))
        ours = n_ours / ours_s
        print(f"importance score: {n_ours:,} rows in {ours_s:.1f} s: {ours:,.0f} ev/s", flush=True)
        book_s = _timed([sys.executable, __file__, "--_textbook", str(book_in), out])
    n_book = min(args.textbook_rows, len(lines))
    book = n_book / book_s
    print(f"textbook loop:    {n_book:,} rows in {book_s:.1f} s: {book:,.0f} ev/s")
    print(f"ratio: {ours / book:.1f}x")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_textbook":
        textbook(sys.argv[2], sys.argv[3])
    else:
        main()
