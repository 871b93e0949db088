"""Evaluation metrics: hand-computed examples, edge cases, and a randomized check against a plain
numpy reference, each run on both paths: Spark SQL (metrics.py) and the driver (driver_metrics.py)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from chispa import assert_approx_df_equality

from recsys_spark.evaluation import driver_metrics
from recsys_spark.evaluation import metrics as spark_metrics
from recsys_spark.evaluation.metrics import RANKING_METRICS, rating_errors

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyspark.sql import DataFrame, SparkSession

RECS_SCHEMA = "user_idx INT, item_idx INT, rank INT"
TRUTH_SCHEMA = "user_idx INT, item_idx INT, grade DOUBLE"
POP_SCHEMA = "item_idx INT, users LONG"
FACTORS_SCHEMA = "item_idx INT, factors ARRAY<FLOAT>"
METRIC_SCHEMA = "metric STRING, k INT, value DOUBLE, users LONG"
L2 = math.log2


def _driver_ranking(recs: DataFrame, truth: DataFrame, ks: Any, *, graded: bool = False) -> DataFrame:
    """The driver's ranking metrics of the collected frames, as the Spark path's frame."""
    rows = driver_metrics.ranking_rows_from_arrow(recs.toArrow(), truth.toArrow(), ks, graded=graded)
    return recs.sparkSession.createDataFrame(rows, METRIC_SCHEMA)


def _driver_catalog(
    recs: DataFrame,
    ks: Any,
    *,
    n_items: int,
    item_popularity: DataFrame,
    n_users: int,
    item_factors: DataFrame | None = None,
) -> DataFrame:
    """The driver's catalogue metrics of the collected frames, as the Spark path's frame."""
    rows = driver_metrics.catalog_rows_from_arrow(
        recs.toArrow(),
        ks,
        n_items=n_items,
        popularity=item_popularity.toArrow(),
        n_users=n_users,
        factors=None if item_factors is None else item_factors.toArrow(),
    )
    return recs.sparkSession.createDataFrame(rows, METRIC_SCHEMA)


PATHS = {
    "spark": (spark_metrics.ranking_metrics, spark_metrics.catalog_metrics),
    "driver": (_driver_ranking, _driver_catalog),
}


@pytest.fixture(params=sorted(PATHS))
def ranking_metrics(request: pytest.FixtureRequest) -> Any:
    """The ranking metrics of one path: every test runs on both."""
    return PATHS[request.param][0]


@pytest.fixture(params=sorted(PATHS))
def catalog_metrics(request: pytest.FixtureRequest) -> Any:
    """The catalogue metrics of one path: every test runs on both."""
    return PATHS[request.param][1]


# u1: 5 items, 3 relevant (hits at ranks 2 and 4), one truth pair listed twice (grades 1 and 0)
# u2: a list shorter than 5; its one relevant item is listed twice in truth (grades 1 and 2)
# u3: in truth, no recommendations
# u4: recommendations, no truth: not counted
# u5: 4 relevant items, more than k = 1 and 2 (hits at ranks 1 and 3)
# u6: a hit at rank 1 on an item of grade 0 (graded IDCG 0)
RECS = [
    (1, 10, 1),
    (1, 11, 2),
    (1, 12, 3),
    (1, 13, 4),
    (1, 14, 5),
    (2, 20, 1),
    (2, 21, 2),
    (4, 40, 1),
    (5, 50, 1),
    (5, 99, 2),
    (5, 51, 3),
    (6, 60, 1),
]
TRUTH = [
    (1, 11, 2.0),
    (1, 13, 1.0),
    (1, 20, 3.0),
    (1, 13, 0.0),
    (2, 21, 1.0),
    (2, 21, 2.0),
    (3, 30, 0.0),
    (5, 50, 1.0),
    (5, 51, 0.0),
    (5, 52, 2.0),
    (5, 53, 1.0),
    (6, 60, 0.0),
]
KS = (1, 2, 5)

# per user u1, u2, u3, u5, u6; gains 2^g - 1: u1 {11: 3, 13: 1, 20: 7}, u2 {21: 3}, u5 {50: 1, 51: 0, 52: 3, 53: 1}
EXPECTED = {
    ("precision", 1): (0 + 0 + 0 + 1 + 1) / 5,
    ("precision", 2): (1 / 2 + 1 / 2 + 0 + 1 / 2 + 1 / 2) / 5,
    ("precision", 5): (2 / 5 + 1 / 5 + 0 + 2 / 5 + 1 / 5) / 5,
    ("recall", 1): (0 + 0 + 0 + 1 / 4 + 1) / 5,
    ("recall", 2): (1 / 3 + 1 + 0 + 1 / 4 + 1) / 5,
    ("recall", 5): (2 / 3 + 1 + 0 + 2 / 4 + 1) / 5,
    ("ndcg", 1): (0 + 0 + 0 + 1 + 1) / 5,
    ("ndcg", 2): (
        (1 / L2(3)) / (1 / L2(2) + 1 / L2(3))
        + (1 / L2(3)) / (1 / L2(2))
        + 0
        + (1 / L2(2)) / (1 / L2(2) + 1 / L2(3))
        + 1
    )
    / 5,
    ("ndcg", 5): (
        (1 / L2(3) + 1 / L2(5)) / (1 / L2(2) + 1 / L2(3) + 1 / L2(4))
        + (1 / L2(3)) / (1 / L2(2))
        + 0
        + (1 / L2(2) + 1 / L2(4)) / (1 / L2(2) + 1 / L2(3) + 1 / L2(4) + 1 / L2(5))
        + 1
    )
    / 5,
    ("map", 1): (0 + 0 + 0 + (1 / 1) / 1 + (1 / 1) / 1) / 5,
    ("map", 2): ((1 / 2) / 2 + (1 / 2) / 1 + 0 + (1 / 1) / 2 + (1 / 1) / 1) / 5,
    ("map", 5): ((1 / 2 + 2 / 4) / 3 + (1 / 2) / 1 + 0 + (1 / 1 + 2 / 3) / 4 + (1 / 1) / 1) / 5,
    ("mrr", 1): (0 + 0 + 0 + 1 + 1) / 5,
    ("mrr", 2): (1 / 2 + 1 / 2 + 0 + 1 + 1) / 5,
    ("mrr", 5): (1 / 2 + 1 / 2 + 0 + 1 + 1) / 5,
    ("hit_rate", 1): (0 + 0 + 0 + 1 + 1) / 5,
    ("hit_rate", 2): (1 + 1 + 0 + 1 + 1) / 5,
    ("hit_rate", 5): (1 + 1 + 0 + 1 + 1) / 5,
    ("ndcg_graded", 1): (0 + 0 + 0 + (1 / L2(2)) / (3 / L2(2)) + 0) / 5,
    ("ndcg_graded", 2): (
        (3 / L2(3)) / (7 / L2(2) + 3 / L2(3))
        + (3 / L2(3)) / (3 / L2(2))
        + 0
        + (1 / L2(2)) / (3 / L2(2) + 1 / L2(3))
        + 0
    )
    / 5,
    ("ndcg_graded", 5): (
        (3 / L2(3) + 1 / L2(5)) / (7 / L2(2) + 3 / L2(3) + 1 / L2(4))
        + (3 / L2(3)) / (3 / L2(2))
        + 0
        + (1 / L2(2) + 0 / L2(4)) / (3 / L2(2) + 1 / L2(3) + 1 / L2(4) + 0 / L2(5))
        + 0
    )
    / 5,
}
ORDER = (*RANKING_METRICS, "ndcg_graded")


def _frame(
    spark: SparkSession,
    expected: dict[tuple[str, int], float],
    users: int | dict[tuple[str, int], int],
    order: Sequence[str],
) -> DataFrame:
    """The expected (metric, k, value, users) frame, in the function's order (metric, then k)."""
    keys = sorted(expected, key=lambda mk: (order.index(mk[0]), mk[1]))
    n = (lambda key: users[key]) if isinstance(users, dict) else (lambda key: users)
    return spark.createDataFrame([(m, k, float(expected[(m, k)]), n((m, k))) for m, k in keys], METRIC_SCHEMA)


def test_ranking_metrics_hand_computed(spark: SparkSession, ranking_metrics: Any) -> None:
    recs = spark.createDataFrame(RECS, RECS_SCHEMA)
    truth = spark.createDataFrame(TRUTH, TRUTH_SCHEMA)
    got = ranking_metrics(recs, truth, KS, graded=True)
    assert_approx_df_equality(got, _frame(spark, EXPECTED, 5, ORDER), 1e-12, ignore_nullable=True)


def test_binary_run_has_no_graded_rows_and_ks_are_deduplicated(spark: SparkSession, ranking_metrics: Any) -> None:
    got = ranking_metrics(
        spark.createDataFrame(RECS, RECS_SCHEMA), spark.createDataFrame(TRUTH, TRUTH_SCHEMA), [5, 2, 2, 1]
    )
    expected = {mk: v for mk, v in EXPECTED.items() if mk[0] != "ndcg_graded"}
    assert_approx_df_equality(got, _frame(spark, expected, 5, ORDER), 1e-12, ignore_nullable=True)


def test_empty_recs_score_zero_for_every_truth_user(spark: SparkSession, ranking_metrics: Any) -> None:
    got = ranking_metrics(
        spark.createDataFrame([], RECS_SCHEMA), spark.createDataFrame(TRUTH, TRUTH_SCHEMA), KS, graded=True
    )
    assert_approx_df_equality(got, _frame(spark, {mk: 0.0 for mk in EXPECTED}, 5, ORDER), 1e-12, ignore_nullable=True)


def test_empty_truth_gives_no_rows(spark: SparkSession, ranking_metrics: Any) -> None:
    got = ranking_metrics(spark.createDataFrame(RECS, RECS_SCHEMA), spark.createDataFrame([], TRUTH_SCHEMA), KS)
    assert got.count() == 0


def test_an_item_listed_twice_counts_once(spark: SparkSession, ranking_metrics: Any) -> None:
    recs = spark.createDataFrame([(1, 10, 1), (1, 10, 2), (1, 11, 3)], RECS_SCHEMA)
    truth = spark.createDataFrame([(1, 10, 1.0), (1, 11, 1.0)], TRUTH_SCHEMA)
    got = {r.metric: r.value for r in ranking_metrics(recs, truth, [3]).collect()}
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(2 / 2)
    assert got["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert got["ndcg"] == pytest.approx((1 / L2(2) + 1 / L2(4)) / (1 / L2(2) + 1 / L2(3)))


@pytest.mark.parametrize("ks", [[], [0], [2, -1], 5, [1.5]])
def test_bad_cutoffs_are_rejected(spark: SparkSession, ks: Any, ranking_metrics: Any) -> None:
    df = spark.createDataFrame(RECS, RECS_SCHEMA)
    with pytest.raises(ValueError, match="ks must be"):
        ranking_metrics(df, spark.createDataFrame(TRUTH, TRUTH_SCHEMA), ks)


# three lists over a catalogue of 10 items; 8 training users
CAT_RECS = [(1, 0, 1), (1, 1, 2), (1, 2, 3), (2, 0, 1), (2, 3, 2), (3, 1, 1), (3, 0, 2), (3, 4, 3), (3, 5, 4)]
POPULARITY = [(0, 8), (1, 4), (2, 1), (3, 2), (5, 0)]  # item 4 unknown: popularity 0, like item 5
# item 1 is not unit length, item 3 is zero (skipped), item 4 has none (skipped), item 7 is never recommended
FACTORS = [(0, [1.0, 0.0]), (1, [0.0, 2.0]), (2, [1.0, 1.0]), (3, [0.0, 0.0]), (5, [3.0, 4.0]), (7, [1.0, -1.0])]


def _info(pop: int) -> float:
    return -L2(max(pop, 1) / 8)


def test_catalog_metrics_hand_computed(spark: SparkSession, catalog_metrics: Any) -> None:
    i0, i1, i2, i3, i4, i5 = _info(8), _info(4), _info(1), _info(2), _info(0), _info(0)
    s = 1 / math.sqrt(2)
    u1_k3 = ((1 - 0) + (1 - s) + (1 - s)) / 3  # pairs (0, 1), (0, 2), (1, 2)
    u3_k4 = ((1 - 0) + (1 - 4 / 5) + (1 - 3 / 5)) / 3  # pairs (1, 0), (1, 5), (0, 5); item 4 has no factors
    expected = {
        # exposure k=1: c0=2 c1=1; k=2: c0=3 c1=2 c3=1; k=3: + c2=1 c4=1; k=4: + c5=1
        ("coverage", 1): 2 / 10,
        ("coverage", 2): 3 / 10,
        ("coverage", 3): 5 / 10,
        ("coverage", 4): 6 / 10,
        # sorted ascending over all 10 items, weight 2i - n - 1 = 2i - 11
        ("gini", 1): ((2 * 9 - 11) * 1 + (2 * 10 - 11) * 2) / (10 * 3),
        ("gini", 2): ((2 * 8 - 11) * 1 + (2 * 9 - 11) * 2 + (2 * 10 - 11) * 3) / (10 * 6),
        ("gini", 3): ((2 * 6 - 11) + (2 * 7 - 11) + (2 * 8 - 11) + (2 * 9 - 11) * 2 + (2 * 10 - 11) * 3) / (10 * 8),
        ("gini", 4): ((2 * 5 - 11) + (2 * 6 - 11) + (2 * 7 - 11) + (2 * 8 - 11) + (2 * 9 - 11) * 2 + (2 * 10 - 11) * 3)
        / (10 * 9),
        ("novelty", 1): (i0 + i0 + i1) / 3,
        ("novelty", 2): (i0 + i1 + i0 + i3 + i1 + i0) / 6,
        ("novelty", 3): (i0 + i1 + i2 + i0 + i3 + i1 + i0 + i4) / 8,
        ("novelty", 4): (i0 + i1 + i2 + i0 + i3 + i1 + i0 + i4 + i5) / 9,
        # k=1: nobody has 2 items (no row); u2 never has 2 items with factors
        ("ild", 2): (1 + 1) / 2,
        ("ild", 3): (u1_k3 + 1) / 2,
        ("ild", 4): (u1_k3 + u3_k4) / 2,
    }
    users = {mk: 2 if mk[0] == "ild" else 3 for mk in expected}
    got = catalog_metrics(
        spark.createDataFrame(CAT_RECS, RECS_SCHEMA),
        (1, 2, 3, 4),
        n_items=10,
        item_popularity=spark.createDataFrame(POPULARITY, POP_SCHEMA),
        n_users=8,
        item_factors=spark.createDataFrame(FACTORS, FACTORS_SCHEMA),
    )
    assert_approx_df_equality(
        got, _frame(spark, expected, users, ("coverage", "gini", "novelty", "ild")), 1e-12, ignore_nullable=True
    )


def test_catalog_metrics_without_recommendations_or_factors(spark: SparkSession, catalog_metrics: Any) -> None:
    pop = spark.createDataFrame(POPULARITY, POP_SCHEMA)
    got = catalog_metrics(
        spark.createDataFrame([], RECS_SCHEMA),
        (1, 5),
        n_items=10,
        item_popularity=pop,
        n_users=8,
        item_factors=spark.createDataFrame(FACTORS, FACTORS_SCHEMA),
    )
    assert [tuple(r) for r in got.collect()] == [("coverage", 1, 0.0, 0), ("coverage", 5, 0.0, 0)]
    got = catalog_metrics(
        spark.createDataFrame(CAT_RECS, RECS_SCHEMA), (2,), n_items=10, item_popularity=pop, n_users=8
    )
    assert [r.metric for r in got.collect()] == ["coverage", "gini", "novelty"]


# ---- randomized comparison against a straightforward per-user reference ----


def reference_ranking(
    recs: list[tuple[int, int, int]], truth: list[tuple[int, int, float]], ks: tuple[int, ...]
) -> dict[tuple[str, int], tuple[float, int]]:
    rel: dict[int, dict[int, float]] = defaultdict(dict)
    for u, i, g in truth:
        rel[u][i] = max(g, rel[u].get(i, -math.inf))
    lists: dict[int, list[int]] = defaultdict(list)
    for u, i, _ in sorted(recs, key=lambda r: (r[0], r[2])):
        lists[u].append(i)
    out = {}
    for k in ks:
        scores: dict[str, list[float]] = defaultdict(list)
        for u, items in rel.items():
            top = lists.get(u, [])[:k]
            hit_ranks = [r for r, i in enumerate(top, start=1) if i in items]
            n_rel = len(items)
            h = len(hit_ranks)
            scores["precision"].append(h / k)
            scores["recall"].append(h / n_rel)
            scores["hit_rate"].append(1.0 if h else 0.0)
            idcg = sum(1 / math.log2(i + 1) for i in range(1, min(n_rel, k) + 1))
            scores["ndcg"].append(sum(1 / math.log2(r + 1) for r in hit_ranks) / idcg)
            ap = sum((n + 1) / r for n, r in enumerate(hit_ranks))
            scores["map"].append(ap / min(n_rel, k))
            scores["mrr"].append(1 / hit_ranks[0] if hit_ranks else 0.0)
            gains = sorted((2**g - 1 for g in items.values()), reverse=True)[:k]
            igdcg = sum(g / math.log2(p + 1) for p, g in enumerate(gains, start=1))
            gdcg = sum((2 ** items[top[r - 1]] - 1) / math.log2(r + 1) for r in hit_ranks)
            scores["ndcg_graded"].append(gdcg / igdcg if igdcg > 0 else 0.0)
        for m, vals in scores.items():
            out[(m, k)] = (float(np.mean(vals)), len(vals))
    return out


def reference_catalog(
    recs: list[tuple[int, int, int]],
    ks: tuple[int, ...],
    n_items: int,
    pop: dict[int, int],
    n_users: int,
    factors: dict[int, np.ndarray],
) -> dict[tuple[str, int], tuple[float, int]]:
    lists: dict[int, list[int]] = defaultdict(list)
    for u, i, _ in sorted(recs, key=lambda r: (r[0], r[2])):
        lists[u].append(i)
    out = {}
    for k in ks:
        counts = np.zeros(n_items)
        info = []
        ilds = []
        for items in lists.values():
            top = items[:k]
            for i in top:
                counts[i] += 1
                info.append(-math.log2(max(pop.get(i, 0), 1) / n_users))
            vecs = [factors[i] for i in top if i in factors and np.linalg.norm(factors[i]) > 0]
            if len(vecs) >= 2:
                dists = [
                    1 - vecs[a] @ vecs[b] / (np.linalg.norm(vecs[a]) * np.linalg.norm(vecs[b]))
                    for a in range(len(vecs))
                    for b in range(a + 1, len(vecs))
                ]
                ilds.append(np.mean(dists))
        c = np.sort(counts)
        idx = np.arange(1, n_items + 1)
        out[("coverage", k)] = (np.count_nonzero(counts) / n_items, len(lists))
        out[("gini", k)] = (float(np.sum((2 * idx - n_items - 1) * c) / (n_items * c.sum())), len(lists))
        out[("novelty", k)] = (float(np.mean(info)), len(lists))
        if ilds:
            out[("ild", k)] = (float(np.mean(ilds)), len(ilds))
    return out


def _random_data(
    seed: int = 7,
) -> tuple[int, int, list[tuple[int, int, int]], list[tuple[int, int, float]], dict[int, int], dict[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n_users, n_items = 200, 300
    recs, truth = [], []
    for u in range(n_users):
        length = int(rng.choice([0, rng.integers(1, 10), rng.integers(10, 30)], p=[0.1, 0.3, 0.6]))
        items = rng.choice(n_items, size=length, replace=False)
        recs += [(u, int(i), r) for r, i in enumerate(items, start=1)]
        if rng.random() < 0.15:
            continue  # no truth: not averaged
        pool = np.unique(np.concatenate([items, rng.choice(n_items, size=20, replace=False)]))
        size = int(rng.integers(1, min(45, len(pool)) + 1))
        for i in rng.choice(pool, size=size, replace=False):
            truth.append((u, int(i), float(rng.integers(0, 6)) / 2))
            if rng.random() < 0.1:
                truth.append((u, int(i), float(rng.integers(0, 6)) / 2))  # duplicate pair, maybe another grade
    pop = {i: int(rng.integers(0, 120)) for i in range(n_items) if rng.random() < 0.9}
    factors = {}
    for i in range(n_items):
        r = rng.random()
        if r < 0.05:
            continue  # no factors
        vec = np.zeros(8, dtype=np.float32) if r < 0.1 else rng.normal(size=8).astype(np.float32)
        factors[i] = vec
    return n_users, n_items, recs, truth, pop, factors


def _assert_matches(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, (value, users) in want.items():
        assert got[key][0] == pytest.approx(value, abs=1e-9, rel=0), key
        assert got[key][1] == users, key


def test_ranking_metrics_match_reference_on_random_data(spark: SparkSession, ranking_metrics: Any) -> None:
    _, _, recs, truth, _, _ = _random_data()
    ks = (1, 5, 10, 20)
    want = reference_ranking(recs, truth, ks)
    got = ranking_metrics(
        spark.createDataFrame(recs, RECS_SCHEMA), spark.createDataFrame(truth, TRUTH_SCHEMA), ks, graded=True
    )
    _assert_matches({(r.metric, r.k): (r.value, r.users) for r in got.collect()}, want)
    assert 0 < want[("recall", 20)][0] < 1 and want[("ndcg", 1)][1] > 100  # the data exercises the metrics


def test_catalog_metrics_match_reference_on_random_data(spark: SparkSession, catalog_metrics: Any) -> None:
    n_users, n_items, recs, _, pop, factors = _random_data()
    ks = (1, 5, 10, 20)
    want = reference_catalog(recs, ks, n_items, pop, n_users, {i: v.astype(np.float64) for i, v in factors.items()})
    got = catalog_metrics(
        spark.createDataFrame(recs, RECS_SCHEMA),
        ks,
        n_items=n_items,
        n_users=n_users,
        item_popularity=spark.createDataFrame(list(pop.items()), POP_SCHEMA),
        item_factors=spark.createDataFrame([(i, [float(x) for x in v]) for i, v in factors.items()], FACTORS_SCHEMA),
    )
    _assert_matches({(r.metric, r.k): (r.value, r.users) for r in got.collect()}, want)


def test_rating_errors_match_numpy(spark: SparkSession) -> None:
    rng = np.random.default_rng(3)
    rating = rng.integers(1, 6, size=500).astype(float)
    prediction = rating + rng.normal(scale=0.8, size=500)
    rows = [(float(r), float(p)) for r, p in zip(rating, prediction)]
    rows += [(4.0, float("nan")), (3.0, None)]  # unscorable predictions are skipped
    got = rating_errors(spark.createDataFrame(rows, "rating DOUBLE, prediction DOUBLE"))
    assert got["n"] == 500
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((prediction - rating) ** 2)), abs=1e-12)
    assert got["mae"] == pytest.approx(np.mean(np.abs(prediction - rating)), abs=1e-12)
    assert rating_errors(spark.createDataFrame([], "rating DOUBLE, prediction DOUBLE")) == {
        "rmse": None,
        "mae": None,
        "n": 0,
    }


@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_driver_ild_is_the_same_whatever_the_chunk_of_users(monkeypatch: pytest.MonkeyPatch, chunk_rows: int) -> None:
    import pyarrow as pa

    n_users, n_items, recs, _, pop, factors = _random_data(seed=11)
    ks = (1, 5, 20)
    want = reference_catalog(recs, ks, n_items, pop, n_users, {i: v.astype(np.float64) for i, v in factors.items()})
    monkeypatch.setattr(driver_metrics, "_ILD_CHUNK_ROWS", chunk_rows)
    u, i, r = (np.array(c) for c in zip(*recs))
    rows = driver_metrics.catalog_rows(
        u,
        i,
        r,
        ks,
        n_items=n_items,
        popularity_items=np.array(list(pop)),
        popularity_users=np.array(list(pop.values())),
        n_users=n_users,
        factor_items=np.array(list(factors)),
        factors=pa.array([v.tolist() for v in factors.values()], pa.list_(pa.float32())),
    )
    _assert_matches({(m, k): (v, n) for m, k, v, n in rows}, want)


def test_score_lists_gives_the_same_rows_on_the_driver_as_in_spark(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys_spark.config.schema import Config
    from recsys_spark.evaluation import scoring

    n_users, n_items, recs, truth, pop, factors = _random_data(seed=5)
    cfg = Config().model_copy(update={"evaluation": Config().evaluation.model_copy(update={"ks": [1, 5, 20]})})
    args = dict(
        cfg=cfg,
        split="s",
        model="m",
        n_items=n_items,
        popularity=spark.createDataFrame(list(pop.items()), POP_SCHEMA),
        n_train_users=n_users,
        graded=True,
        item_factors=spark.createDataFrame([(i, [float(x) for x in v]) for i, v in factors.items()], FACTORS_SCHEMA),
    )
    recs_df, truth_df = spark.createDataFrame(recs, RECS_SCHEMA), spark.createDataFrame(truth, TRUTH_SCHEMA)
    on_driver = scoring.score_lists(recs_df, truth_df, **args)
    monkeypatch.setattr(scoring, "MAX_DRIVER_ROWS", len(recs) - 1)  # the lists no longer fit: Spark scores them
    in_spark = scoring.score_lists(recs_df, truth_df, **args)
    assert len(on_driver) == len(in_spark) == 7 * 3 + 3 * 3 + 2  # no ILD at k = 1
    for got, want in zip(on_driver, in_spark):
        assert {**got, "value": None} == {**want, "value": None}
        assert got["value"] == pytest.approx(want["value"], abs=1e-12), got


def test_driver_ild_leaves_out_items_whose_factors_are_null() -> None:
    import pyarrow as pa

    u, i, r = np.array([1, 1, 1]), np.array([0, 1, 2]), np.array([1, 2, 3])
    common = dict(n_items=3, popularity_items=np.array([0]), popularity_users=np.array([1]), n_users=1)
    with_null = driver_metrics.catalog_rows(
        u, i, r, [3], factor_items=np.array([0, 1, 2]), factors=pa.array([[1.0, 0.0], None, [0.0, 1.0]]), **common
    )
    without = driver_metrics.catalog_rows(
        u, i, r, [3], factor_items=np.array([0, 2]), factors=pa.array([[1.0, 0.0], [0.0, 1.0]]), **common
    )
    assert with_null == without and ("ild", 3, 1.0, 1) in without  # two orthogonal items: distance 1


def test_lists_scored_against_one_collected_split_get_the_rows_each_gets_alone_and_collect_it_once(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys_spark.config.schema import Config
    from recsys_spark.evaluation import scoring

    n_users, n_items, recs, truth, pop, _ = _random_data(seed=9)
    cfg = Config().model_copy(update={"evaluation": Config().evaluation.model_copy(update={"ks": [1, 5, 20]})})
    pop_df = spark.createDataFrame(list(pop.items()), POP_SCHEMA)
    truth_df = spark.createDataFrame(truth, TRUTH_SCHEMA)
    args = dict(cfg=cfg, split="s", n_items=n_items, popularity=pop_df, n_train_users=n_users, graded=True)
    # two different lists: the first one as generated, the second with every user's ranks reversed
    lengths: dict[int, int] = {}
    for u, _, r in recs:
        lengths[u] = max(lengths.get(u, 0), r)
    lists = {"a": recs, "b": [(u, i, lengths[u] + 1 - r) for u, i, r in recs]}
    alone = {
        m: scoring.score_lists(spark.createDataFrame(v, RECS_SCHEMA), truth_df, model=m, **args)
        for m, v in lists.items()
    }
    assert alone["a"] != alone["b"]

    collections = []
    real = scoring._collected
    monkeypatch.setattr(scoring, "_collected", lambda df, limit: collections.append(df.columns) or real(df, limit))
    shared = scoring.SplitArrow(truth_df, pop_df)
    together = {
        m: scoring.score_lists(spark.createDataFrame(v, RECS_SCHEMA), truth_df, model=m, collected=shared, **args)
        for m, v in lists.items()
    }
    assert together == alone
    # the lists are collected once each, the truth once for both
    assert collections.count(["user_idx", "item_idx", "grade"]) == 1
    assert collections.count(["user_idx", "item_idx", "rank"]) == 2


def test_a_split_whose_truth_is_too_large_to_collect_is_scored_in_spark(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys_spark.config.schema import Config
    from recsys_spark.evaluation import scoring

    n_users, n_items, recs, truth, pop, _ = _random_data(seed=4)
    cfg = Config().model_copy(update={"evaluation": Config().evaluation.model_copy(update={"ks": [5]})})
    pop_df = spark.createDataFrame(list(pop.items()), POP_SCHEMA)
    truth_df, recs_df = spark.createDataFrame(truth, TRUTH_SCHEMA), spark.createDataFrame(recs, RECS_SCHEMA)
    args = dict(cfg=cfg, split="s", model="m", n_items=n_items, popularity=pop_df, n_train_users=n_users, graded=True)
    on_driver = scoring.score_lists(recs_df, truth_df, **args)
    monkeypatch.setattr(scoring, "MAX_DRIVER_ROWS", max(len(recs), len(truth) - 1))  # the lists fit, the truth not
    shared = scoring.SplitArrow(truth_df, pop_df)
    assert shared.truth() is None and shared.truth() is None
    in_spark = scoring.score_lists(recs_df, truth_df, collected=shared, **args)
    assert [{**r, "value": None} for r in in_spark] == [{**r, "value": None} for r in on_driver]
    assert [r["value"] for r in in_spark] == pytest.approx([r["value"] for r in on_driver], abs=1e-12)
