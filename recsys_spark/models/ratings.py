"""The interaction matrix as the behavioural similarity methods read it.

Cosine, EASE and RP3beta all start from the same input: each pair's confidence after the method's
transform, zeros dropped, and each user's history capped at ``similarity.max_user_items``. A few
heavy users would otherwise dominate the co-occurrences and say little about similarity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from recsys_spark.kernels.cells import CellGrid, cell_grid
from recsys_spark.kernels.selection import first_n_per_key
from recsys_spark.models.confidence import confidence_value

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from recsys_spark.config.schema import ConfidenceTransform, SimilarityConfig


def cap_user_history(matrix: DataFrame, max_items: int, value_col: str) -> DataFrame:
    """Keep each user's ``max_items`` strongest items (ties: lower item_idx)."""
    order = [F.col(value_col).desc(), F.col("item_idx")]
    return first_n_per_key(matrix, "user_idx", order, max_items, rank="_rank").drop("_rank")


def top_n_per_item(pairs: DataFrame, n: int) -> DataFrame:
    """Each item's ``n`` most similar neighbours, ranked 1..n (ties: lower neighbor_idx first)."""
    return first_n_per_key(pairs, "item_idx", [F.col("similarity").desc(), F.col("neighbor_idx")], n)


def capped_ratings(
    matrix: DataFrame, params: SimilarityConfig, transform: ConfidenceTransform, epsilon: float
) -> tuple[DataFrame, CellGrid] | None:
    """The block kernel's input: (user_idx, item_idx, r) after the transform, each user's history
    capped at ``max_user_items``, and the cell grid over the items; None when no entry is positive."""
    ratings = positive_ratings(matrix, transform, epsilon)
    max_item = ratings.agg(F.max("item_idx")).first()[0]
    if max_item is None:
        return None
    grid = cell_grid(max_item + 1, params.block_items, matrix.sparkSession.sparkContext.defaultParallelism)
    return cap_user_history(ratings, params.max_user_items, "r"), grid


def capped_users(matrix: DataFrame, max_items: int) -> int:
    """How many users have more than ``max_items`` items (and are capped)."""
    return matrix.groupBy("user_idx").count().where(F.col("count") > max_items).count()


def positive_ratings(matrix: DataFrame, transform: ConfidenceTransform, epsilon: float) -> DataFrame:
    """(user_idx, item_idx, r): each pair's matrix entry after the confidence transform, zeros dropped."""
    value = confidence_value(F.col("confidence"), transform, epsilon)
    return matrix.select("user_idx", "item_idx", value.alias("r")).where(F.col("r") > 0)
