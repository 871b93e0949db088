"""Held-out evaluation: recommenders fitted on a training split, judged on its test split.

Each model and baseline produces, for every evaluated user, a ranked list of ``max(ks)`` items
the user did not interact with in training; :mod:`recsys_spark.metrics` scores the lists.
Evaluated users are the users with at least one relevant test item and at least one training
item (a user without training history is a cold-start case, which no model here can rank).

* ``als``: MLlib ALS fitted on the training split (``[als]``), scored with the blocked top-k.
* ``item_item``: item-item cosine on the training split (``[similarity]``), candidates as in
  ``topk`` (the user's ``candidates.recent_items`` most recent items vote).
* ``popularity``: the most popular training items (distinct users) the user has not seen.
* ``random``: uniformly random unseen items, seeded by ``evaluation.seed``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.blocked_topk import BlockShape
from recsys_spark.candidates import als_candidates, cold_start_candidates, item_item_candidates
from recsys_spark.config import AlsConfig, Config

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
    order = Window.orderBy(F.col("users").desc(), F.col("item_idx"))
    # a global top list of k + pad rows: the single-partition window only ever sees the catalogue
    popular = item_popularity(train).withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k + pad)
    return cold_start_candidates(users, train, popular, k, pad).drop("source")


def random_recs(train: DataFrame, users: DataFrame, n_items: int, k: int, seed: int) -> DataFrame:
    """k distinct uniformly random unseen items per user, reproducible from ``seed``.

    Each user draws ``k + seen + 16`` item ids from a seeded hash, drops repeats and seen items and
    keeps the first k draws (enough unless the user has seen nearly the whole catalogue).
    """
    seen_n = train.groupBy("user_idx").agg(F.count("*").alias("n_seen"))
    draws = (users.join(seen_n, "user_idx", "left")
             .select("user_idx", F.explode(F.sequence(F.lit(0), F.least(F.col("n_seen"), F.lit(n_items)) + k + 15))
                     .alias("draw")))
    item = F.pmod(F.xxhash64(F.lit(seed), "user_idx", "draw"), F.lit(n_items)).cast("int")
    picked = (draws.withColumn("item_idx", item)
              .groupBy("user_idx", "item_idx").agg(F.min("draw").alias("draw"))
              .join(train.select("user_idx", "item_idx"), ["user_idx", "item_idx"], "left_anti"))
    order = Window.partitionBy("user_idx").orderBy("draw")
    return (picked.withColumn("rank", F.row_number().over(order).cast("int")).where(F.col("rank") <= k)
            .select("user_idx", "item_idx", (1.0 / F.col("rank")).cast("float").alias("score"), "rank"))


def als_recs(train: DataFrame, users: DataFrame, k: int, als_cfg: AlsConfig,
             shape: BlockShape) -> tuple[DataFrame, DataFrame, Any]:
    """Fit ALS on ``train`` and rank unseen items for ``users``; returns (recs, item_factors, model)."""
    from recsys_spark.als import factor_frames, fit_als, training_frame

    model = fit_als(training_frame(train, als_cfg), als_cfg)
    uf, itf = factor_frames(model)
    uf, itf = uf.persist(), itf.persist()
    recs = als_candidates(uf.join(users, "user_idx", "left_semi"), itf, train, k, shape)
    return recs.drop("source"), itf, model


def item_item_recs(train: DataFrame, users: DataFrame, k: int, cfg: Config) -> DataFrame:
    """Item-item cosine fitted on ``train``; candidates from each user's recent items."""
    from recsys_spark.similarity import item_cosine

    neighbors = item_cosine(train, cfg.similarity).persist()
    return item_item_candidates(train, neighbors, users, k, cfg.candidates.recent_items).drop("source")


def beats(model_value: float | None, baseline_value: float | None) -> bool:
    """Whether a model's headline value is strictly above the baseline's (missing values never beat)."""
    return model_value is not None and baseline_value is not None and model_value > baseline_value


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) across splits; 0 for a single split."""
    n = len(values)
    mean = sum(values) / n
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
