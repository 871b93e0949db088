"""The lookup layout: split points from a key table, rows sent to their ranges without sampling."""

from __future__ import annotations

import bisect
import itertools
import random
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from recsys_spark.pipeline.layout import range_bucket, range_layout, split_points

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _user_ids(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [f"u{rng.randrange(10**9)}" for _ in range(n)]


def test_split_points_cut_the_keys_into_ranges_of_about_equal_size(spark: SparkSession) -> None:
    ids = sorted(set(_user_ids(20_000)))
    keys = spark.createDataFrame([(u,) for u in ids], "user_id STRING")
    for n in (2, 4, 7):
        bounds = split_points(keys, "user_id", n)
        assert bounds == sorted(bounds) and len(set(bounds)) == n - 1
        sizes = [0] * n
        for u in ids:
            sizes[bisect.bisect_right(bounds, u)] += 1
        assert min(sizes) > 0.8 * len(ids) / n and max(sizes) < 1.2 * len(ids) / n, sizes


def test_split_points_of_one_range_or_no_keys_are_empty(spark: SparkSession) -> None:
    keys = spark.createDataFrame([("a",), ("b",)], "user_id STRING")
    assert split_points(keys, "user_id", 1) == []
    assert split_points(keys.where("false"), "user_id", 4) == []
    # fewer distinct keys than ranges: each cut is a distinct key, no empty range between two
    assert split_points(keys, "user_id", 8) == ["b"]


def test_range_bucket_agrees_with_bisect_for_every_key_and_bound_count(spark: SparkSession) -> None:
    ids = [*_user_ids(3_000, seed=5), "", "u", "u0", "é", "z" * 20]
    df = spark.createDataFrame([(u,) for u in ids], "user_id STRING")
    for n_bounds in (1, 2, 3, 6, 15, 16):
        bounds = sorted(random.Random(n_bounds).sample(ids, n_bounds))
        bucket = range_bucket(F.col("user_id"), bounds).alias("b")
        got = {r["user_id"]: r["b"] for r in df.select("user_id", bucket).collect()}
        assert got == {u: bisect.bisect_right(bounds, u) for u in ids}, n_bounds


@pytest.mark.parametrize("n_files", [1, 2, 5, 8])
def test_range_layout_writes_one_sorted_file_per_range_and_loses_nothing(
    spark: SparkSession, tmp_path: Path, n_files: int
) -> None:
    ids = sorted(set(_user_ids(4_000, seed=n_files)))
    rows = spark.createDataFrame(
        [(u, r, f"i{r}") for u in ids for r in (3, 1, 2)], "user_id STRING, rank INT, item STRING"
    )
    bounds = split_points(rows.select("user_id").distinct(), "user_id", n_files)
    laid = range_layout(rows, "user_id", bounds, ("user_id", "rank"))
    assert laid.rdd.getNumPartitions() == n_files
    assert_df_equality(laid, rows, ignore_row_order=True)

    laid.write.parquet(str(tmp_path / "out"))
    files = sorted(tmp_path.joinpath("out").glob("*.parquet"))
    assert len(files) == n_files
    spans = []
    for f in files:
        t = pq.read_table(f)
        keys = list(zip(t["user_id"].to_pylist(), t["rank"].to_pylist()))
        assert keys == sorted(keys), f"{f.name} is not sorted by (user_id, rank)"
        users = {u for u, _ in keys}
        assert len({bisect.bisect_right(bounds, u) for u in users}) == 1, f"{f.name} holds two ranges"
        spans.append((keys[0][0], keys[-1][0]))
    spans.sort()
    for (_, last), (first, _) in itertools.pairwise(spans):
        assert last < first, "two files share a user_id range"
