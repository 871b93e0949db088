"""Lookup latency of ``Recommendations.for_user`` on a ``user_candidates`` table of N users x 100
candidates written like the candidates job writes it, in a fresh process without Spark, against the same
filter on a plain ``pyarrow.dataset`` over the same files (no Delta statistics)."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_spark.bench._common import BenchContext, faster, percentile

if TYPE_CHECKING:  # the lookup reader process must not import pyspark
    from pyspark.sql import Column, DataFrame, SparkSession

    from recsys_spark.config.schema import Config
    from recsys_spark.storage.store import WriteResult

TITLE = "Lookup latency"
#: Size options: name -> (full default, --quick value, help).
SIZES = {
    "lookup_users": (1_000_000, 2_000, "users (x 100 candidates) in the lookup benchmark's table"),
    "lookup_items": (200_000, 2_000, "items (x 50 neighbours) in the lookup benchmark's item_neighbors"),
}

#: Neighbours per item in the item lookup table (the similarity job's default top_n).
_NEIGHBORS = 50


def run(ctx: BenchContext) -> dict[str, Any]:
    return bench_lookup(ctx.spark, ctx.cfg, ctx.work, ctx.sizes["lookup_users"], ctx.sizes["lookup_items"])


# -- lookup latency ------------------------------------------------------------------------------

#: Columns ``Recommendations.for_user`` reads; the baseline reads the same ones.
_LOOKUP_COLUMNS = ["user_id", "rank", "item_id", "item_idx", "score", "source", "because_item_id", "because_share"]
#: Columns ``Recommendations.similar_items`` reads.
_NEIGHBOR_COLUMNS = ["item_id", "rank", "neighbor_id", "neighbor_idx", "similarity"]
_LOOKUP_TARGET_P99_MS = 20.0
_LOOKUP_WARMUP = 20
_ITEM_STRIDE = 613  # prime: (user * a + rank * 613) mod n_items is distinct over a user's ranks


def _padded_id(prefix: str, idx: Column) -> Column:
    """``prefix`` + the index zero-padded to 8 digits, like f"u{idx:08d}" (format_string is 4x slower)."""
    from pyspark.sql import functions as F

    return F.concat(F.lit(prefix), F.lpad(idx.cast("string"), 8, "0"))


def _candidate_rows(spark: SparkSession, n_users: int, k: int, n_items: int, files: int) -> DataFrame:
    """The als partition of ``user_candidates``: n_users x k rows from ``spark.range``, no UDFs,
    explanations included.

    User ids are ``u%08d``; items are distinct within a user; scores fall with rank and carry
    per-user and per-row noise, so the score column does not compress better than real scores.
    """
    from math import gcd

    from pyspark.sql import functions as F

    if k > n_items or gcd(_ITEM_STRIDE, n_items) != 1:
        raise ValueError(f"cannot give {k} distinct items per user out of {n_items}")
    if max(n_users, n_items) > 10**8:
        raise ValueError("ids are padded to 8 digits: at most 100,000,000 users and items")
    user_idx, rank = F.col("u"), F.col("rank")
    item_idx = ((user_idx.cast("long") * 7919 + rank * _ITEM_STRIDE) % n_items).cast("int")
    user_scale = F.pmod(F.xxhash64(user_idx), F.lit(1_000_000)) / 1e6  # [0, 1)
    noise = F.pmod(F.xxhash64(F.col("id")), F.lit(1000)) * (0.4 / k / 1000)  # < half a rank step
    score = ((0.5 + user_scale) * (k + 1 - rank) / k + noise).cast("float")
    # an explanation per row, as the neighbour strategies write them: one of a few history items
    because_idx = ((user_idx.cast("long") * 104729 + F.pmod(F.col("id"), F.lit(7)) * 131) % n_items).cast("int")
    share = (F.pmod(F.xxhash64(F.col("id"), F.lit(1)), F.lit(1000)) / 1000.0).cast("float")
    return _expanded(spark, n_users, k, files, "u").select(
        _padded_id("u", user_idx).alias("user_id"),
        user_idx.alias("user_idx"),
        rank.alias("rank"),
        _padded_id("i", item_idx).alias("item_id"),
        item_idx.alias("item_idx"),
        score.alias("score"),
        F.lit("als").alias("source"),
        _padded_id("i", because_idx).alias("because_item_id"),
        because_idx.alias("because_item_idx"),
        share.alias("because_share"),
        F.lit("bench").alias("model_version"),
        F.lit("als").alias("strategy"),
    )


def _expanded(spark: SparkSession, n_keys: int, k: int, files: int, key: str) -> DataFrame:
    """(key, rank 1..k, id = key * k + rank - 1) rows in ``files`` partitions of consecutive keys.

    Keys are generated in order and each partition holds whole keys, so the rows already are in the
    layout the jobs write (one key never spans two files, every file sorted by key then rank) without
    the range shuffle and sort that 100M rows would cost.
    """
    from pyspark.sql import functions as F

    return (
        spark.range(0, n_keys, 1, files)
        .select(F.col("id").cast("int").alias(key), F.explode(F.sequence(F.lit(1), F.lit(k))).alias("rank"))
        .withColumn("id", F.col(key).cast("long") * k + F.col("rank") - 1)
    )


def _neighbor_rows(spark: SparkSession, n_items: int, n: int, files: int) -> DataFrame:
    """The cosine partition of ``item_neighbors``: n_items x n rows, neighbours distinct and never the item."""
    from pyspark.sql import functions as F

    item_idx, rank = F.col("u"), F.col("rank")
    neighbor_idx = ((item_idx.cast("long") + rank * _ITEM_STRIDE) % n_items).cast("int")
    noise = F.pmod(F.xxhash64(F.col("id")), F.lit(1000)) * (0.4 / n / 1000)
    return _expanded(spark, n_items, n, files, "u").select(
        _padded_id("i", item_idx).alias("item_id"),
        item_idx.alias("item_idx"),
        rank.alias("rank"),
        _padded_id("i", neighbor_idx).alias("neighbor_id"),
        neighbor_idx.alias("neighbor_idx"),
        ((n + 1 - rank) / (n + 1) + noise).cast("float").alias("similarity"),
        (F.pmod(F.xxhash64(F.col("id")), F.lit(500)) + 1).cast("int").alias("cooccurrence"),
        F.lit("cosine").alias("method"),
        F.lit("bench").alias("model_version"),
    )


def _write_lookup_tables(
    spark: SparkSession,
    cfg: Config,
    n_users: int,
    k: int,
    n_items: int,
    n_neighbor_items: int,
) -> tuple[WriteResult, WriteResult]:
    """popular_items, user_candidates and item_neighbors under ``cfg.storage.root``, laid out as the
    candidates and similarity jobs lay them out; returns the user_candidates and item_neighbors writes.

    ``items`` too, as ingest writes it: lookups take item ids from it by item_idx.
    """
    import math

    from pyspark.sql import functions as F

    from recsys_spark import tables as T
    from recsys_spark.pipeline.common import LOOKUP_ROW_GROUP_BYTES
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.storage.store import TableStore

    store = TableStore(spark, cfg.storage)
    ctx = RunContext.new("bench-lookup", cfg)
    rank = (F.col("id") % k + 1).cast("int")
    popular = (
        spark.range(2 * k)
        .select(
            F.when(F.col("id") < k, "overall").otherwise("recent").alias("segment"),
            rank.alias("rank"),
            (rank - 1).alias("item_idx"),
            _padded_id("i", rank - 1).alias("item_id"),
            (k + 1 - rank).cast("double").alias("score"),
            (k + 1 - rank).cast("long").alias("users"),
            F.lit("popular-bench").alias("model_version"),
        )
        .repartition(1)
        .sortWithinPartitions("segment", "rank")
    )
    store.write(popular, T.POPULAR_ITEMS, "overwrite", ctx.commit())
    catalog = spark.range(max(n_items, n_neighbor_items)).select(
        _padded_id("i", F.col("id")).alias("item_id"), F.col("id").cast("int").alias("item_idx")
    )
    store.write(catalog, T.ITEMS, "overwrite", ctx.commit())
    n_files = max(1, math.ceil(n_users * k / cfg.candidates.rows_per_file))
    rows = _candidate_rows(spark, n_users, k, n_items, n_files)
    users = store.write(
        rows,
        T.USER_CANDIDATES,
        "overwrite",
        ctx.commit(model_version="bench", strategy="als"),
        ["strategy"],
        replace={"strategy": "als"},
        row_group_bytes=LOOKUP_ROW_GROUP_BYTES,
    )
    n_files = max(1, math.ceil(n_neighbor_items * _NEIGHBORS / cfg.candidates.rows_per_file))
    neighbors = _neighbor_rows(spark, n_neighbor_items, _NEIGHBORS, n_files)
    items = store.write(
        neighbors,
        T.ITEM_NEIGHBORS,
        "overwrite",
        ctx.commit(model_version="bench", method="cosine"),
        ["method"],
        replace={"method": "cosine"},
        row_group_bytes=LOOKUP_ROW_GROUP_BYTES,
    )
    return users, items


def lookup_reader(spec: dict[str, Any]) -> dict[str, Any]:
    """Time single-user lookups in this process (started fresh, without Spark) and report its peak RSS.

    ``spec["mode"]`` is "recommendations" (``Recommendations.open(root).for_user``) or "files"
    (a plain ``pyarrow.dataset`` over ``spec["files"]``, filtered the same way).
    """
    import resource

    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    k, warmup, user_ids = spec["k"], spec["warmup"], spec["keys"]
    start = time.perf_counter()
    item = spec["key"] == "item"
    if spec["mode"] == "recommendations":
        from recsys_spark.serving.lookup import Recommendations

        recs = Recommendations.open(spec["root"])

        def lookup(key: str) -> int:
            return len(recs.similar_items(key, k=k) if item else recs.for_user(key, k=k))
    else:
        ds = pads.dataset(spec["files"], format="parquet")
        column, columns = ("item_id", _NEIGHBOR_COLUMNS) if item else ("user_id", _LOOKUP_COLUMNS)

        def lookup(key: str) -> int:
            cols = ds.to_table(filter=pc.field(column) == key, columns=columns).to_pydict()
            return sum(1 for r in cols["rank"] if r <= k)

    open_s = time.perf_counter() - start
    for uid in user_ids[:warmup]:
        lookup(uid)
    times, counts = [], []
    for uid in user_ids[warmup:]:
        t0 = time.perf_counter()
        counts.append(lookup(uid))
        times.append((time.perf_counter() - t0) * 1000)
    ms = sorted(times)
    return {
        "lookups": len(ms),
        "warmup": warmup,
        "open_s": open_s,
        "median_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
        "rows_ok": sum(c == k for c in counts),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "pyspark_imported": "pyspark" in sys.modules,
    }


def _run_reader(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """:func:`lookup_reader` in a fresh interpreter (no Spark, no JVM), so its RSS is a serving process's."""
    path = work / f"reader-{spec['key']}-{spec['mode']}.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_spark.bench", "--lookup-reader", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"lookup reader ({spec['key']}, {spec['mode']}) failed with exit code {proc.returncode}:\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_lookup(
    spark: SparkSession,
    cfg: Config,
    work: Path,
    n_users: int,
    n_neighbor_items: int,
    lookups: int = 1000,
    k: int = 100,
    n_items: int = 20_000,
    seed: int = 42,
) -> dict[str, Any]:
    from deltalake import DeltaTable

    from recsys_spark import tables as T

    root = work / "lookup-warehouse"
    cfg = cfg.with_overrides([f"storage.root={root}"])
    start = time.perf_counter()
    users_written, items_written = _write_lookup_tables(spark, cfg, n_users, k, n_items, n_neighbor_items)
    write_s = time.perf_counter() - start
    rng = random.Random(seed)
    result: dict[str, Any] = {
        "users": n_users,
        "candidates_per_user": k,
        "items": n_neighbor_items,
        "neighbors_per_item": _NEIGHBORS,
    }
    try:
        for key, table, n_keys, per_key, written in (
            ("user", T.USER_CANDIDATES, n_users, k, users_written),
            ("item", T.ITEM_NEIGHBORS, n_neighbor_items, _NEIGHBORS, items_written),
        ):
            prefix = "u" if key == "user" else "i"
            keys = [f"{prefix}{i:08d}" for i in rng.sample(range(n_keys), min(n_keys, lookups + _LOOKUP_WARMUP))]
            files = [
                u[len("file://") :] if u.startswith("file://") else u
                for u in DeltaTable(T.table_location(str(root), table)).file_uris()
            ]
            spec = {"root": str(root), "k": per_key, "warmup": _LOOKUP_WARMUP, "key": key, "keys": keys, "files": files}
            ours = _run_reader({**spec, "mode": "recommendations"}, work)
            baseline = _run_reader({**spec, "mode": "files"}, work)
            call = f"for_user(uid, k={per_key})" if key == "user" else f"similar_items(iid, k={per_key})"
            result[key] = {
                "table": {
                    "name": table,
                    "rows": written.rows,
                    "files": written.files,
                    "mb": written.bytes / 1e6,
                    "engine": written.engine,
                },
                "lookup": {"what": f"Recommendations.open(root).{call}", **ours},
                "baseline": {
                    "what": f"pyarrow.dataset(<same files>) filtered on {key}_id (no Delta statistics)",
                    **baseline,
                },
                "speedup_median": baseline["median_ms"] / ours["median_ms"],
                "speedup_p99": baseline["p99_ms"] / ours["p99_ms"],
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["write_s"] = write_s
    p99 = result["user"]["lookup"]["p99_ms"]
    result["target"] = {
        "p99_ms_below": _LOOKUP_TARGET_P99_MS,
        "at_users": 1_000_000,
        "met": p99 < _LOOKUP_TARGET_P99_MS,
        "measured_at_target_size": n_users >= 1_000_000,
    }
    return result


def markdown(lk: dict[str, Any]) -> list[str]:
    target = lk["target"]
    lines = [
        f"## Lookups ({lk['users']:,} users × {lk['candidates_per_user']} candidates; {lk['items']:,} items × "
        f"{lk['neighbors_per_item']} neighbours)",
        "",
        "Tables written like the candidates and similarity jobs write them (sorted by the lookup key, "
        f"{lk['write_s']:.0f} s to write both). Each reader is a fresh Python process without Spark; "
        f"{lk['user']['lookup']['lookups']:,} random existing keys after {lk['user']['lookup']['warmup']} "
        "warm-up lookups. Peak RSS is the whole reader process's.",
        "",
        "| lookup | table | reader | median ms | p99 ms | max ms | full rows | open s | peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("user", "item"):
        section = lk[key]
        t = section["table"]
        where = f"{t['rows']:,} rows, {t['files']} file{'s' if t['files'] != 1 else ''}, {t['mb']:,.0f} MB"
        for reader in ("baseline", "lookup"):
            r = section[reader]
            lines.append(
                f"| {key} | {where} | {r['what']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['max_ms']:.1f} | {r['rows_ok']}/{r['lookups']} | {r['open_s']:.2f} | "
                f"{r['peak_rss_mb']:.0f} |"
            )
    met = "met" if target["met"] else "**missed**"
    size = (
        ""
        if target["measured_at_target_size"]
        else f" (the target is for {target['at_users']:,} users; this run had {lk['users']:,})"
    )
    u, i = lk["user"], lk["item"]
    lines += [
        "",
        f"`for_user` is {faster(u['speedup_median'])} than the plain dataset at the median and "
        f"{faster(u['speedup_p99'])} at p99; `similar_items` {faster(i['speedup_median'])} and "
        f"{faster(i['speedup_p99'])}. The target p99 < {target['p99_ms_below']:.0f} ms warm for user lookups "
        f"is {met}: p99 = {u['lookup']['p99_ms']:.1f} ms{size}."
        + (" A reader imported pyspark." if u["lookup"]["pyspark_imported"] or i["lookup"]["pyspark_imported"] else ""),
        "",
    ]
    return lines
