"""ALS rows explained by the history item most like them, against a brute-force cosine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from recsys_spark.candidates.explanations import explain_partition, nearest_history_items, unit_factors

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

T0 = datetime(2026, 9, 30, tzinfo=timezone.utc)


def _factors(n: int, rank: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, rank)).astype(np.float32)


def test_unit_factors_scale_rows_and_leave_missing_items_zero() -> None:
    table = pa.table({"item_idx": pa.array([0, 3], pa.int32()), "factors": [[3.0, 4.0], [0.0, 0.0]]})
    got = unit_factors(table)
    assert got.shape == (4, 2)
    np.testing.assert_allclose(got, [[0.6, 0.8], [0, 0], [0, 0], [0, 0]])


def test_each_candidate_names_the_most_similar_history_item(spark: SparkSession) -> None:
    rng = np.random.default_rng(5)
    vectors = _factors(30, 6, 1)
    history = []
    for u in range(12):
        for day, i in enumerate(rng.choice(30, size=int(rng.integers(2, 8)), replace=False)):
            history.append((u, int(i), 1.0, T0 - timedelta(days=day)))
    seen = {}
    for u, i, _, _ in history:
        seen.setdefault(u, []).append(i)
    lists = [(u, j, 1.0, r + 1) for u in range(12) for r, j in enumerate(j for j in range(30) if j not in seen[u][:3])][
        :120
    ]
    matrix = spark.createDataFrame(history, "user_idx INT, item_idx INT, confidence DOUBLE, last_event_time TIMESTAMP")
    factors = spark.createDataFrame(
        [(i, v.tolist()) for i, v in enumerate(vectors)], "item_idx INT, factors ARRAY<FLOAT>"
    )
    scored = spark.createDataFrame(lists, "user_idx INT, item_idx INT, score FLOAT, rank INT")
    recent = 3
    got = nearest_history_items(scored, matrix, factors, recent).collect()
    assert len(got) == len(lists)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for row in got:
        mine = seen[row.user_idx][:recent]  # written newest first
        sims = [float(unit[row.item_idx] @ unit[h]) for h in mine]
        best = max(sims)
        assert row.because_item_idx == min(h for h, s in zip(mine, sims) if s >= best - 1e-6)
        assert row.because_share is None


def test_items_without_factors_explain_nothing_and_are_not_explained() -> None:
    unit = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)  # item 2: no factors
    table = pa.table(
        {
            "user_idx": pa.array([0, 0, 0, 0, 1, 1], pa.int32()),
            "item_idx": pa.array([2, 0, 1, 9, 2, 0], pa.int32()),
            "score": pa.array([None, 3.0, 2.0, 1.0, None, 5.0], pa.float32()),
            "rank": pa.array([None, 1, 2, 3, None, 1], pa.int32()),
            "_h": [True, False, False, False, True, False],
        }
    )
    got = explain_partition(table, unit).to_pydict()
    # user 0's only history item has no factors; so has user 1's: nothing can be named
    assert got["item_idx"] == [0, 1, 9, 0] and got["because_item_idx"] == [None] * 4
    table = table.set_column(1, "item_idx", pa.array([1, 0, 1, 9, 1, 0], pa.int32()))
    got = explain_partition(table, unit).to_pydict()
    # user 0 saw item 1: it explains 0 (similarity 0, the only one), 1, not 9 (beyond the factors)
    assert got["because_item_idx"] == [1, 1, None, 1] and got["rank"] == [1, 2, 3, 1]
