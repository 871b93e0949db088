"""Why an ALS candidate is in a user's list: the history item most like it (DataFrame in, DataFrame out).

An ALS score is a dot product of two factor vectors, so no history item "voted" for a candidate
the way the neighbour strategies' items do (candidates/neighbor_votes.py names the strongest
vote there). What a reader can be shown instead is the user's history item whose item factors
point the most the same way as the candidate's: the largest cosine similarity, ties to the lower
item. It is not a part of the score, so ``because_share`` stays null.

Why this shape: the candidates are already per user and a user's history is small, so one shuffle
by user brings each user's candidates and history together, and each task multiplies a user's
k x h block of normalised factors in numpy (100 candidates x 20 items x rank 32: 64k multiply-adds,
a few microseconds). The normalised item factors are broadcast once, as the neighbour-vote
kernel broadcasts its neighbour lists; a catalogue whose factors exceed
``MAX_BROADCAST_FACTOR_BYTES`` keeps its ALS rows unexplained, with a warning, rather than
joining factors to every candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.candidates.neighbor_votes import recent_history
from recsys_spark.kernels.selection import run_starts
from recsys_spark.session import whole_waves

log = logging.getLogger(__name__)

__all__ = ["MAX_BROADCAST_FACTOR_BYTES", "nearest_history_items", "unit_factors"]

RESULT_SCHEMA = "user_idx INT, item_idx INT, score FLOAT, rank INT, because_item_idx INT, because_share FLOAT"

#: The broadcast normalised factors (float32): 1M items at rank 64 take 256 MB.
MAX_BROADCAST_FACTOR_BYTES = 1 << 28

#: Rows (candidates and history) per task.
_ROWS_PER_TASK = 2_000_000


def unit_factors(table: pa.Table) -> np.ndarray:
    """(n_items x rank) float32 matrix of the (item_idx, factors) rows scaled to unit length; an item
    without a row, or with a zero vector, has a zero row (similar to nothing)."""
    idx = table.column("item_idx").to_numpy().astype(np.int64)
    if len(idx) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = table.column("factors").combine_chunks()
    rank = len(flat[0]) if len(flat) else 0
    values = flat.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(idx), rank)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    out = np.zeros((int(idx.max()) + 1, rank), dtype=np.float32)
    out[idx] = np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
    return out


def nearest_history_items(lists: DataFrame, matrix: DataFrame, item_factors: DataFrame, history: int) -> DataFrame:
    """``lists`` with each row's because_item_idx: the user's history item most like it by factors.

    Args:
        lists: (user_idx, item_idx, score, rank) ALS rows.
        matrix: (user_idx, item_idx, confidence, last_event_time): the users' histories.
        item_factors: (item_idx, factors) the lists were scored with.
        history: how many of each user's most recent items may explain (candidates.max_history_votes).

    Returns:
        (user_idx, item_idx, score, rank, because_item_idx, because_share): because_share null;
        because_item_idx null for a user whose history has no factors.
    """
    spark = lists.sparkSession
    factors = item_factors.select("item_idx", "factors").toArrow()
    rank = len(factors.column("factors")[0]) if factors.num_rows else 0
    size = 4 * rank * (int(pa.compute.max(factors.column("item_idx")).as_py()) + 1 if factors.num_rows else 0)
    rows = lists.select("user_idx", "item_idx", F.col("score").cast("float"), "rank")
    if size > MAX_BROADCAST_FACTOR_BYTES or size == 0:
        if size:
            log.warning(
                "candidates: ALS rows left unexplained: the normalised item factors take %d bytes, above %d",
                size,
                MAX_BROADCAST_FACTOR_BYTES,
            )
        return rows.select(
            "*", F.lit(None).cast("int").alias("because_item_idx"), F.lit(None).cast("float").alias("because_share")
        )
    shared = spark.sparkContext.broadcast(unit_factors(factors))
    recent = recent_history(matrix.join(rows.select("user_idx").distinct(), "user_idx", "left_semi"), history)
    both = rows.withColumn("_h", F.lit(False)).unionByName(
        recent.select(
            "user_idx",
            "item_idx",
            F.lit(None).cast("float").alias("score"),
            F.lit(None).cast("int").alias("rank"),
            F.lit(True).alias("_h"),
        )
    )
    n_rows = both.count()
    parts = whole_waves(spark, n_rows, _ROWS_PER_TASK)
    log.info("candidates: explaining ALS rows by factor similarity (%d rows with histories, %d tasks)", n_rows, parts)

    def explain(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = list(batches)  # a user's rows may straddle Arrow batches
        if received:
            yield explain_partition(pa.Table.from_batches(received), shared.value)

    return both.repartition(parts, "user_idx").mapInArrow(explain, RESULT_SCHEMA)


def explain_partition(table: pa.Table, unit: np.ndarray) -> pa.RecordBatch:
    """One task's users: each candidate row (``_h`` false) with the history row (``_h`` true) of the
    same user whose unit factors have the largest dot product with its own."""
    users = table.column("user_idx").to_numpy().astype(np.int64)
    items = table.column("item_idx").to_numpy().astype(np.int64)
    is_hist = table.column("_h").to_numpy(zero_copy_only=False).astype(bool)
    # by user, history first, then item ascending: argmax's first maximum is the lowest item
    order = np.lexsort((items, ~is_hist, users))
    users, items, is_hist = users[order], items[order], is_hist[order]
    cand = np.flatnonzero(~is_hist)
    because = np.full(len(cand), -1, dtype=np.int64)
    n_known = len(unit)
    starts = run_starts(users)
    stops = np.r_[starts[1:], len(users)]
    slot = np.cumsum(~is_hist) - 1  # position of each candidate row among cand
    for lo, hi in zip(starts.tolist(), stops.tolist()):
        n_hist = int(is_hist[lo:hi].sum())
        if n_hist == 0 or n_hist == hi - lo:
            continue
        hist = items[lo : lo + n_hist]
        hist = hist[hist < n_known]
        hist = hist[unit[hist].any(axis=1)]  # an item without factors is like nothing
        if len(hist) == 0:
            continue
        mine = items[lo + n_hist : hi]
        vectors = unit[np.minimum(mine, n_known - 1)]
        best = hist[np.argmax(vectors @ unit[hist].T, axis=1)]
        explained = (mine < n_known) & vectors.any(axis=1)
        because[slot[lo + n_hist : hi]] = np.where(explained, best, -1)
    picked = order[cand]
    return pa.RecordBatch.from_arrays(
        [
            pa.array(users[cand].astype(np.int32)),
            pa.array(items[cand].astype(np.int32)),
            table.column("score").take(pa.array(picked)).combine_chunks().cast(pa.float32()),
            table.column("rank").take(pa.array(picked)).combine_chunks().cast(pa.int32()),
            pa.array(because.astype(np.int32), mask=because < 0),
            pa.nulls(len(cand), pa.float32()),
        ],
        names=["user_idx", "item_idx", "score", "rank", "because_item_idx", "because_share"],
    )
