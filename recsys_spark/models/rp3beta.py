"""RP3beta item neighbours (Paudel et al. 2017) on the block-sparse cell kernel (DataFrame in, DataFrame out).

A three-step random walk item -> user -> item, its landing probabilities sharpened by alpha and
the target's popularity discounted by beta:

    W_ij = sum_u (r_ui / d_i)^alpha (r_uj / d_u)^alpha / pop_j^beta,

r the pair's confidence after ``similarity.rp3beta.confidence`` (histories capped at
``similarity.max_user_items`` strongest items, as for cosine and EASE), d_i = sum_u r_ui the
item's degree, d_u = sum_j r_uj the user's degree: the first factor is P(u | i), the second
P(j | u). The diagonal is dropped, pairs below ``min_similarity`` are dropped, and each row keeps
its ``top_n_of("rp3beta")`` largest weights (ties to the lower item id).

Why this shape:

* **The cosine's cell kernel, with different values per side.** Without the popularity term W is
  Q'T with q_ui = P(u | i)^alpha on the query side and t_uj = P(j | u)^alpha on the target side;
  each entry carries both values into the cells, so the walk costs what a cosine costs (the
  co-occurrences of the capped matrix) and never forms items x items. Degrees need the whole row
  or column, so they are two window sums in Spark before the cells.
* **The popularity scaling happens inside the cell**, as a scaling of the product's columns: a
  cell holds its target columns complete, so pop_j is the column's number of users there.
* **pop_j is the item's number of users, not its degree**: the reference implementation
  (Dacrema et al.'s RP3betaRecommender, which the RP3beta literature evaluates) counts users, and
  it keeps beta's penalty about how many people chose the item whatever confidence transform is
  used. With binary values the two coincide.
* alpha = 0 makes every transition weigh 1, so W_ij is the number of users of both items over
  pop_j^beta; beta = 0 removes the popularity penalty.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.config.schema import SimilarityConfig
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


def item_rp3beta(matrix: DataFrame, params: SimilarityConfig) -> DataFrame:
    """Every item's ``top_n_of("rp3beta")`` largest RP3beta weights.

    Args:
        matrix: (user_idx, item_idx, confidence) rows, one per pair (the interaction_matrix table).

    Returns:
        (item_idx, neighbor_idx, similarity, rank, cooccurrence): similarity = W[item, neighbour],
        rank 1.. by weight desc, then neighbor_idx asc; cooccurrence the users of both items.
    """
    own, top_n = params.rp3beta, params.top_n_of("rp3beta")
    prepared = capped_ratings(matrix, params, own.confidence, own.epsilon)
    if prepared is None:
        return matrix.sparkSession.createDataFrame([], RESULT_SCHEMA)
    capped, grid = prepared
    log.info(
        "RP3beta: %s confidence, alpha %g, beta %g, top %d, min similarity %g, histories capped at %d; %s",
        own.confidence,
        own.alpha,
        own.beta,
        top_n,
        own.min_similarity,
        params.max_user_items,
        grid,
    )
    kernel = functools.partial(_rp3beta_cell, top_n=top_n, beta=own.beta, min_similarity=own.min_similarity)
    partial = block_products(transition_values(capped, own.alpha), grid, kernel, PARTIAL_SCHEMA)
    return merge_partial_lists(partial, grid, top_n)


def transition_values(capped: DataFrame, alpha: float) -> DataFrame:
    """(user_idx, item_idx, q, t): q = P(u | i)^alpha = (r_ui / d_i)^alpha, t = P(i | u)^alpha = (r_ui / d_u)^alpha."""
    by_item, by_user = Window.partitionBy("item_idx"), Window.partitionBy("user_idx")
    r = F.col("r")
    return capped.select(
        "user_idx",
        "item_idx",
        F.pow(r / F.sum(r).over(by_item), F.lit(float(alpha))).alias("q"),
        F.pow(r / F.sum(r).over(by_user), F.lit(float(alpha))).alias("t"),
    )


def _rp3beta_cell(
    table: pa.Table, cell_of: dict[int, int], n_tb: int, top_n: int, beta: float, min_similarity: float
) -> pa.Table:
    """One cell: each query item's ``top_n`` largest walk weights to the cell's target items."""
    cell = decode_cell(table, cell_of, n_tb)
    if cell is None:
        return empty_partial()
    walks = cross_products(cell.queries, cell.targets)
    counts = cooccurrence_counts(cell, walks)
    rows, cols = product_entries(cell, walks)
    popularity = np.diff(cell.targets.indptr).astype(np.float64)  # users per (complete) target column
    weights = walks.data * popularity[cols] ** -beta
    src, dst = cell.query_ids[rows], cell.target_ids[cols]
    valid = (src != dst) & (weights >= min_similarity)
    return best_of_cell(cell, walks.indptr, rows, src, dst, weights, counts, valid, top_n)
