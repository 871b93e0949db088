"""The numpy blend against the Spark SQL formulation it replaces (windows and a full outer join)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.candidates.blend import blend_partition, blend_top_k, min_max_scaled

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SCHEMA = "user_idx INT, item_idx INT, score FLOAT, rank INT"


def _blend_sql(sources: list[tuple[DataFrame, float]], k: int) -> DataFrame:
    def scaled(df: DataFrame, name: str) -> DataFrame:
        win = Window.partitionBy("user_idx")
        lo, hi = F.min("score").over(win), F.max("score").over(win)
        norm = F.when(hi > lo, (F.col("score") - lo) / (hi - lo)).otherwise(F.lit(1.0))
        return df.select("user_idx", "item_idx", norm.alias(name))

    total = sum(w for _, w in sources)
    both, score = None, None
    for i, (df, w) in enumerate(sources):
        part = scaled(df, f"s{i}")
        both = part if both is None else both.join(part, ["user_idx", "item_idx"], "full_outer")
        term = F.lit(w / total) * F.coalesce(f"s{i}", F.lit(0.0))
        score = term if score is None else score + term
    order = Window.partitionBy("user_idx").orderBy(F.col("score").desc(), F.col("item_idx"))
    return (
        both.select("user_idx", "item_idx", score.cast("float").alias("score"))
        .withColumn("rank", F.row_number().over(order).cast("int"))
        .where(F.col("rank") <= k)
        .select("user_idx", "item_idx", "score", "rank")
    )


def _lists(seed: int, n: int = 2) -> list[list]:
    """``n`` lists over 80 users: overlapping items, users in only some lists, one-row users, users
    whose scores are all equal, negative and tied scores."""
    rng = np.random.default_rng(seed)
    lists: list[list] = [[] for _ in range(n)]
    for u in range(80):
        for out, p in zip(lists, (0.8, 0.7, 0.6)):
            if rng.random() > p:
                continue
            m = int(rng.integers(1, 12))
            items = rng.choice(30, size=m, replace=False)
            flat = rng.random() < 0.1
            scores = np.full(m, 0.5) if flat else rng.choice([-1.25, 0.0, 0.3, 2.5, float(rng.normal())], size=m)
            out += [(u, int(i), float(s), r + 1) for r, (i, s) in enumerate(zip(items, scores))]
    return lists


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("weights", "k"), [((0.5, 0.5), 10), ((0.3, 0.7), 4), ((1.0, 0.0), 20), ((0.2, 0.5, 0.3), 10), ((2.0, 1.0, 1.0), 6)]
)
def test_blend_equals_the_sql_formulation(spark: SparkSession, seed: int, weights: tuple[float, ...], k: int) -> None:
    sources = [(spark.createDataFrame(rows, SCHEMA), w) for rows, w in zip(_lists(seed, len(weights)), weights)]
    want = _blend_sql(sources, k)
    assert want.count() > 100
    got = blend_top_k(sources, k).select("user_idx", "item_idx", "score", "rank")
    assert_df_equality(got, want, ignore_row_order=True, ignore_nullable=True)


def test_min_max_scaled_per_user() -> None:
    users = np.array([0, 0, 0, 4, 7, 7])
    scores = np.array([1.0, 3.0, 2.0, 9.0, 5.0, 5.0], dtype=np.float32)
    assert min_max_scaled(users, scores).tolist() == [0.0, 1.0, 0.5, 1.0, 1.0, 1.0]


def test_partition_of_one_source_only() -> None:
    table = pa.table(
        {
            "user_idx": pa.array([3, 3], pa.int32()),
            "item_idx": pa.array([9, 2], pa.int32()),
            "score": pa.array([1.0, 1.0], pa.float32()),
            "src": pa.array([1, 1], pa.int8()),
        }
    )
    out = blend_partition(table, [0.75, 0.25], 5).to_pydict()
    assert out == {
        "user_idx": [3, 3],
        "item_idx": [2, 9],
        "score": [0.25, 0.25],
        "rank": [1, 2],
        "because_item_idx": [None, None],  # no source explains anything
        "because_share": [None, None],
    }


def test_a_blended_row_is_explained_by_the_source_that_added_most() -> None:
    """User 0, item 5: source 0 adds 0.25 x 1.0 (its top item), source 1 adds 0.75 x 1.0, so source
    1's explanation wins, its share 0.4 scaled by its part 0.75 of the blended 1.0. Item 6 is in
    source 0 alone (scaled 0, adds nothing) and source 1 explains none of its rows there; item 7 is
    explained by source 0 alone, which gives no share (as ALS)."""
    table = pa.table(
        {
            "user_idx": pa.array([0, 0, 0, 0, 0], pa.int32()),
            "item_idx": pa.array([5, 6, 7, 5, 7], pa.int32()),
            "score": pa.array([3.0, 1.0, 2.0, 9.0, 1.0], pa.float32()),
            "src": pa.array([0, 0, 0, 1, 1], pa.int8()),
            "because_item_idx": pa.array([11, 12, 13, 21, None], pa.int32()),
            "because_share": pa.array([0.5, 0.5, None, 0.4, None], pa.float32()),
        }
    )
    out = blend_partition(table, [0.25, 0.75], 5).to_pydict()
    assert out["item_idx"] == [5, 7, 6]
    assert out["because_item_idx"] == [21, 13, 12]
    assert out["because_share"][0] == pytest.approx(0.4 * 0.75 / 1.0)
    assert out["because_share"][1:] == [None, None]  # 7: no share from source 0; 6: blended score 0
