"""Train/test splits of the interaction matrix (DataFrame in, (train, test) out).

Every split works on (user, item) pairs of the interaction matrix, so a pair is either in train or
in test, never both: no test interaction leaks into training. Splits are deterministic: the
random one orders each user's items by a seeded 64-bit hash of (seed, user, item), not by
``rand()``, so the same seed gives the same split on any cluster and partitioning.

* ``random``: per user (stratified), ``n * test_fraction`` (rounded half up) of the n items are test,
  at most n - 1, so every user keeps at least one training item; users with one item stay in train.
* ``time``: a global cutoff; pairs whose last event is at or after it are test. Without an
  explicit cutoff it is the ``1 - test_fraction`` quantile of the pairs' last event times.
* ``leave_last``: per user, the ``n`` most recent items (ties: higher item_idx) are test, again
  keeping at least one training item.
* ``given``: separate train and test files (e.g. MovieLens' u1.base / u1.test), mapped to the same
  dense ids; test pairs also present in train are dropped from test.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

Split = tuple[DataFrame, DataFrame]


def random_split(matrix: DataFrame, test_fraction: float, seed: int) -> Split:
    """Per-user random split: each user's items ordered by a seeded hash, the first share is test."""
    by_user = Window.partitionBy("user_idx")
    order = Window.partitionBy("user_idx").orderBy(F.xxhash64(F.lit(seed), "user_idx", "item_idx"), "item_idx")
    n = F.count("*").over(by_user)
    n_test = F.least(F.round(n * F.lit(test_fraction)), n - 1)
    marked = matrix.withColumn("_test", F.row_number().over(order) <= n_test)
    return _parts(marked)


def time_split(matrix: DataFrame, cutoff: datetime | None, test_fraction: float) -> Split:
    """Global time cutoff (or the ``1 - test_fraction`` quantile of last event times)."""
    if cutoff is None:
        seconds = (
            matrix.select(F.unix_micros("last_event_time").alias("t"))
            .where(F.col("t").isNotNull())
            .approxQuantile("t", [1.0 - test_fraction], 0.0)
        )
        if not seconds:
            raise ValueError("a time split needs event times, and the interaction matrix has none")
        cutoff_col = F.timestamp_micros(F.lit(int(seconds[0])))
    else:
        cutoff_col = F.lit(cutoff).cast("timestamp")
    marked = matrix.withColumn("_test", F.coalesce(F.col("last_event_time") >= cutoff_col, F.lit(False)))
    return _parts(marked)


def leave_last_split(matrix: DataFrame, n: int) -> Split:
    """Per user, the ``n`` most recent items are test (at least one item stays in train)."""
    by_user = Window.partitionBy("user_idx")
    order = Window.partitionBy("user_idx").orderBy(F.col("last_event_time").desc_nulls_last(), F.col("item_idx").desc())
    count = F.count("*").over(by_user)
    marked = matrix.withColumn("_test", F.row_number().over(order) <= F.least(F.lit(n), count - 1))
    return _parts(marked)


def given_split(train: DataFrame, test: DataFrame) -> Split:
    """Separate train and test matrices; test pairs that also occur in train are dropped."""
    return train, test.join(train.select("user_idx", "item_idx"), ["user_idx", "item_idx"], "left_anti")


def _parts(marked: DataFrame) -> Split:
    cols = [c for c in marked.columns if c != "_test"]
    return marked.where(~F.col("_test")).select(*cols), marked.where(F.col("_test")).select(*cols)


def relevant_items(test: DataFrame, rating_threshold: float | None) -> DataFrame:
    """(user_idx, item_idx, grade): what counts as a hit.

    Rows with a rating are relevant when rating >= ``rating_threshold``, graded by the rating;
    rows without one (implicit data) are all relevant, with grade 1.
    """
    rated = F.col("rating").isNotNull()
    keep = F.when(
        rated, F.col("rating") >= F.lit(rating_threshold if rating_threshold is not None else float("-inf"))
    ).otherwise(F.lit(True))
    grade = F.when(rated, F.col("rating")).otherwise(F.lit(1.0)).cast("double")
    return test.where(keep).select("user_idx", "item_idx", grade.alias("grade"))
