"""Per-row selection shared by the top-k kernels: numpy kernels, and their Spark window twin.

Everything here ranks entries grouped by a key (a user, a query row, an item) by value, highest
first, with ties to the lower id, so each list is a pure function of its inputs whatever order the
entries arrived in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

#: Entries per padded buffer when finding each row's k-th largest value (float64: 32 MiB).
_ROW_BUFFER = 1 << 22


def run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal consecutive keys (none for no keys)."""
    if len(sorted_keys) == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def ranks_in_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """1-based position of each element within its run of equal consecutive keys."""
    if len(sorted_keys) == 0:
        return np.empty(0, dtype=np.int32)
    starts = run_starts(sorted_keys)
    return (np.arange(len(sorted_keys)) - np.repeat(starts, np.diff(np.r_[starts, len(sorted_keys)])) + 1).astype(
        np.int32
    )


def descending_key(vals: np.ndarray) -> np.ndarray:
    """int64 keys whose ascending order is the float32 values' descending order (IEEE bit trick)."""
    bits = (vals.astype(np.float32) + np.float32(0)).view(np.uint32).astype(np.int64)  # -0.0 becomes +0.0
    ascending = np.where(bits & 0x80000000, 0xFFFFFFFF - bits, bits | 0x80000000)
    return 0xFFFFFFFF - ascending


def best_first(keys: np.ndarray, vals: np.ndarray, ids: np.ndarray, ids_ascending: bool = False) -> np.ndarray:
    """Permutation ordering entries by (key asc, value desc, id asc).

    ``ids_ascending`` promises that entries of equal key already come in ascending id order (and
    keys fit 31 bits), which allows one stable sort of an int64 key for float32 values instead of a
    three-key lexsort.
    """
    if ids_ascending and vals.dtype == np.float32:
        return np.argsort((keys.astype(np.int64) << 32) | descending_key(vals), kind="stable")
    return np.lexsort((ids, -vals, keys))


def top_n_per_key(
    keys: np.ndarray, vals: np.ndarray, ids: np.ndarray, n: int, ids_ascending: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Each key's ``n`` best entries by (value desc, id asc).

    Returns (positions of the kept entries in key order then best first, their 1-based ranks).
    """
    order = best_first(keys, vals, ids, ids_ascending)
    rank = ranks_in_runs(keys[order])
    keep = rank <= n
    return order[keep], rank[keep]


def kth_largest_per_row(indptr: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest value of each CSR row (-inf for a row with fewer than k entries).

    Rows are padded with -inf into dense buffers and partitioned in one vectorised call per buffer;
    rows go into buffers in order of length, so padding stays small however skewed the lengths.
    """
    lengths = np.diff(indptr)
    kth = np.full(len(lengths), -np.inf)
    long_rows = np.flatnonzero(lengths >= k)
    long_rows = long_rows[np.argsort(lengths[long_rows], kind="stable")]
    start = 0
    while start < len(long_rows):
        width = int(lengths[long_rows[start]])
        stop = start + 1
        while stop < len(long_rows) and (stop + 1 - start) * int(lengths[long_rows[stop]]) <= _ROW_BUFFER:
            width = int(lengths[long_rows[stop]])
            stop += 1
        chunk = long_rows[start:stop]
        counts = lengths[chunk]
        padded = np.full((len(chunk), width), -np.inf)
        local = np.repeat(np.arange(len(chunk)), counts)
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        padded[local, offsets] = values[np.repeat(indptr[chunk], counts) + offsets]
        kth[chunk] = np.partition(padded, width - k, axis=1)[:, width - k]
        start = stop
    return kth


def kth_largest_per_sorted_row(rows: np.ndarray, vals: np.ndarray, n_rows: int, k: int) -> np.ndarray:
    """:func:`kth_largest_per_row` for entries given as (row, value) with ``rows`` sorted."""
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return kth_largest_per_row(indptr, vals, k)


def first_n_per_key(
    df: DataFrame, keys: str | Sequence[str], order: Sequence[Column | str], n: int, rank: str = "rank"
) -> DataFrame:
    """The first ``n`` rows of each ``keys`` group in ``order``, numbered 1.. in column ``rank`` (INT).

    ``order`` must end in a unique column (an id) so that ties break the same way on every run.
    No keys (``[]``) ranks the whole frame in one window: only for frames as small as a catalogue.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    window = (Window.partitionBy(*keys) if keys else Window).orderBy(*order)
    return df.withColumn(rank, F.row_number().over(window).cast("int")).where(F.col(rank) <= n)


def rank_per_user(scored: DataFrame, k: int, keep: Sequence[str] = ()) -> DataFrame:
    """Each user's k best (user_idx, item_idx, score) rows by (score desc, item_idx asc), ranked from
    1, with the ``keep`` columns after the rank."""
    ranked = first_n_per_key(scored, "user_idx", [F.col("score").desc(), F.col("item_idx")], k)
    return ranked.select("user_idx", "item_idx", F.col("score").cast("float"), "rank", *keep)
