"""Blend candidate lists per user (DataFrame in, DataFrame out).

Each source's scores are min-max scaled per user to [0, 1] (1 when all of a user's scores are
equal), then summed with the sources' weights (normalised to sum 1), a source missing an item
counting 0; each user keeps the k best by (score desc, item asc).

Both lists are already per user, so one shuffle by user brings a user's rows together and each
task blends its users in numpy. The SQL formulation (a window per source, a full outer join on
(user, item), a ranking window) sorted the 100M rows of two 10M-event lists three times and
spilled a gigabyte. Arithmetic follows Spark's types so that the two formulations agree to the
bit: float32 differences, float64 quotient and weights, float32 result.

**Explanations.** A blended row takes the explanation (``because_item_idx``) of the source whose
weighted, scaled score added most to it, among the sources that explain that item (ties: the
source listed first). Its ``because_share`` is that source's share times the source's part of the
blended score; null when the source gives no share (ALS names the most similar history item, which
is not a part of the score).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.kernels.selection import run_starts, top_n_per_key
from recsys_spark.session import whole_waves

log = logging.getLogger(__name__)

RESULT_SCHEMA = "user_idx INT, item_idx INT, score FLOAT, rank INT, because_item_idx INT, because_share FLOAT"

#: Candidate rows per task: a task holds its users' rows of both lists in memory.
_ROWS_PER_TASK = 2_000_000


def blend_top_k(sources: Sequence[tuple[DataFrame, float]], k: int) -> DataFrame:
    """Blend of the (list, weight) ``sources``.

    Args:
        sources: (user_idx, item_idx, score) lists, at most one row per (user, item) each, with
            their weights (>= 0, normalised to sum 1), and their explanations (because_item_idx,
            because_share) where they have them.
        k: items kept per user.

    Returns:
        (user_idx, item_idx, score, rank, because_item_idx, because_share), rank 1..k by score
        desc then item_idx asc.
    """
    weights = _normalized([w for _, w in sources])
    both = None
    for i, (df, _) in enumerate(sources):
        because = [
            (F.col(c) if c in df.columns else F.lit(None)).cast(t).alias(c)
            for c, t in (("because_item_idx", "int"), ("because_share", "float"))
        ]
        part = df.select(
            "user_idx", "item_idx", F.col("score").cast("float"), F.lit(i).cast("byte").alias("src"), *because
        )
        both = part if both is None else both.unionByName(part)
    spark = sources[0][0].sparkSession
    rows = both.count()
    parts = whole_waves(spark, rows, _ROWS_PER_TASK)
    log.info("blend: %d candidate rows of %d sources in %d tasks", rows, len(sources), parts)

    def blend(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = list(batches)  # a user's rows may straddle Arrow batches
        if received:
            yield blend_partition(pa.Table.from_batches(received), weights, k)

    return both.repartition(parts, "user_idx").mapInArrow(blend, RESULT_SCHEMA)


def _normalized(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if not weights or total <= 0:
        raise ValueError(f"blend weights must include a positive one, got {list(weights)}")
    return [float(w) / total for w in weights]


def min_max_scaled(users: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Scores scaled per user to [0, 1] (``users`` sorted); 1.0 where a user's scores are all equal."""
    if len(users) == 0:
        return np.empty(0)
    starts = run_starts(users)
    counts = np.diff(np.r_[starts, len(users)])
    lo = np.repeat(np.minimum.reduceat(scores, starts), counts)
    hi = np.repeat(np.maximum.reduceat(scores, starts), counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (scores - lo).astype(np.float64) / (hi - lo).astype(np.float64)
    return np.where(hi > lo, scaled, 1.0)


def blend_partition(table: pa.Table, weights: Sequence[float], k: int) -> pa.RecordBatch:
    """Blend every user of one partition; ``src`` indexes ``weights`` (already normalised).

    The table's optional because_item_idx / because_share columns are the sources' explanations.
    """
    users = table.column("user_idx").to_numpy().astype(np.int64)
    items = table.column("item_idx").to_numpy().astype(np.int64)
    scores = table.column("score").to_numpy().astype(np.float32)
    src = table.column("src").to_numpy()
    because, share = _explanations(table)
    order = np.lexsort((items, users, src))  # source, then user: each source's users contiguous
    users, items, scores, src = users[order], items[order], scores[order], src[order]
    because, share = because[order], share[order]
    uniq, inverse = np.unique((users << 32) | items, return_inverse=True)
    blended = np.zeros(len(uniq))
    best = np.full(len(uniq), -np.inf)  # the largest explained part so far
    why = np.full(len(uniq), -1, dtype=np.int64)
    why_share = np.full(len(uniq), np.nan)
    # summed source by source, in order: the float64 sums of the SQL formulation, to the bit
    for i, weight in enumerate(weights):
        mask = src == i
        part = np.zeros(len(uniq))
        part[inverse[mask]] = min_max_scaled(users[mask], scores[mask])
        blended = blended + weight * part
        at = inverse[mask]
        contribution = weight * part[at]
        better = (because[mask] >= 0) & (contribution > best[at])
        at, contribution = at[better], contribution[better]
        best[at], why[at] = contribution, because[mask][better]
        why_share[at] = share[mask][better] * contribution  # divided by the blended score below
    blended = blended.astype(np.float32)
    u, i = uniq >> 32, uniq & 0xFFFFFFFF
    # keys are sorted by (user, item), so ties already sit by item
    kept, rank = top_n_per_key(u, blended, i, k, ids_ascending=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        kept_share = (why_share[kept] / blended[kept].astype(np.float64)).astype(np.float32)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(u[kept].astype(np.int32)),
            pa.array(i[kept].astype(np.int32)),
            pa.array(blended[kept]),
            pa.array(rank.astype(np.int32)),
            pa.array(why[kept].astype(np.int32), mask=why[kept] < 0),
            pa.array(kept_share, mask=~np.isfinite(kept_share)),
        ],
        names=["user_idx", "item_idx", "score", "rank", "because_item_idx", "because_share"],
    )


def _explanations(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(because_item_idx with -1 for none, because_share with NaN for none) of each row."""
    n = table.num_rows
    names = table.column_names
    if "because_item_idx" in names:
        because = table.column("because_item_idx").fill_null(-1).to_numpy().astype(np.int64)
    else:
        because = np.full(n, -1, dtype=np.int64)
    if "because_share" in names:
        share = table.column("because_share").cast(pa.float64()).fill_null(np.nan).to_numpy()
    else:
        share = np.full(n, np.nan)
    return because, share
