"""Per-user top-k candidates and popularity lists (DataFrame in, DataFrame out).

Strategies, each written to its own partition of ``user_candidates``:

* ``als``: score = <user factors, item factors>, every item scored, through the blocked top-k
  kernel with the user's seen items masked.
* ``item_item``: score = sum of the similarities between the item and the user's
  ``recent_items`` most recent items (their ``item_neighbors`` rows), seen items removed.
* ``blend``: each source's scores min-max scaled per user to [0, 1], then
  ``blend_als_weight * als + (1 - blend_als_weight) * item_item`` (a missing source counts 0).

Users with fewer than ``min_history`` items (cold start) get the popularity list instead,
tagged ``source = "popular"``.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.blend import blend_top_k
from recsys_spark.blocked_topk import BlockShape, blocked_top_k
from recsys_spark.config import CandidatesConfig
from recsys_spark.neighbour_votes import neighbour_vote_top_k
from recsys_spark.ranking import rank_per_user

log = logging.getLogger(__name__)

#: Columns of every candidate frame before ids are attached.
CANDIDATE_COLUMNS = ("user_idx", "item_idx", "score", "rank", "source")


def user_history_sizes(matrix: DataFrame) -> DataFrame:
    """(user_idx, n_items): distinct items per user."""
    return matrix.groupBy("user_idx").agg(F.count("*").alias("n_items"))


def popular_items(matrix: DataFrame, window_days: int, top: int) -> DataFrame:
    """The ``top`` most popular items overall and in the last ``window_days`` days.

    Popularity is the number of distinct users; "recent" counts users whose latest interaction with
    the item lies within ``window_days`` of the newest interaction in the matrix (so re-runs on the
    same data give the same list). Ties go to the lower item_idx.

    Returns:
        (segment, rank, item_idx, users) with segment "overall" or "recent".
    """
    overall = matrix.groupBy("item_idx").agg(F.count("*").alias("users"))
    newest = matrix.agg(F.max("last_event_time")).first()[0]
    segments = [overall.withColumn("segment", F.lit("overall"))]
    if newest is not None:
        since = F.lit(newest) - F.expr(f"INTERVAL {int(window_days)} DAYS")
        recent = (matrix.where(F.col("last_event_time") > since)
                  .groupBy("item_idx").agg(F.count("*").alias("users")))
        segments.append(recent.withColumn("segment", F.lit("recent")))
    else:  # no times at all: "recent" is the same as overall
        segments.append(overall.withColumn("segment", F.lit("recent")))
    both = segments[0].unionByName(segments[1])
    order = Window.partitionBy("segment").orderBy(F.col("users").desc(), F.col("item_idx"))
    return (both.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top)
            .select("segment", F.col("rank").cast("int"), "item_idx", "users"))


def cold_start_candidates(cold_users: DataFrame, seen: DataFrame, popular: DataFrame, k: int,
                          max_seen: int) -> DataFrame:
    """Popular items for users with little history: the list minus what each has seen.

    ``popular`` is one segment's (rank, item_idx, users); cold users have at most ``max_seen``
    items, so the first ``k + max_seen`` popular items always leave k unseen ones when they exist.
    """
    head = popular.where(F.col("rank") <= k + max_seen).select("item_idx", F.col("users").cast("float").alias("score"))
    pairs = cold_users.select("user_idx").crossJoin(F.broadcast(head))
    unseen = pairs.join(seen.select("user_idx", "item_idx"), ["user_idx", "item_idx"], "left_anti")
    return rank_per_user(unseen, k).withColumn("source", F.lit("popular"))


def als_candidates(user_factors: DataFrame, item_factors: DataFrame, seen: DataFrame, k: int,
                   shape: BlockShape) -> DataFrame:
    """Top-k items by ALS score for every user in ``user_factors``, seen items excluded."""
    top = blocked_top_k(
        user_factors.select(F.col("user_idx").alias("query"), F.col("factors").alias("vector")),
        item_factors.select(F.col("item_idx").alias("target"), F.col("factors").alias("vector")),
        k, exclude=seen.select(F.col("user_idx").alias("query"), F.col("item_idx").alias("target")), shape=shape)
    return top.select(F.col("query").alias("user_idx"), F.col("target").alias("item_idx"), "score", "rank",
                      F.lit("als").alias("source"))


def item_item_candidates(matrix: DataFrame, neighbors: DataFrame, users: DataFrame, k: int,
                         recent_items: int) -> DataFrame:
    """Top-k by the summed similarity of each item to the user's recent items, seen items excluded.

    Args:
        matrix: (user_idx, item_idx, confidence, last_event_time), the interaction matrix.
        neighbors: (item_idx, neighbor_idx, similarity) of one method.
        users: (user_idx) of the users to score.
    """
    history = matrix.join(users.select("user_idx"), "user_idx", "left_semi")
    return neighbour_vote_top_k(history, neighbors, k, recent_items).withColumn("source", F.lit("item_item"))


def blend_candidates(als: DataFrame, item_item: DataFrame, als_weight: float, k: int) -> DataFrame:
    """Weighted sum of per-user min-max scaled scores of the two candidate lists."""
    return blend_top_k(als, item_item, als_weight, k).withColumn("source", F.lit("blend"))


def split_by_history(matrix: DataFrame, min_history: int) -> tuple[DataFrame, DataFrame]:
    """(warm users, cold users): users with at least / fewer than ``min_history`` items."""
    sizes = user_history_sizes(matrix)
    return (sizes.where(F.col("n_items") >= min_history).select("user_idx"),
            sizes.where(F.col("n_items") < min_history).select("user_idx"))


def log_config(cfg: CandidatesConfig) -> None:
    log.info("candidates: strategies %s, k %d, cold start below %d items (%s popularity), blocks %d x %d",
             list(cfg.strategies), cfg.k, cfg.min_history, cfg.cold_start_segment, cfg.user_block, cfg.item_block)
