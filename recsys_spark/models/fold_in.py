"""Fold-in: fresh ALS user factors against fixed item factors (DataFrame in, DataFrame out).

ALS alternates two exact least-squares solves; with the item factors Y held fixed, a user's factor
is the solution of one small linear system, the same one MLlib's last half-iteration solves. So a
user whose interactions changed since training (or who is new) gets the factor a retrain would
give them if the items stayed put, for the cost of one f x f solve, and nobody else moves.

The normal equations, with MLlib's conventions (``n_u``: the user's pairs with an item factor,
``r``: :func:`recsys_spark.models.confidence.confidence_value` of the pair's confidence):

* implicit: (YᵀY + Y_uᵀ (α r) Y_u + λ n_u I) x = Y_uᵀ (1 + α r); the preference is 1 for every
  pair the matrix holds, and YᵀY is computed once over every item;
* explicit: (Y_uᵀ Y_u + λ n_u I) x = Y_uᵀ r.

``als.nonnegative`` solves the same quadratic with x ≥ 0 (a non-negative least-squares problem on
the Cholesky factor), and ``als.reg_scale`` says whether λ is scaled by n_u, as the model was
trained; :mod:`recsys_spark.models.least_squares` holds the solve itself. Items added since
training have no factor and are left out of a user's sum; a user left with none gets no factor,
so the candidates fall back to popularity for them.

Why users travel as one row each, holding their history as a list (a ``collect_list`` of the
joined item factors), solved a batch of users at a time in one ``mapInArrow`` task: a user's pairs
never straddle two batches, the item factors reach each pair by a join rather than a broadcast (so
a catalogue too large for one executor still works, as in training), and the per-user Python work
is two small matrix products and one batched LAPACK call for the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from recsys_spark.models.als import training_frame
from recsys_spark.models.least_squares import exact_factors as fold_in_factors

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from recsys_spark.config.schema import AlsConfig

log = logging.getLogger(__name__)

__all__ = ["changed_users", "fold_in_factors", "fold_in_users", "item_gram"]


def item_gram(item_factors: DataFrame, rank: int) -> np.ndarray:
    """YᵀY over every item factor, in float64 (summed per task, then on the driver)."""

    def partial(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        gram = np.zeros((rank, rank))
        for batch in batches:
            y = _vectors(batch.column(0), rank)
            gram += y.T @ y
        yield pa.RecordBatch.from_arrays([pa.array([gram.ravel()], pa.list_(pa.float64()))], ["gram"])

    rows = item_factors.select("factors").mapInArrow(partial, "gram array<double>").collect()
    return np.sum([np.asarray(r.gram) for r in rows], axis=0).reshape(rank, rank) if rows else np.zeros((rank, rank))


def fold_in_users(history: DataFrame, item_factors: DataFrame, cfg: AlsConfig) -> DataFrame:
    """(user_idx, factors array<float>) for every user of ``history`` with a factored item.

    Args:
        history: interaction_matrix rows of the users to fold in (their whole current history).
        item_factors: (item_idx, factors) of the model, held fixed.
        cfg: the settings the model was trained with: confidence, α, λ, feedback, nonnegative.
    """
    first = item_factors.select("factors").first()
    if first is None:
        raise ValueError("fold-in needs item factors, and item_factors is empty")
    rank = len(first[0])
    gram = item_gram(item_factors, rank) if cfg.feedback == "implicit" else None
    pairs = training_frame(history, cfg).join(item_factors.select("item_idx", "factors"), "item_idx")
    grouped = pairs.groupBy("user_idx").agg(F.collect_list(F.struct("value", "factors")).alias("pairs"))

    def solve(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            lists = batch.column(1)
            if isinstance(lists, pa.ChunkedArray):
                lists = lists.combine_chunks()
            rows = lists.flatten()
            offsets = lists.offsets.to_numpy() - lists.offsets[0].as_py()
            x = fold_in_factors(
                offsets,
                _vectors(rows.field("factors"), rank),
                rows.field("value").to_numpy(zero_copy_only=False),
                cfg,
                gram,
            ).astype(np.float32)
            flat = pa.array(x.ravel(), pa.float32())
            factors = pa.FixedSizeListArray.from_arrays(flat, rank).cast(pa.list_(pa.float32()))
            yield pa.RecordBatch.from_arrays([batch.column(0), factors], ["user_idx", "factors"])

    return grouped.select("user_idx", "pairs").mapInArrow(solve, "user_idx INT, factors ARRAY<FLOAT>")


def _vectors(column: pa.Array, rank: int) -> np.ndarray:
    """An Arrow list<float> column of length-``rank`` vectors as a (rows, rank) float64 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, rank)


def changed_users(before: DataFrame, after: DataFrame) -> DataFrame:
    """(user_idx) of every user whose interaction_matrix rows differ between two versions: a pair
    added, removed, or with another confidence, rating, count or time. New users are among them.

    Each side is reduced to one fingerprint per user before the two meet: the row count and the
    sums of the low and high 32 bits of each row's 64-bit hash (the sum is order-free, and the
    halves cannot overflow a long). So only one row per user is shuffled, where a row-by-row
    ``EXCEPT`` shuffles every pair of both versions twice. Two different histories share a
    fingerprint only if their hash sums collide in both halves and their counts agree.
    """
    columns = [c for c in after.columns if c in before.columns]

    def fingerprints(df: DataFrame, side: str) -> DataFrame:
        h = F.xxhash64(*columns)
        return df.groupBy("user_idx").agg(
            F.count(F.lit(1)).alias(f"{side}_rows"),
            F.sum(h.bitwiseAND(0xFFFFFFFF)).alias(f"{side}_low"),
            F.sum(F.shiftrightunsigned(h, 32)).alias(f"{side}_high"),
        )

    a, b = fingerprints(after, "a"), fingerprints(before, "b")
    same = (
        (F.col("a_rows") == F.col("b_rows")) & (F.col("a_low") == F.col("b_low")) & (F.col("a_high") == F.col("b_high"))
    )
    return a.join(b, "user_idx", "full_outer").where(~F.coalesce(same, F.lit(False))).select("user_idx")
