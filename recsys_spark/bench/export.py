"""The Redis export against a naive loader, and lookups from Redis against the Delta reader.

A ``user_candidates`` table of N users x 100 candidates (5M rows at the default 50,000 users,
the demo's size) is exported by ``run_export_redis`` (executors, pipelined SETs) and, in the same
run into the same server, by the loader one writes first: the lists collected to the driver and
one SET per key, each a round trip. Then 1,000 random users are looked up through
``RedisRecommendations`` and through the Delta ``Recommendations`` reader in this process.

The server is a redis-server started on a free loopback port without persistence; without one
installed the section says so instead of measuring.
"""

from __future__ import annotations

import random
import shutil
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_spark.bench._common import BenchContext, faster, percentile

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config

TITLE = "Redis export"
SIZES = {"export_users": (50_000, 1_000, "users (x 100 candidates) in the Redis export benchmark's table")}
_LOOKUPS, _WARMUP = 1000, 50


def run(ctx: BenchContext) -> dict[str, Any]:
    return bench_export(ctx.spark, ctx.cfg, ctx.work, ctx.sizes["export_users"])


def _naive_load(spark: SparkSession, cfg: Config, url: str) -> int:
    """One SET per user, from the driver, each its own round trip: the loader one writes first."""
    import redis
    from pyspark.sql import functions as F

    from recsys_spark import tables as T
    from recsys_spark.serving.redis_codec import encode_list
    from recsys_spark.storage.store import TableStore

    client = redis.Redis.from_url(url)
    grouped = (
        TableStore(spark, cfg.storage)
        .read(T.USER_CANDIDATES)
        .groupBy("strategy", "user_id")
        .agg(F.array_sort(F.collect_list(F.struct("rank", "item_idx", "score", "item_id", "source"))).alias("l"))
    )
    n = 0
    for row in grouped.toLocalIterator():
        items = row["l"]
        value = encode_list(
            items[0]["source"] if items else "",
            [r["item_idx"] for r in items],
            [float(r["score"]) for r in items],
            [r["item_id"] for r in items],
        )
        client.set(f"naive:u:{row['strategy']}:{row['user_id']}", value)
        n += 1
    return n


def _latencies(fn: Any, keys: list[str]) -> dict[str, float]:
    for key in keys[:_WARMUP]:
        fn(key)
    ms = []
    for key in keys[_WARMUP:]:
        t0 = time.perf_counter()
        fn(key)
        ms.append((time.perf_counter() - t0) * 1000)
    ms.sort()
    return {"median_ms": statistics.median(ms), "p99_ms": percentile(ms, 99), "max_ms": ms[-1], "lookups": len(ms)}


def bench_export(spark: SparkSession, cfg: Config, work: Path, n_users: int, n_items: int = 20_000) -> dict[str, Any]:
    from recsys_spark.bench.lookup import _write_lookup_tables
    from recsys_spark.dev import redis_server
    from recsys_spark.pipeline.export import run_export_redis
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.serving.lookup import Recommendations
    from recsys_spark.serving.redis_reader import RedisRecommendations

    server = redis_server.start(work / "redis")
    if server is None:
        return {"skipped": "redis-server is not installed (Debian: apt-get install redis-server)", "users": n_users}
    url = server.url
    root = work / "export-warehouse"
    cfg = cfg.with_overrides([f"storage.root={root}", f"export.redis_url={url}", "export.grace_seconds=0"])
    try:
        written, _ = _write_lookup_tables(spark, cfg, n_users, 100, n_items, 1000)
        t0 = time.perf_counter()
        report = run_export_redis(spark, cfg, RunContext.new("export-redis", cfg))
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive_keys = _naive_load(spark, cfg, url)
        naive_s = time.perf_counter() - t0
        rng = random.Random(11)
        keys = [f"u{i:08d}" for i in rng.choices(range(n_users), k=_LOOKUPS + _WARMUP)]
        red = RedisRecommendations(url, refresh_seconds=3600)
        delta = Recommendations.open(str(root), refresh_seconds=3600)
        lookups = {
            "redis": _latencies(lambda u: red.for_user(u, 10), keys),
            "delta": _latencies(lambda u: delta.for_user(u, 10), keys),
        }
        same = sum(red.for_user(u, 10) == delta.for_user(u, 10) for u in keys[:200])
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "users": n_users,
        "rows": written.rows,
        "export": {"seconds": ours_s, "rows_per_s": written.rows / ours_s, "lists": report.users},
        "naive": {"seconds": naive_s, "rows_per_s": written.rows / naive_s, "lists": naive_keys},
        "speedup": naive_s / ours_s,
        "lookups": lookups,
        "identical_of_200": same,
    }


def markdown(ex: dict[str, Any]) -> list[str]:
    title = f"## Redis export ({ex['users']:,} users × 100 candidates)"
    if "skipped" in ex:
        return [title, "", f"Not measured: {ex['skipped']}.", ""]
    e, n, lk = ex["export"], ex["naive"], ex["lookups"]
    return [
        title,
        "",
        "`recsys-spark export redis` (lists grouped and encoded on the executors, pipelined SETs) against "
        "collecting the lists to the driver and one SET per key, into the same redis-server on 127.0.0.1 "
        "in the same run; then 1,000 random users' top-10 from Redis and from the Delta tables, in this process.",
        "",
        "| loader | lists | seconds | rows/s |",
        "|---|---:|---:|---:|",
        f"| naive (driver, one SET per key) | {n['lists']:,} | {n['seconds']:.1f} | {n['rows_per_s']:,.0f} |",
        f"| `export redis` | {e['lists']:,} | {e['seconds']:.1f} | {e['rows_per_s']:,.0f} |",
        "",
        "| reader | median ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
        f"| `Recommendations.for_user` (Delta) | {lk['delta']['median_ms']:.2f} | {lk['delta']['p99_ms']:.2f} | "
        f"{lk['delta']['max_ms']:.1f} |",
        f"| `RedisRecommendations.for_user` | {lk['redis']['median_ms']:.2f} | {lk['redis']['p99_ms']:.2f} | "
        f"{lk['redis']['max_ms']:.1f} |",
        "",
        f"The export is {faster(ex['speedup'])} than the naive loader; Redis lookups are "
        f"{faster(lk['delta']['p99_ms'] / lk['redis']['p99_ms'])} than the Delta reader at p99. "
        f"{ex['identical_of_200']}/200 sampled users got identical lists from both readers.",
        "",
    ]
