"""The broadcast neighbour-vote kernel against the Spark SQL formulation it replaces."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pytest
from chispa import assert_df_equality

from recsys_spark.candidates import neighbor_votes as nv

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

T0 = datetime(2026, 9, 30, tzinfo=timezone.utc)
HISTORY_SCHEMA = "user_idx INT, item_idx INT, confidence DOUBLE, last_event_time TIMESTAMP"
NEIGHBOR_SCHEMA = "item_idx INT, neighbor_idx INT, similarity DOUBLE"


def _random_inputs(seed: int, n_users: int = 60, n_items: int = 40) -> tuple[list, list]:
    """History with tied times, missing times and tied confidences; neighbours with tied, zero and
    negative similarities; some items have no neighbour row and some lie beyond every neighbour id."""
    rng = np.random.default_rng(seed)
    history = []
    for u in range(n_users):
        for i in rng.choice(n_items + 5, size=int(rng.integers(1, 15)), replace=False):
            day = None if rng.random() < 0.1 else T0 - timedelta(days=int(rng.integers(0, 4)))
            history.append((u, int(i), float(rng.integers(1, 3)), day))
    neighbors = []
    for i in range(n_items):
        if rng.random() < 0.15:
            continue
        for j in rng.choice(n_items, size=int(rng.integers(1, 8)), replace=False):
            if j != i:
                sim = float(rng.choice([0.5, 0.25, 0.0, -0.125, round(float(rng.random()), 3)]))
                neighbors.append((i, int(j), sim))
    return history, neighbors


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("k", "recent"), [(5, 3), (50, 20)])
@pytest.mark.parametrize("weight", [None, ("linear", 1.0), ("log", 0.5)])
def test_kernel_equals_the_sql_joins(
    spark: SparkSession, seed: int, k: int, recent: int, weight: tuple[str, float] | None
) -> None:
    history, neighbors = _random_inputs(seed)
    hist = spark.createDataFrame(history, HISTORY_SCHEMA)
    nb = spark.createDataFrame(neighbors, NEIGHBOR_SCHEMA)
    got = nv.neighbor_vote_top_k(hist, nb, k, recent, weight)
    want = nv.votes_by_join(hist, nb, k, recent, weight)
    assert want.count() > 0
    assert_df_equality(got, want, ignore_row_order=True, ignore_nullable=True)


def test_blocks_split_between_users_give_the_same_lists(spark: SparkSession, monkeypatch: pytest.MonkeyPatch) -> None:
    history, neighbors = _random_inputs(7, n_users=200)
    hist = spark.createDataFrame(history, HISTORY_SCHEMA)
    csr = nv.neighbor_matrix(spark.createDataFrame(neighbors, NEIGHBOR_SCHEMA).toArrow())
    table = hist.toArrow()
    whole = pa.Table.from_batches(list(nv.score_partition(table, csr, 10, 4)))
    monkeypatch.setattr(nv, "_VOTE_BUFFER", 7)  # a handful of votes per block: one user per block
    blocks = list(nv.score_partition(table, csr, 10, 4))
    assert len(blocks) > 100
    assert pa.Table.from_batches(blocks).equals(whole)


def test_seen_items_stale_items_and_missing_times(spark: SparkSession) -> None:
    # user 0: item 0 newest, item 1 has no time (counts as oldest), item 2 in between; recent=2
    hist = spark.createDataFrame(
        [(0, 0, 1.0, T0), (0, 1, 9.0, None), (0, 2, 1.0, T0 - timedelta(days=1))], HISTORY_SCHEMA
    )
    nb = spark.createDataFrame([(0, 3, 0.5), (2, 3, 0.25), (2, 4, 0.25), (1, 5, 0.9), (0, 2, 0.8)], NEIGHBOR_SCHEMA)
    got = [tuple(r) for r in nv.neighbor_vote_top_k(hist, nb, 10, 2).orderBy("rank").collect()]
    # 2 is seen; 5 only from the stale item 1; 3 mostly from item 0 (0.5 of 0.75)
    assert got == [(0, 3, 0.75, 1, 0, pytest.approx(2 / 3)), (0, 4, 0.25, 2, 2, 1.0)]


def test_no_neighbors_gives_no_rows(spark: SparkSession) -> None:
    hist = spark.createDataFrame([(0, 0, 1.0, T0)], HISTORY_SCHEMA)
    nb = spark.createDataFrame([], NEIGHBOR_SCHEMA)
    assert nv.neighbor_vote_top_k(hist, nb, 5, 3).count() == 0


def test_weighted_votes_carry_the_voters_confidence(spark: SparkSession) -> None:
    """score(u, j) = sum over voters i of r(confidence_ui) x similarity(i, j): the EASE scoring x_u . B."""
    hist = spark.createDataFrame([(0, 0, 4.0, T0), (0, 1, 1.0, T0 - timedelta(days=1))], HISTORY_SCHEMA)
    nb = spark.createDataFrame([(0, 3, 0.5), (1, 3, -0.25), (1, 4, 0.5)], NEIGHBOR_SCHEMA)
    linear = [tuple(r) for r in nv.neighbor_vote_top_k(hist, nb, 10, 5, ("linear", 1.0)).orderBy("rank").collect()]
    # 4 x 0.5 - 1 x 0.25, and 1 x 0.5; item 0's vote is more than the whole score
    assert linear == [(0, 3, 1.75, 1, 0, pytest.approx(2.0 / 1.75)), (0, 4, 0.5, 2, 1, 1.0)]
    plain = [tuple(r) for r in nv.neighbor_vote_top_k(hist, nb, 10, 5).orderBy("rank").collect()]
    assert plain == [(0, 4, 0.5, 1, 1, 1.0), (0, 3, 0.25, 2, 0, 2.0)]


@pytest.mark.parametrize("weight", [None, ("linear", 1.0)])
def test_every_row_names_the_voter_with_the_largest_vote(spark: SparkSession, weight: tuple[str, float] | None) -> None:
    """Checked against votes summed by hand: the strongest voter (ties: the lower item) and its share."""
    from recsys_spark.models.confidence import confidence_array

    history, neighbors = _random_inputs(3)
    hist = spark.createDataFrame(history, HISTORY_SCHEMA)
    nb = spark.createDataFrame(neighbors, NEIGHBOR_SCHEMA)
    recent = 4
    voters: dict[int, list[tuple[int, float]]] = {}
    for u, i, conf, day in history:
        voters.setdefault(u, []).append((i, conf, day))
    by_item: dict[int, list[tuple[int, float]]] = {}
    for i, j, sim in neighbors:
        by_item.setdefault(i, []).append((j, sim))
    checked = 0
    for row in nv.neighbor_vote_top_k(hist, nb, 10, recent, weight).collect():
        mine = sorted(voters[row.user_idx], key=lambda h: (h[2] is None, -(h[2] or T0).timestamp(), -h[1], h[0]))
        votes: dict[int, float] = {}
        for i, conf, _ in mine[:recent]:
            w = 1.0 if weight is None else float(confidence_array(np.array([conf]), *weight)[0])
            for j, sim in by_item.get(i, []):
                if j == row.item_idx:
                    votes[i] = votes.get(i, 0.0) + w * sim
        best = max(votes.values())
        assert row.because_item_idx == min(i for i, v in votes.items() if v == best)
        total = sum(votes.values())
        if total == 0:
            assert row.because_share is None
        else:
            assert row.because_share == pytest.approx(best / total, rel=1e-5)
        checked += 1
    assert checked > 100
