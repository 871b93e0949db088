"""Splits: deterministic, no leakage, per-user shares, cutoffs; relevance from ratings."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from recsys_spark.evaluation.splits import given_split, leave_last_split, random_split, relevant_items, time_split

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

T0 = datetime(2026, 9, 1, tzinfo=timezone.utc)
SCHEMA = "user_idx INT, item_idx INT, confidence DOUBLE, rating DOUBLE, last_event_time TIMESTAMP"


def _matrix(spark: SparkSession, n_users: int = 30) -> DataFrame:
    rows = [
        (u, i, 1.0, float(1 + (u + i) % 5), T0 + timedelta(hours=u * 10 + i))
        for u in range(n_users)
        for i in range(u % 12 + 1)
    ]
    return spark.createDataFrame(rows, SCHEMA)


def _pairs(df: DataFrame) -> set[tuple[int, int]]:
    return {(r.user_idx, r.item_idx) for r in df.select("user_idx", "item_idx").collect()}


def test_random_split_is_stratified_deterministic_and_disjoint(spark: SparkSession) -> None:
    m = _matrix(spark)
    train, test = random_split(m, 0.25, seed=7)
    tr, te = _pairs(train), _pairs(test)
    assert not tr & te and tr | te == _pairs(m)
    for u in range(30):
        n = u % 12 + 1
        n_test = sum(1 for uu, _ in te if uu == u)
        assert n_test == min(int(n * 0.25 + 0.5), n - 1)  # half up; at least one training item stays
    again = random_split(m.repartition(5), 0.25, seed=7)[1]
    assert _pairs(again) == te  # independent of partitioning
    assert _pairs(random_split(m, 0.25, seed=8)[1]) != te


def test_leave_last_holds_out_the_newest_items(spark: SparkSession) -> None:
    m = _matrix(spark)
    train, test = leave_last_split(m, 2)
    te = _pairs(test)
    for u in range(30):
        n = u % 12 + 1
        expected = {(u, i) for i in range(n)[-min(2, n - 1) :]} if n > 1 else set()
        assert {p for p in te if p[0] == u} == expected
    assert not _pairs(train) & te


def test_time_split_uses_the_cutoff_or_a_quantile(spark: SparkSession) -> None:
    m = _matrix(spark)
    cutoff = T0 + timedelta(hours=150)
    train, test = time_split(m, cutoff, 0.2)
    naive = cutoff.replace(tzinfo=None)  # Spark returns session-time (UTC) naive datetimes
    assert test.count() > 0 and all(r.last_event_time >= naive for r in test.collect())
    assert all(r.last_event_time < naive for r in train.collect())
    _, test_q = time_split(m, None, 0.2)
    share = test_q.count() / m.count()
    assert 0.15 < share < 0.25


def test_given_split_drops_pairs_seen_in_train(spark: SparkSession) -> None:
    m = _matrix(spark)
    train = m.where("item_idx < 3")
    test = m.where("item_idx >= 2")
    tr, te = given_split(train, test)
    assert not _pairs(tr) & _pairs(te) and (0, 2) not in _pairs(te) and (5, 2) not in _pairs(te)


def test_relevance_threshold_and_grades(spark: SparkSession) -> None:
    rows = [(0, 1, 1.0, 5.0, T0), (0, 2, 1.0, 3.0, T0), (1, 1, 1.0, None, T0)]
    got = {
        (r.user_idx, r.item_idx): r.grade for r in relevant_items(spark.createDataFrame(rows, SCHEMA), 4.0).collect()
    }
    assert got == {(0, 1): 5.0, (1, 1): 1.0}  # rated below threshold: not relevant; implicit: relevant


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_random_split_never_empties_a_user(spark: SparkSession, fraction: float) -> None:
    train, _ = random_split(_matrix(spark), fraction, seed=1)
    assert {r.user_idx for r in train.select("user_idx").distinct().collect()} == set(range(30))
