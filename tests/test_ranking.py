"""The shared selection kernels: ordering, ties, ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from recsys_spark.kernels.selection import (
    best_first,
    descending_key,
    first_n_per_key,
    kth_largest_per_sorted_row,
    ranks_in_runs,
    run_starts,
    top_n_per_key,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_descending_key_orders_float32_values_from_high_to_low_with_signed_zeros_equal() -> None:
    vals = np.array([0.5, -0.0, 0.0, -1.5, np.inf, -np.inf, 3e38, -3e38, 1e-45], dtype=np.float32)
    keys = descending_key(vals)
    assert list(vals[np.argsort(keys, kind="stable")]) == sorted(vals.tolist(), reverse=True)
    assert keys[1] == keys[2]


@pytest.mark.parametrize("seed", range(5))
def test_fast_path_and_lexsort_agree_on_every_tie(seed: int) -> None:
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.integers(0, 30, 2000))
    ids = np.concatenate([np.sort(rng.choice(10_000, size=int((keys == u).sum()), replace=False)) for u in range(30)])
    vals = rng.choice(np.array([-0.0, 0.0, 0.25, -2.0, 7.5], dtype=np.float32), size=len(keys))
    fast = best_first(keys, vals, ids, ids_ascending=True)
    slow = best_first(keys, vals, ids, ids_ascending=False)
    np.testing.assert_array_equal(keys[fast], keys[slow])
    np.testing.assert_array_equal(ids[fast], ids[slow])
    kept, rank = top_n_per_key(keys, vals, ids, 4, ids_ascending=True)
    want = [
        (k, i)
        for k in range(30)
        for i in sorted(ids[keys == k], key=lambda i: (-vals[(keys == k) & (ids == i)][0], i))[:4]
    ]
    assert list(zip(keys[kept].tolist(), ids[kept].tolist())) == want
    assert rank.tolist() == [r for k in range(30) for r in range(1, min(4, int((keys == k).sum())) + 1)]


def test_ranks_in_runs_and_kth_of_sorted_rows() -> None:
    assert ranks_in_runs(np.array([3, 3, 5, 7, 7, 7])).tolist() == [1, 2, 1, 1, 2, 3]
    assert ranks_in_runs(np.array([], dtype=np.int64)).tolist() == []
    assert run_starts(np.array([3, 3, 5, 7, 7, 7])).tolist() == [0, 2, 3]
    assert run_starts(np.array([4])).tolist() == [0]
    assert run_starts(np.array([], dtype=np.int64)).tolist() == []
    rows, vals = np.array([0, 0, 0, 2, 2]), np.array([1.0, 5.0, 3.0, 4.0, 4.0])
    assert kth_largest_per_sorted_row(rows, vals, 4, 2).tolist() == [3.0, -np.inf, 4.0, -np.inf]


def test_first_n_per_key_keeps_each_groups_best_rows_with_ties_by_id_and_int_ranks(spark: SparkSession) -> None:
    from pyspark.sql import functions as F

    rows = [(0, 5, 1.0), (0, 3, 1.0), (0, 9, 2.0), (0, 1, 0.5), (1, 4, 0.1), (2, 8, 3.0), (2, 2, 3.0)]
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, score DOUBLE")
    order = [F.col("score").desc(), F.col("item_idx")]
    got = first_n_per_key(df, "user_idx", order, 2).orderBy("user_idx", "rank").collect()
    assert [(r.user_idx, r.item_idx, r.rank) for r in got] == [(0, 9, 1), (0, 3, 2), (1, 4, 1), (2, 2, 1), (2, 8, 2)]
    assert dict(first_n_per_key(df, "user_idx", order, 2).dtypes)["rank"] == "int"
    whole = first_n_per_key(df, [], order, 3).orderBy("rank").collect()  # no keys: one window over all rows
    assert [(r.item_idx, r.rank) for r in whole] == [(2, 1), (8, 2), (9, 3)]
