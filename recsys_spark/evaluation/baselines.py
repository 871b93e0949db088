"""The baselines every strategy must beat: popularity and random lists.

* ``popularity``: the most popular training items (distinct users) the user has not seen.
* ``random``: uniformly random unseen items, seeded by ``evaluation.seed``.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.candidates.builder import cold_start_candidates
from recsys_spark.kernels.selection import first_n_per_key

log = logging.getLogger(__name__)

#: Upper bound on the seen items a baseline list is padded for (heavier users may get < k items).
_MAX_PADDING = 1000


def item_popularity(train: DataFrame) -> DataFrame:
    """(item_idx, users): distinct training users per item."""
    return train.groupBy("item_idx").agg(F.count("*").alias("users"))


def popularity_recs(train: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """Most popular unseen training items per user: (user_idx, item_idx, score, rank)."""
    max_seen = train.join(users, "user_idx", "left_semi").groupBy("user_idx").count().agg(F.max("count")).first()[0]
    pad = min(int(max_seen or 0), _MAX_PADDING)
    # a global top list of k + pad rows: the single-partition window only ever sees the catalogue
    popular = first_n_per_key(item_popularity(train), [], [F.col("users").desc(), F.col("item_idx")], k + pad)
    return cold_start_candidates(users, train, popular, k, pad).drop("source")


def random_recs(train: DataFrame, users: DataFrame, n_items: int, k: int, seed: int) -> DataFrame:
    """k distinct uniformly random unseen items per user, reproducible from ``seed``.

    Each user draws ``k + seen + 16`` item ids from a seeded hash, drops repeats and seen items and
    keeps the first k draws (enough unless the user has seen nearly the whole catalogue).
    """
    seen_n = train.groupBy("user_idx").agg(F.count("*").alias("n_seen"))
    draws = users.join(seen_n, "user_idx", "left").select(
        "user_idx", F.explode(F.sequence(F.lit(0), F.least(F.col("n_seen"), F.lit(n_items)) + k + 15)).alias("draw")
    )
    item = F.pmod(F.xxhash64(F.lit(seed), "user_idx", "draw"), F.lit(n_items)).cast("int")
    picked = (
        draws.withColumn("item_idx", item)
        .groupBy("user_idx", "item_idx")
        .agg(F.min("draw").alias("draw"))
        .join(train.select("user_idx", "item_idx"), ["user_idx", "item_idx"], "left_anti")
    )
    return first_n_per_key(picked, "user_idx", ["draw"], k).select(
        "user_idx", "item_idx", (1.0 / F.col("rank")).cast("float").alias("score"), "rank"
    )
