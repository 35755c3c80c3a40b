"""``importance bench memory``: is the state bounded when the ids are not?

Feeds synthetic events (:mod:`stream_app.bench.synthetic`: 2,000,000 events over about
1,000,000 distinct users and 200,000 items) through the worker's per-event path in process
(:class:`stream_app.bench.baselines.PlainPipeline`: decode, label attribution, the engine of
each of the 4 partitions, learning, training samples, snapshots) and samples, every
``every`` events, the process's RSS and the size of each piece of state: pending exposures,
users with pending exposures, entries of the expiry heaps, logistic weights.

Hashing (features, behaviour counters) and windows (KNN, rank, attribution window and the
per-user / per-partition caps on pending exposures) must keep all of it bounded: after the
attribution window has filled, RSS should stay flat while distinct users keep growing.
"""

from __future__ import annotations

import gc
import math
import os
import time
import zlib
from pathlib import Path
from typing import Any

import click
import orjson

__all__ = ["MemoryConfig", "memory_cmd", "run_memory"]


class MemoryConfig:
    """Sizes of a memory run; ``quick`` is the smoke-test size."""

    def __init__(
        self,
        events: int = 2_000_000,
        users: int = 1_000_000,
        items: int = 200_000,
        every: int = 100_000,
        partitions: int = 4,
        events_per_s: float = 100.0,
        seed: int = 0,
    ) -> None:
        self.events = events
        self.users = users
        self.items = items
        self.every = every
        self.partitions = partitions
        self.events_per_s = events_per_s
        self.seed = seed

    @classmethod
    def quick(cls) -> MemoryConfig:
        # A slower event clock, so that the attribution window fills within the run.
        return cls(events=40_000, users=20_000, items=5_000, every=5_000, events_per_s=2.0)


def _rss() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def state_sizes(pipeline) -> dict[str, int]:
    """Sizes of the per-event state of a :class:`PlainPipeline`."""
    labels = pipeline.labels
    return {
        "pending": labels.pending(),
        "pending_users": len(labels.store),
        "heap_entries": sum(len(h) for h in labels._heaps.values()),
        "logistic_weights": sum(e.logistic.model.n_weights for e in pipeline.engines.values()),
    }


def run_memory(cfg: MemoryConfig, log=lambda msg: click.echo(msg, err=True)) -> dict[str, Any]:
    """Run the benchmark; returns the samples and a verdict."""
    from models.events import decode_event
    from stream_app.bench.baselines import PlainPipeline
    from stream_app.bench.synthetic import synthetic_events
    from stream_app.config import Settings

    settings = Settings.from_env()
    pipeline = PlainPipeline(settings)
    gc.collect()
    samples = [
        {"events": 0, "rss_mb": _rss() / 2**20, "distinct_users": 0, "seconds": 0.0}
        | state_sizes(pipeline)
    ]
    # Bitmaps (fixed size) rather than sets, so that counting distinct ids does not itself
    # grow with them.
    seen_users = bytearray(cfg.users)
    seen_items = bytearray(cfg.items)
    n_users = n_items = 0
    dumps = orjson.dumps
    partitions = cfg.partitions
    started = time.perf_counter()
    scored = 0
    training = 0
    stream = synthetic_events(
        cfg.events,
        seed=cfg.seed,
        n_users=cfg.users,
        n_items=cfg.items,
        events_per_s=cfg.events_per_s,
    )
    for i, event in enumerate(stream, start=1):
        if not seen_users[event["user_id"]]:
            seen_users[event["user_id"]] = 1
            n_users += 1
        if not seen_items[event["item_id"]]:
            seen_items[event["item_id"]] = 1
            n_items += 1
        ev = decode_event(dumps(event))
        partition = zlib.crc32(ev.user_id.encode()) % partitions
        dumps(pipeline.process(partition, ev))
        scored += 1
        if pipeline.training:
            training += len(pipeline.training)
            pipeline.training.clear()
        if i % cfg.every == 0 or i == cfg.events:
            sample = {
                "events": i,
                "rss_mb": _rss() / 2**20,
                "distinct_users": n_users,
                "seconds": time.perf_counter() - started,
            } | state_sizes(pipeline)
            samples.append(sample)
            log(
                f"{i:>9,} events  RSS {sample['rss_mb']:7.1f} MB  users {n_users:>9,}  "
                f"pending {sample['pending']:>8,} ({sample['pending_users']:,} users)  "
                f"heap {sample['heap_entries']:,}"
            )
    seconds = time.perf_counter() - started
    # Bounded: over the second half of the run RSS grows by less than a tenth of the
    # first half's growth plus a 5 % margin, while distinct users keep growing.
    half = samples[len(samples) // 2]
    last = samples[-1]
    first = samples[0]
    growth_first = half["rss_mb"] - first["rss_mb"]
    growth_second = last["rss_mb"] - half["rss_mb"]
    bounded = growth_second <= max(0.1 * growth_first, 0.05 * last["rss_mb"])
    from stream_app.bench.speed import git_commit

    return {
        "commit": git_commit(),
        "config": vars(cfg),
        "events": scored,
        "distinct_users": n_users,
        "distinct_items": n_items,
        "training_samples": training,
        "labels_resolved": pipeline.labels.resolved,
        "labels_evicted": pipeline.labels.evicted,
        "snapshots": pipeline.snapshots,
        "seconds": seconds,
        "events_per_s": scored / seconds if seconds else math.nan,
        "samples": samples,
        "rss_growth_first_half_mb": growth_first,
        "rss_growth_second_half_mb": growth_second,
        "bounded": bounded,
        "settings": {
            "attribution_window_s": settings.attribution_window_s,
            "max_pending_per_user": settings.max_pending_per_user,
            "max_pending_per_partition": settings.max_pending_per_partition,
        },
    }


def render_markdown(r: dict[str, Any], img_prefix: str = "img/") -> str:
    c = r["config"]
    s = r["samples"]
    lines = [
        "## Memory",
        "",
        f"`importance bench memory`: {r['events']:,} synthetic events "
        f"(`stream_app/bench/synthetic.py`: Zipf-like item popularity, sessions with "
        f"view → cart/fav/purchase funnels, {c['events_per_s']:g} events per second of event "
        f"time) over {r['distinct_users']:,} distinct users and {r['distinct_items']:,} "
        f"distinct items (of {c['users']:,} / {c['items']:,}), through the worker's per-event "
        f"path in one process ({c['partitions']} partitions, attribution window "
        f"{r['settings']['attribution_window_s']:g} s, at most "
        f"{r['settings']['max_pending_per_user']} pending exposures per user and "
        f"{r['settings']['max_pending_per_partition']:,} per partition). "
        f"Code at commit {r.get('commit') or 'unknown'}; "
        f"{r['seconds']:.0f} s, {r['events_per_s']:,.0f} events/s; "
        f"{r['labels_resolved']:,} labels resolved ({r['labels_evicted']:,} by the caps), "
        f"{r['training_samples']:,} training samples, {r['snapshots']} snapshots.",
        "",
        "| events | RSS (MB) | distinct users | pending exposures | users with pending | "
        "heap entries | logistic weights |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    step = max(1, (len(s) - 1) // 10)
    shown = s[::step] if s[-1] in s[::step] else [*s[::step], s[-1]]
    for x in shown:
        lines.append(
            f"| {x['events']:,} | {x['rss_mb']:.0f} | {x['distinct_users']:,} | "
            f"{x['pending']:,} | {x['pending_users']:,} | {x['heap_entries']:,} | "
            f"{x['logistic_weights']:,} |"
        )
    verdict = "bounded" if r["bounded"] else "NOT bounded"
    lines += [
        "",
        f"RSS grew {r['rss_growth_first_half_mb']:.0f} MB over the first half of the run and "
        f"{r['rss_growth_second_half_mb']:.0f} MB over the second half, while distinct users "
        f"kept growing: **{verdict}**.",
        *_breakdown(r),
        "",
        f"![RSS vs events]({img_prefix}memory-rss.png)",
    ]
    return "\n".join(lines)


def _breakdown(r: dict[str, Any]) -> list[str]:
    """What the RSS is made of, from the samples."""
    s = r["samples"]
    final = s[-1]
    if len(s) < 3 or final["pending"] == 0:
        return []
    filled = next(x for x in s if x["pending"] >= 0.95 * final["pending"])
    per_pending = (filled["rss_mb"] - s[0]["rss_mb"]) * 2**20 / filled["pending"]
    capacity = r["config"]["partitions"] * 2**18
    return [
        "",
        f"Most of the state is the pending exposures waiting for their label: they stop "
        f"growing once the attribution window has filled (about {filled['events']:,} events "
        f"here), at about {per_pending / 1024:.1f} KiB each (RSS growth up to then ÷ pending "
        f"exposures; each keeps the event, its p and its importance: what its label-time "
        f"decision needs). "
        f"What still grows afterwards, slower and slower, is the logistic learners' weights "
        f"filling their hashed feature space: {final['logistic_weights']:,} of "
        f"{capacity:,} buckets ({r['config']['partitions']} partitions × 2^18) at the end.",
    ]


def plot(r: dict[str, Any], img_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    s = r["samples"]
    xs = [x["events"] / 1e6 for x in s]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(xs, [x["rss_mb"] for x in s], "o-", color="C0", label="RSS (MB)")
    ax.set_xlabel("events (millions)")
    ax.set_ylabel("RSS (MB)", color="C0")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(xs, [x["distinct_users"] / 1e3 for x in s], "--", color="C7", label="distinct users")
    ax2.plot(xs, [x["pending"] / 1e3 for x in s], ":", color="C1", label="pending exposures")
    ax2.set_ylabel("thousands")
    ax2.set_ylim(bottom=0)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    ax.set_title("RSS of the per-event path vs events, while distinct users grow")
    fig.tight_layout()
    path = img_dir / "memory-rss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@click.command("memory")
@click.option("--quick", is_flag=True, help="Smoke-test size (40k events).")
@click.option("--events", type=int, default=None)
@click.option("--users", type=int, default=None)
@click.option("--items", type=int, default=None)
@click.option("--every", type=int, default=None, help="Sample RSS every N events.")
@click.option(
    "--docs/--no-docs",
    "write_docs",
    default=None,
    help="Write docs/benchmarks.md and docs/img/ (default: yes unless --quick).",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Do not run: render the report (and docs) of a saved --json.",
)
def memory_cmd(
    quick: bool,
    events: int | None,
    users: int | None,
    items: int | None,
    every: int | None,
    write_docs: bool | None,
    json_path: Path | None,
    from_json: Path | None,
) -> None:
    """RSS and state sizes over millions of synthetic events and distinct users."""
    cfg = MemoryConfig.quick() if quick else MemoryConfig()
    for name, value in (("events", events), ("users", users), ("items", items), ("every", every)):
        if value is not None:
            setattr(cfg, name, value)
    results = orjson.loads(from_json.read_bytes()) if from_json else run_memory(cfg)
    if json_path is not None:
        json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    click.echo(render_markdown(results))
    if write_docs is None:
        write_docs = not quick
    if write_docs:
        from stream_app.bench import docs_dir, update_doc_section

        plot(results, docs_dir() / "img")
        path = update_doc_section("memory", render_markdown(results))
        click.echo(f"wrote {path} and docs/img/memory-rss.png", err=True)
