"""Item-item cosine similarity as block-sparse matrix products (DataFrame in, DataFrame out).

cos(i, j) = sum_u r_ui * r_uj / (||r_i|| * ||r_j||), over the columns of the interaction matrix
(r = the pair's confidence after ``similarity.cosine.confidence``: binary, linear or log).

The item catalogue is cut into query blocks and target blocks of consecutive item ids. Each
(query block, target block) cell is one task: it receives the complete columns of both blocks,
builds them as scipy sparse matrices and multiplies Q^T T, so the work is the co-occurrences of the
cell, done by a compiled sparse kernel instead of one Spark row per co-occurring pair. Each cell
keeps its items' best ``top_n`` neighbours; with more than one target block the partial lists are
merged per query block. Query blocks are small enough that every core has a few cells; target
blocks are ``block_items`` wide, so a task holds at most one block of columns whatever the size of
the catalogue. Shuffled data is nnz x (query blocks + target blocks), never items x items.

A few heavy users would dominate the co-occurrences (and say little about similarity), so each
user's history is capped at ``max_user_items`` items, keeping the strongest (then lowest
item_idx, for determinism). Norms are taken over the same capped matrix, so every similarity is an
exact cosine of that matrix and lies in [0, 1] for non-negative values.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from scipy.sparse import csc_matrix, csr_matrix

from recsys_spark.blocked_topk import BlockShape, blocked_top_k
from recsys_spark.confidence import confidence_value
from recsys_spark.config import SimilarityConfig
from recsys_spark.ranking import kth_largest_per_row, top_n_per_key

log = logging.getLogger(__name__)

RESULT_SCHEMA = "item_idx INT, neighbor_idx INT, similarity DOUBLE, rank INT, cooccurrence LONG"
_PARTIAL_SCHEMA = "qb INT, " + RESULT_SCHEMA

#: Cells per core: enough that one slow cell does not leave the other cores idle.
_CELLS_PER_CORE = 2


def cap_user_history(matrix: DataFrame, max_items: int, value_col: str) -> DataFrame:
    """Keep each user's ``max_items`` strongest items (ties: lower item_idx)."""
    order = Window.partitionBy("user_idx").orderBy(F.col(value_col).desc(), F.col("item_idx"))
    return matrix.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= max_items).drop("_rank")


def top_n_per_item(pairs: DataFrame, n: int) -> DataFrame:
    """Each item's ``n`` most similar neighbours, ranked 1..n (ties: lower neighbor_idx first)."""
    order = Window.partitionBy("item_idx").orderBy(F.col("similarity").desc(), F.col("neighbor_idx"))
    return pairs.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= n)


def item_cosine(matrix: DataFrame, params: SimilarityConfig) -> DataFrame:
    """Top-N cosine neighbours of every item.

    Args:
        matrix: (user_idx, item_idx, confidence) rows, one per pair (the interaction_matrix table).

    Returns:
        (item_idx, neighbor_idx, similarity, rank, cooccurrence), both directions of every pair;
        rank 1..top_n by similarity desc, then neighbor_idx asc.
    """
    spark = matrix.sparkSession
    own = params.cosine
    value = confidence_value(F.col("confidence"), own.confidence, own.epsilon)
    ratings = matrix.select("user_idx", "item_idx", value.alias("r")).where(F.col("r") > 0)
    max_item = ratings.agg(F.max("item_idx")).first()[0]
    if max_item is None:
        return spark.createDataFrame([], RESULT_SCHEMA)
    n_items = max_item + 1
    target_size = min(params.block_items, n_items)
    n_tb = math.ceil(n_items / target_size)
    cores = spark.sparkContext.defaultParallelism
    query_size = max(1, min(target_size, math.ceil(n_items / (_CELLS_PER_CORE * cores))))
    n_qb = math.ceil(n_items / query_size)
    capped = cap_user_history(ratings, params.max_user_items, "r")
    n_cells = n_qb * n_tb
    keys = _partition_keys(spark, n_cells)
    # each entry goes to every cell whose query block, or whose target block, holds its item: one
    # explode, so the capped matrix is computed once
    qb, tb = F.floor(F.col("item_idx") / query_size), F.floor(F.col("item_idx") / target_size)
    key_of = F.array(*[F.lit(k) for k in keys])
    placements = F.concat(
        F.transform(F.sequence(F.lit(0), F.lit(n_tb - 1)),
                    lambda t: F.struct(F.lit(0).alias("side"), (qb * n_tb + t).cast("int").alias("cell"))),
        F.transform(F.sequence(F.lit(0), F.lit(n_qb - 1)),
                    lambda q: F.struct(F.lit(1).alias("side"), (q * n_tb + tb).cast("int").alias("cell"))))
    entries = (capped.select(F.col("user_idx").cast("int").alias("user"), F.col("item_idx").cast("int").alias("item"),
                             "r", F.explode(placements).alias("p"))
               .select("user", "item", "r", F.col("p.side").cast("byte").alias("side"),
                       F.element_at(key_of, F.col("p.cell") + 1).alias("key"))
               # a fixed partition count, and keys that hash one cell to each partition: adaptive
               # execution cannot pack cells onto one core, and no two cells share a task
               .repartition(n_cells, "key"))
    cell_of = {k: c for c, k in enumerate(keys)}
    min_sim, min_cooc, top_n = own.min_similarity, own.min_cooccurrence, params.top_n_of("cosine")

    def cell(table: pa.Table) -> pa.Table:
        return _cosine_cell(table, cell_of, n_tb, top_n, min_sim, min_cooc)

    log.info("item cosine: %s confidence, top %d, min similarity %g, min co-occurrence %d, histories capped at %d; "
             "%d items in %d query x %d target block(s) of %d x %d", own.confidence, top_n, min_sim, min_cooc,
             params.max_user_items, n_items, n_qb, n_tb, query_size, target_size)
    partial = entries.groupBy("key").applyInArrow(cell, _PARTIAL_SCHEMA)
    if n_tb == 1:
        return partial.drop("qb")  # one target block: every list is complete

    def merge(table: pa.Table) -> pa.Table:
        return _merge_neighbours(table, top_n)

    return partial.groupBy("qb").applyInArrow(merge, RESULT_SCHEMA)


def _partition_keys(spark: SparkSession, n: int) -> list[int]:
    """``n`` ints whose hash partitioning into ``n`` partitions puts the i-th in partition i.

    Spark places a row in pmod(murmur3(key), n); asking Spark for the hashes of a small range finds
    such keys without re-implementing its hash.
    """
    span = 64 * n
    found: dict[int, int] = {}
    while len(found) < n:
        rows = (spark.range(span).select(F.col("id").cast("int").alias("k"))
                .select("k", F.pmod(F.hash("k"), F.lit(n)).alias("p")).groupBy("p").agg(F.min("k").alias("k"))
                .collect())
        found = {r.p: r.k for r in rows}
        span *= 4
    return [found[p] for p in range(n)]


def _sparse_columns(users: np.ndarray, items: np.ndarray, values: np.ndarray,
                    n_users: int) -> tuple[np.ndarray, csc_matrix]:
    """(item ids, users x items CSC matrix) of one block's entries; users already local ints."""
    ids, col = np.unique(items, return_inverse=True)
    return ids, csc_matrix((values, (users, col)), shape=(n_users, len(ids)))


def column_norms(columns: csc_matrix) -> np.ndarray:
    """L2 norm of each column of a sparse matrix."""
    return np.sqrt(np.asarray(columns.multiply(columns).sum(axis=0)).ravel())


def _cross_products(queries: csc_matrix, targets: csc_matrix) -> csr_matrix:
    """Q^T T as CSR: entry (i, j) sums r_ui * r_uj over shared users.

    Column order within a row depends only on the operands' sparsity pattern, so two products of the
    same patterns list their entries in the same order.
    """
    return (queries.T.tocsr() @ targets.tocsr()).tocsr()


def _cosine_cell(table: pa.Table, cell_of: dict[int, int], n_tb: int, top_n: int, min_similarity: float,
                 min_cooccurrence: int) -> pa.Table:
    """One (query block, target block) cell: each query item's best ``top_n`` target items."""
    side = table.column("side").to_numpy()
    user = table.column("user").to_numpy()
    item = table.column("item").to_numpy()
    r = table.column("r").to_numpy()
    qb = cell_of[table.column("key")[0].as_py()] // n_tb if table.num_rows else 0
    q, t = side == 0, side == 1
    if not q.any() or not t.any():
        return _empty_partial()
    users, local_user = np.unique(user, return_inverse=True)
    q_ids, qm = _sparse_columns(local_user[q], item[q], r[q], len(users))
    t_ids, tm = _sparse_columns(local_user[t], item[t], r[t], len(users))
    qn, tn = column_norms(qm), column_norms(tm)
    dots = _cross_products(qm, tm)
    if np.all(r == 1.0):
        counts = dots.data
    else:  # values are > 0, so both products share one sparsity pattern and list entries alike
        qm.data[:] = 1.0
        tm.data[:] = 1.0
        counts = _cross_products(qm, tm).data
    rows = np.repeat(np.arange(dots.shape[0]), np.diff(dots.indptr))
    cols = dots.indices
    sims = dots.data / (qn[rows] * tn[cols])
    src, dst = q_ids[rows], t_ids[cols]
    valid = (src != dst) & (counts >= min_cooccurrence) & (sims >= min_similarity)
    # sorting every pair costs far more than the product; only entries at or above their row's
    # top_n-th similarity can be ranked, so the exact sort below sees about top_n per row
    eligible = np.where(valid, sims, -np.inf)
    keep = valid & (eligible >= kth_largest_per_row(dots.indptr, eligible, top_n)[rows])
    return _ranked(np.full(int(keep.sum()), qb, dtype=np.int32), src[keep], dst[keep], sims[keep],
                   counts[keep], top_n, with_block=True)


def _ranked(qb: np.ndarray, src: np.ndarray, dst: np.ndarray, sims: np.ndarray, counts: np.ndarray,
            top_n: int, with_block: bool) -> pa.Table:
    """Each source's ``top_n`` rows by (similarity desc, neighbour asc), ranked from 1."""
    kept, rank = top_n_per_key(src, sims, dst, top_n)
    columns = {"item_idx": pa.array(src[kept].astype(np.int32)), "neighbor_idx": pa.array(dst[kept].astype(np.int32)),
               "similarity": pa.array(sims[kept].astype(np.float64)), "rank": pa.array(rank),
               "cooccurrence": pa.array(np.rint(counts[kept]).astype(np.int64))}
    if with_block:
        columns = {"qb": pa.array(qb[kept].astype(np.int32)), **columns}
    return pa.table(columns)


def _empty_partial() -> pa.Table:
    e = np.empty(0, dtype=np.int64)
    return _ranked(e, e, e, np.empty(0), e, 1, with_block=True)


def _merge_neighbours(table: pa.Table, top_n: int) -> pa.Table:
    """Merge one query block's per-target-block lists into each item's ``top_n`` best."""
    col = {name: table.column(name).to_numpy() for name in ("item_idx", "neighbor_idx", "similarity", "cooccurrence")}
    return _ranked(np.zeros(table.num_rows, dtype=np.int32), col["item_idx"].astype(np.int64),
                   col["neighbor_idx"].astype(np.int64), col["similarity"], col["cooccurrence"], top_n,
                   with_block=False)


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
    unit = normalize(item_factors.select("item_idx", F.col("factors").alias("vector")))
    top_n, min_similarity = params.top_n_of("als"), params.als.min_similarity
    top = blocked_top_k(
        unit.withColumnRenamed("item_idx", "query"), unit.withColumnRenamed("item_idx", "target"),
        top_n, exclude=unit.select(F.col("item_idx").alias("query"), F.col("item_idx").alias("target")),
        shape=BlockShape(params.block_items, params.block_items),
        min_score=min_similarity if min_similarity > 0 else None)
    log.info("item factor cosine: top %d, min similarity %g, blocks of %d items",
             top_n, min_similarity, params.block_items)
    return top.select(F.col("query").alias("item_idx"), F.col("target").alias("neighbor_idx"),
                      F.col("score").cast("double").alias("similarity"), "rank",
                      F.lit(None).cast("long").alias("cooccurrence"))


def vote_weight(params: SimilarityConfig, method: str | None = None) -> tuple[str, float] | None:
    """How votes through ``method``'s neighbours are weighted in candidates: by the confidence
    transform its fit used (None: each vote counts 1, for binary values and latent neighbours)."""
    own = params.params(method)
    confidence = getattr(own, "confidence", "binary")
    return None if confidence == "binary" else (confidence, own.epsilon)


def fit_item_neighbors(params: SimilarityConfig, matrix: DataFrame | None = None,
                       item_factors: DataFrame | None = None) -> DataFrame:
    """The ``params.method`` neighbours: (item_idx, neighbor_idx, similarity, rank, cooccurrence).

    Args:
        matrix: (user_idx, item_idx, confidence) rows, for the behavioural methods.
        item_factors: (item_idx, factors), for method als.
    """
    if params.method == "als":
        if item_factors is None:
            raise ValueError("similarity.method = 'als' needs item factors")
        return item_factor_cosine(item_factors, params)
    if matrix is None:
        raise ValueError(f"similarity.method = {params.method!r} needs the interaction matrix")
    if params.method == "cosine":
        return item_cosine(matrix, params)
    raise ValueError(f"similarity.method {params.method!r} is not implemented")
