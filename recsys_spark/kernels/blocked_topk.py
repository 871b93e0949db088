"""Exact top-k of dense dot products, blocked so that memory stays bounded (DataFrame in, DataFrame out).

score(q, t) = <x_q, y_t> for every query vector x_q and target vector y_t, keeping each query's k
highest-scoring targets, best first; ties go to the lower target id, so the result is a pure
function of the inputs. Used for per-user candidates (users x items) and for latent item
neighbours (normalised items x items).

Queries are cut into blocks of ``query_block`` consecutive ids and targets into blocks of
``target_block`` ids. Every (query block, target block) cell is one unit of work: one GEMM with
numpy's BLAS, excluded pairs masked to -inf, a partial top-k per query with ``argpartition``. When
there is more than one target block, a second pass merges each query's partial lists. No task
ever holds more than one query block, one target block and a bounded score buffer, so the item
catalogue does not have to fit in one task's memory. Ids are the dense ints from ingest, so id
ranges make evenly sized blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.kernels.selection import kth_largest_per_sorted_row, ranks_in_runs, top_n_per_key

log = logging.getLogger(__name__)

#: Score-buffer budget per sub-multiplication (float32 entries): 4M entries = 16 MiB.
_SCORE_BUFFER = 1 << 22

RESULT_SCHEMA = "query INT, target INT, score FLOAT, rank INT"
_PARTIAL_SCHEMA = "qb INT, query INT, target INT, score FLOAT, rank INT"


@dataclass(frozen=True)
class BlockShape:
    """How work is cut: ids per query block and per target block."""

    query_block: int = 4096
    """Queries per block: one block's vectors, exclusions and partial results live in one task."""

    target_block: int = 65536
    """Targets per block: catalogues larger than this are scored block by block and merged."""


#: The first 1/_SAMPLE_DIVISOR of a row's columns (at least 2k) give a lower bound of its k-th score.
_SAMPLE_DIVISOR = 16


def top_k_rows(scores: np.ndarray, target_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's k best columns by (score desc, target id asc); -inf (excluded) and NaN entries never count.

    Returns (row, column, score) triples ordered by row, then best first.

    Selection is exact but avoids a full ``argpartition`` of every row, which costs several times
    the GEMM that produced the scores: the k-th best score of a column sample is a lower bound of
    the row's k-th best, so one vectorised comparison keeps a few candidates per row, and only
    those are partitioned and sorted.
    """
    n_rows, n_cols = scores.shape
    kk = min(k, n_cols)
    if n_rows == 0 or kk == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=scores.dtype)
    m = max(2 * kk, n_cols // _SAMPLE_DIVISOR)
    if m < n_cols:
        # NaN sorts last in np.partition, so a NaN bound keeps nothing of its row: NaN scores never count
        bound = np.partition(scores[:, :m], m - kk, axis=1)[:, m - kk]
        rows, cols = np.nonzero(scores >= bound[:, None])
        vals = scores[rows, cols]
        keep = vals >= kth_largest_per_sorted_row(rows, vals, n_rows, kk)[rows]
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
    else:
        rows, cols = np.nonzero(scores > -np.inf)
        vals = scores[rows, cols]
    keep = vals > -np.inf
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    ascending = bool(np.all(target_ids[1:] > target_ids[:-1]))
    # entries arrive in column order, so with ids ascending ties already sit by id
    kept, _ = top_n_per_key(rows, vals, target_ids[cols], kk, ids_ascending=ascending)
    return rows[kept], cols[kept], vals[kept]


def score_block(
    queries: np.ndarray,
    targets: np.ndarray,
    target_ids: np.ndarray,
    k: int,
    exclude_rows: np.ndarray,
    exclude_cols: np.ndarray,
    min_score: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k of ``queries @ targets.T`` per query row, with (row, col) pairs excluded.

    The product is taken in row chunks so the score buffer stays under ``_SCORE_BUFFER`` entries.
    Returns (row, column, score) like :func:`top_k_rows`.
    """
    n_q = queries.shape[0]
    chunk = max(1, _SCORE_BUFFER // max(1, targets.shape[0]))
    order = np.argsort(exclude_rows, kind="stable")
    ex_rows, ex_cols = exclude_rows[order], exclude_cols[order]
    out_r, out_c, out_s = [], [], []
    targets_t = np.ascontiguousarray(targets.T)
    for start in range(0, n_q, chunk):
        stop = min(n_q, start + chunk)
        scores = queries[start:stop] @ targets_t
        lo, hi = np.searchsorted(ex_rows, [start, stop])
        scores[ex_rows[lo:hi] - start, ex_cols[lo:hi]] = -np.inf
        if min_score is not None:
            scores[scores < min_score] = -np.inf
        r, c, s = top_k_rows(scores, target_ids, k)
        out_r.append(r + start)
        out_c.append(c)
        out_s.append(s)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_s)


def blocked_top_k(
    queries: DataFrame,
    targets: DataFrame,
    k: int,
    *,
    exclude: DataFrame | None = None,
    shape: BlockShape = BlockShape(),
    min_score: float | None = None,
) -> DataFrame:
    """Every query's k best targets by dot product.

    Args:
        queries: (query INT, vector ARRAY<FLOAT>), one row per query id (ids >= 0).
        targets: (target INT, vector ARRAY<FLOAT>), one row per target id; same vector length.
        k: targets kept per query.
        exclude: optional (query INT, target INT) pairs that must never be returned
            (seen items, or an item itself).
        shape: block sizes.
        min_score: targets scoring below this are dropped (a query may then get fewer than k).

    Returns:
        (query, target, score, rank): rank 1..k, ordered by score desc then target id asc.
    """
    qb, tb = shape.query_block, shape.target_block
    max_q, max_t = (queries.agg(F.max("query")).first()[0], targets.agg(F.max("target")).first()[0])
    if max_q is None or max_t is None:
        return queries.sparkSession.createDataFrame([], RESULT_SCHEMA)
    n_qb, n_tb = max_q // qb + 1, max_t // tb + 1
    q_blocks = queries.groupBy((F.col("query") / qb).cast("int").alias("qb")).agg(
        F.collect_list(F.struct(F.col("query").alias("id"), "vector")).alias("q")
    )
    t_blocks = targets.groupBy((F.col("target") / tb).cast("int").alias("tb")).agg(
        F.collect_list(F.struct(F.col("target").alias("id"), "vector")).alias("t")
    )
    cells = q_blocks.crossJoin(t_blocks)
    if exclude is not None:
        ex = (
            exclude.select("query", "target")
            .groupBy((F.col("query") / qb).cast("int").alias("qb"), (F.col("target") / tb).cast("int").alias("tb"))
            .agg(F.collect_list("query").alias("ex_q"), F.collect_list("target").alias("ex_t"))
        )
        cells = cells.join(ex, ["qb", "tb"], "left")
    else:
        cells = cells.withColumn("ex_q", F.lit(None).cast("array<int>")).withColumn(
            "ex_t", F.lit(None).cast("array<int>")
        )
    # about one cell per task: a cell carries a whole query block and target block, so packing
    # many into one task would multiply its memory
    cells = cells.repartition(n_qb * n_tb, "qb", "tb")
    log.info("blocked top-%d: %d query block(s) of %d x %d target block(s) of %d", k, n_qb, qb, n_tb, tb)

    def score_cells(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for i in range(batch.num_rows):
                yield _score_cell(batch.slice(i, 1), k, min_score, qb, tb)

    partial = cells.mapInArrow(score_cells, _PARTIAL_SCHEMA)
    if n_tb == 1:
        return partial.select("query", "target", "score", "rank")  # one target block: lists are complete

    def merge(table: pa.Table) -> pa.Table:
        return _merge_partials(table, k)

    return partial.groupBy("qb").applyInArrow(merge, RESULT_SCHEMA)


def _vectors(list_of_structs: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(ids, matrix) from a one-row list<struct<id, vector>> cell column."""
    ids_arr, vec_arr = list_of_structs.flatten().flatten()
    ids = ids_arr.to_numpy(zero_copy_only=False).astype(np.int64)
    if len(ids) == 0:
        return ids, np.empty((0, 0), dtype=np.float32)
    lengths = vec_arr.value_lengths().to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise ValueError(f"factor vectors differ in length ({lengths.min()} vs {lengths.max()})")
    flat = vec_arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return ids, flat.reshape(len(ids), int(lengths[0]))


def _positions(ids: np.ndarray, wanted: np.ndarray, base: int, size: int) -> np.ndarray:
    """Row of each ``wanted`` id among ``ids`` (all in [base, base + size)), or -1 when absent."""
    where = np.full(size, -1, dtype=np.int64)
    where[ids - base] = np.arange(len(ids))
    return where[wanted - base]


def _score_cell(cell: pa.RecordBatch, k: int, min_score: float | None, qb_size: int, tb_size: int) -> pa.RecordBatch:
    qb, tb = cell.column("qb")[0].as_py(), cell.column("tb")[0].as_py()
    q_ids, q_vec = _vectors(cell.column("q"))
    t_ids, t_vec = _vectors(cell.column("t"))
    by_id = np.argsort(t_ids, kind="stable")  # columns in id order make ties resolve in the fast path
    t_ids, t_vec = t_ids[by_id], t_vec[by_id]
    if q_vec.shape[1] != t_vec.shape[1]:
        raise ValueError(f"query vectors have length {q_vec.shape[1]}, target vectors {t_vec.shape[1]}")
    ex_q = cell.column("ex_q").flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    ex_t = cell.column("ex_t").flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    rows = _positions(q_ids, ex_q, qb * qb_size, qb_size)
    cols = _positions(t_ids, ex_t, tb * tb_size, tb_size)
    ok = (rows >= 0) & (cols >= 0)  # an excluded pair may name an id without a vector
    r, c, s = score_block(q_vec, t_vec, t_ids, k, rows[ok], cols[ok], min_score)
    rank = ranks_in_runs(r)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.full(len(r), qb, dtype=np.int32)),
            pa.array(q_ids[r].astype(np.int32)),
            pa.array(t_ids[c].astype(np.int32)),
            pa.array(s.astype(np.float32)),
            pa.array(rank),
        ],
        names=["qb", "query", "target", "score", "rank"],
    )


def _merge_partials(table: pa.Table, k: int) -> pa.Table:
    """Keep each query's k best (query, target, score) rows by (score desc, target asc), ranked from 1."""
    q = table.column("query").to_numpy().astype(np.int64)
    t = table.column("target").to_numpy().astype(np.int64)
    s = table.column("score").to_numpy()
    kept, rank = top_n_per_key(q, s, t, k)
    return pa.table(
        {
            "query": pa.array(q[kept].astype(np.int32)),
            "target": pa.array(t[kept].astype(np.int32)),
            "score": pa.array(s[kept].astype(np.float32)),
            "rank": pa.array(rank),
        }
    )
