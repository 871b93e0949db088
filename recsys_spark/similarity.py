"""Item-item cosine similarity by a sparse self-join on users (DataFrame in, DataFrame out).

cos(i, j) = sum_u r_ui * r_uj / (||r_i|| * ||r_j||), over the columns of the interaction matrix
(r = 1 for "binary", r = confidence for "confidence").

Work is proportional to co-occurrences, never to items x items: each user contributes the pairs
of the items in their history, so the cost is sum_u n_u^2 / 2. A few heavy users would dominate
that sum (and say little about similarity), so each user's history is capped at
``max_user_items`` items, keeping the strongest (then lowest item_idx, for determinism). Norms are
taken over the same capped matrix, so every similarity is an exact cosine of that matrix and lies
in [0, 1] for non-negative values.
"""

from __future__ import annotations

import logging
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.config import SimilarityConfig

log = logging.getLogger(__name__)


def cap_user_history(matrix: DataFrame, max_items: int, value_col: str) -> DataFrame:
    """Keep each user's ``max_items`` strongest items (ties: lower item_idx)."""
    order = Window.partitionBy("user_idx").orderBy(F.col(value_col).desc(), F.col("item_idx"))
    return matrix.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= max_items).drop("_rank")


def item_norms(ratings: DataFrame) -> DataFrame:
    """(item_idx, norm): the L2 norm of each item column."""
    return ratings.groupBy("item_idx").agg(F.sqrt(F.sum(F.col("r") * F.col("r"))).alias("norm"))


def top_n_per_item(pairs: DataFrame, n: int) -> DataFrame:
    """Each item's ``n`` most similar neighbours, ranked 1..n (ties: lower neighbour_idx first)."""
    order = Window.partitionBy("item_idx").orderBy(F.col("similarity").desc(), F.col("neighbor_idx"))
    return pairs.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= n)


def item_cosine(matrix: DataFrame, params: SimilarityConfig) -> DataFrame:
    """Top-N cosine neighbours of every item.

    Args:
        matrix: (user_idx, item_idx, confidence) rows, one per pair (the interaction_matrix table).

    Returns:
        (item_idx, neighbor_idx, similarity, rank, cooccurrence), both directions of every pair.
    """
    value = F.lit(1.0) if params.weighting == "binary" else F.col("confidence").cast("double")
    ratings = matrix.select("user_idx", "item_idx", value.alias("r")).where(F.col("r") > 0)
    # An explicit partition count by user: the self-join below then needs no further exchange, all
    # its readers share this one, and adaptive execution cannot coalesce the (small) capped matrix
    # into a single partition, which would run the whole pairing on one core.
    parts = int(matrix.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    capped = cap_user_history(ratings, params.max_user_items, "r").repartition(parts, "user_idx")
    norms = item_norms(capped)
    left = capped.select("user_idx", F.col("item_idx").alias("i"), F.col("r").alias("ri"))
    right = capped.select("user_idx", F.col("item_idx").alias("j"), F.col("r").alias("rj"))
    dots = (left.join(right, "user_idx").where(F.col("i") < F.col("j"))
            .groupBy("i", "j").agg(F.sum(F.col("ri") * F.col("rj")).alias("dot"),
                                   F.count("*").alias("cooccurrence"))
            .where(F.col("cooccurrence") >= params.min_cooccurrence))
    ni = norms.select(F.col("item_idx").alias("i"), F.col("norm").alias("ni"))
    nj = norms.select(F.col("item_idx").alias("j"), F.col("norm").alias("nj"))
    sims = (dots.join(F.broadcast(ni), "i").join(F.broadcast(nj), "j")  # one row per item: small
            .select("i", "j", (F.col("dot") / (F.col("ni") * F.col("nj"))).alias("similarity"), "cooccurrence")
            .where(F.col("similarity") >= params.min_similarity))
    # both directions from one pass: a union of two projections would plan the self-join twice
    pair = F.explode(F.array(F.struct(F.col("i").alias("a"), F.col("j").alias("b")),
                             F.struct(F.col("j").alias("a"), F.col("i").alias("b")))).alias("p")
    both = sims.select(pair, "similarity", "cooccurrence").select(
        F.col("p.a").alias("item_idx"), F.col("p.b").alias("neighbor_idx"), "similarity", "cooccurrence")
    result = top_n_per_item(both, params.top_n).select(
        "item_idx", "neighbor_idx", "similarity", F.col("rank").cast("int").alias("rank"), "cooccurrence")
    log.info("item cosine: %s weighting, top %d, min similarity %g, min co-occurrence %d, histories capped at %d",
             params.weighting, params.top_n, params.min_similarity, params.min_cooccurrence, params.max_user_items)
    return result


def capped_users(matrix: DataFrame, max_items: int) -> int:
    """How many users have more than ``max_items`` items (and are capped)."""
    return matrix.groupBy("user_idx").count().where(F.col("count") > max_items).count()


def normalize(vectors: DataFrame, col: str = "vector") -> DataFrame:
    """Scale each vector to unit L2 norm; zero vectors (no direction, no cosine) are dropped."""
    norm = F.sqrt(F.aggregate(col, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    return (vectors.withColumn("_norm", norm).where(F.col("_norm") > 0)
            .withColumn(col, F.transform(col, lambda x: (x / F.col("_norm")).cast("float"))).drop("_norm"))


def item_factor_cosine(item_factors: DataFrame, params: SimilarityConfig) -> DataFrame:
    """Top-N latent neighbours of every item: cosine of ALS item factors.

    Dense, so it runs through the blocked top-k kernel: items x items in blocks of
    ``params.block_items``, the item itself excluded, pairs below ``min_similarity`` dropped.

    Args:
        item_factors: (item_idx, factors) rows (the item_factors table).

    Returns:
        (item_idx, neighbor_idx, similarity, rank, cooccurrence) with cooccurrence null: latent
        neighbours need not share any user.
    """
    from recsys_spark.blocked_topk import BlockShape, blocked_top_k

    unit = normalize(item_factors.select("item_idx", F.col("factors").alias("vector")))
    top = blocked_top_k(
        unit.withColumnRenamed("item_idx", "query"), unit.withColumnRenamed("item_idx", "target"),
        params.top_n, exclude=unit.select(F.col("item_idx").alias("query"), F.col("item_idx").alias("target")),
        shape=BlockShape(params.block_items, params.block_items),
        min_score=params.min_similarity if params.min_similarity > 0 else None)
    log.info("item factor cosine: top %d, min similarity %g, blocks of %d items",
             params.top_n, params.min_similarity, params.block_items)
    return top.select(F.col("query").alias("item_idx"), F.col("target").alias("neighbor_idx"),
                      F.col("score").cast("double").alias("similarity"), "rank",
                      F.lit(None).cast("long").alias("cooccurrence"))
