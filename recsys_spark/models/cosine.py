"""Item-item cosine, from the interaction matrix or from ALS item factors (DataFrame in, DataFrame out).

cos(i, j) = sum_u r_ui * r_uj / (||r_i|| * ||r_j|| + shrink), over the columns of the interaction
matrix (r = the pair's confidence after ``similarity.cosine.confidence``: binary, linear or log),
computed cell by cell on :mod:`recsys_spark.kernels.cells`.

``shrink`` (0 by default: the exact cosine) is there for sparse logs. Two items that one user
shares, and nobody else has, have cosine 1, and such pairs outvote every well-supported
neighbour. On Amazon 5-core (Musical Instruments; a validation carve-out of a random 80% training
part, ``docs/examples/cosine_shrink.py``) the exact cosine's NDCG@10 was 0.042, below
popularity's 0.050; shrink 50 gave 0.074. The search (``similarity.tune``) tries
``tuning.cosine_top_n`` x ``tuning.cosine_shrink``.

Norms are taken over the same history-capped matrix as the products
(:func:`recsys_spark.models.ratings.capped_ratings`), so every similarity is an exact (shrunk)
cosine of that matrix and lies in [0, 1] for non-negative values.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.sparse import csc_matrix

from recsys_spark.config.schema import SimilarityConfig
from recsys_spark.kernels.blocked_topk import BlockShape, blocked_top_k
from recsys_spark.kernels.cells import (
    PARTIAL_SCHEMA,
    RESULT_SCHEMA,
    best_of_cell,
    block_products,
    cooccurrence_counts,
    cross_products,
    decode_cell,
    empty_partial,
    merge_partial_lists,
    product_entries,
)
from recsys_spark.models.ratings import capped_ratings

log = logging.getLogger(__name__)


def item_cosine(matrix: DataFrame, params: SimilarityConfig) -> DataFrame:
    """Top-N cosine neighbours of every item.

    Args:
        matrix: (user_idx, item_idx, confidence) rows, one per pair (the interaction_matrix table).

    Returns:
        (item_idx, neighbor_idx, similarity, rank, cooccurrence), both directions of every pair;
        rank 1..top_n by similarity desc, then neighbor_idx asc.
    """
    own = params.cosine
    prepared = capped_ratings(matrix, params, own.confidence, own.epsilon)
    if prepared is None:
        return matrix.sparkSession.createDataFrame([], RESULT_SCHEMA)
    capped, grid = prepared
    min_sim, min_cooc, top_n = own.min_similarity, own.min_cooccurrence, params.top_n_of("cosine")
    log.info(
        "item cosine: %s confidence, shrink %g, top %d, min similarity %g, min co-occurrence %d, histories "
        "capped at %d; %s",
        own.confidence,
        own.shrink,
        top_n,
        min_sim,
        min_cooc,
        params.max_user_items,
        grid,
    )
    kernel = functools.partial(
        _cosine_cell, top_n=top_n, min_similarity=min_sim, min_cooccurrence=min_cooc, shrink=own.shrink
    )
    values = capped.select("user_idx", "item_idx", F.col("r").alias("q"), F.col("r").alias("t"))
    return merge_partial_lists(block_products(values, grid, kernel, PARTIAL_SCHEMA), grid, top_n)


def column_norms(columns: csc_matrix) -> np.ndarray:
    """L2 norm of each column of a sparse matrix."""
    return np.sqrt(np.asarray(columns.multiply(columns).sum(axis=0)).ravel())


def _cosine_cell(
    table: pa.Table,
    cell_of: Mapping[int, int],
    n_tb: int,
    top_n: int,
    min_similarity: float,
    min_cooccurrence: int,
    shrink: float = 0.0,
) -> pa.Table:
    """One (query block, target block) cell: each query item's best ``top_n`` target items."""
    cell = decode_cell(table, cell_of, n_tb)
    if cell is None:
        return empty_partial()
    qn, tn = column_norms(cell.queries), column_norms(cell.targets)
    dots = cross_products(cell.queries, cell.targets)
    counts = cooccurrence_counts(cell, dots)
    rows, cols = product_entries(cell, dots)
    sims = dots.data / (qn[rows] * tn[cols] + shrink)
    src, dst = cell.query_ids[rows], cell.target_ids[cols]
    valid = (src != dst) & (counts >= min_cooccurrence) & (sims >= min_similarity)
    return best_of_cell(cell, dots.indptr, rows, src, dst, sims, counts, valid, top_n)


def normalize(vectors: DataFrame, col: str = "vector") -> DataFrame:
    """Scale each vector to unit L2 norm; zero vectors (no direction, no cosine) are dropped."""
    norm = F.sqrt(F.aggregate(col, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    return (
        vectors.withColumn("_norm", norm)
        .where(F.col("_norm") > 0)
        .withColumn(col, F.transform(col, lambda x: (x / F.col("_norm")).cast("float")))
        .drop("_norm")
    )


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
    unit = normalize(item_factors.select("item_idx", F.col("factors").alias("vector")))
    top_n, min_similarity = params.top_n_of("als"), params.als.min_similarity
    top = blocked_top_k(
        unit.withColumnRenamed("item_idx", "query"),
        unit.withColumnRenamed("item_idx", "target"),
        top_n,
        exclude=unit.select(F.col("item_idx").alias("query"), F.col("item_idx").alias("target")),
        shape=BlockShape(params.block_items, params.block_items),
        min_score=min_similarity if min_similarity > 0 else None,
    )
    log.info(
        "item factor cosine: top %d, min similarity %g, blocks of %d items", top_n, min_similarity, params.block_items
    )
    return top.select(
        F.col("query").alias("item_idx"),
        F.col("target").alias("neighbor_idx"),
        F.col("score").cast("double").alias("similarity"),
        "rank",
        F.lit(None).cast("long").alias("cooccurrence"),
    )
