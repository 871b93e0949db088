"""Fold-in user factors: the exact solve of each user's ALS normal equations against fixed items.

Checked two ways: against a dense reference written from the objective (every item weighted by
its confidence, the unobserved ones at 1 with preference 0), and against MLlib itself, whose last
half-iteration solves the same systems against its final item factors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from chispa import assert_df_equality

from recsys_spark.config.schema import AlsConfig
from recsys_spark.models.als import factor_frames, fit_als, training_frame
from recsys_spark.models.confidence import confidence_array
from recsys_spark.models.fold_in import changed_users, fold_in_factors, fold_in_users

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

MATRIX = "user_idx INT, item_idx INT, confidence DOUBLE, rating DOUBLE, event_count LONG"


def _matrix(spark: SparkSession, users: int = 30, items: int = 25, seed: int = 0) -> DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        (u, i, float(rng.integers(1, 6)), float(rng.integers(1, 6)), 1)
        for u in range(users)
        for i in range(items)
        if rng.random() < 0.3 or i == u % items
    ]
    return spark.createDataFrame(rows, MATRIX)


def _dense_reference(matrix: DataFrame, y: np.ndarray, cfg: AlsConfig, users: int) -> np.ndarray:
    """x_u = argmin Σ_i c_ui (p_ui - x·y_i)² + λ n_u |x|², written out over every item: the
    textbook form (Hu, Koren, Volinsky), with MLlib's λ scaled by the user's pair count."""
    n_items, rank = y.shape
    out = np.zeros((users, rank))
    rows = matrix.collect()
    for u in range(users):
        mine = [r for r in rows if r.user_idx == u]
        if cfg.feedback == "implicit":
            c, p = np.ones(n_items), np.zeros(n_items)
            for r in mine:
                c[r.item_idx] = 1 + cfg.alpha * confidence_array(np.array([r.confidence]), cfg.confidence)[0]
                p[r.item_idx] = 1.0
            a = (y.T * c) @ y + cfg.reg_param * len(mine) * np.eye(rank)
            out[u] = np.linalg.solve(a, (y.T * c) @ p)
        else:
            yu = y[[r.item_idx for r in mine]]
            a = yu.T @ yu + cfg.reg_param * len(mine) * np.eye(rank)
            out[u] = np.linalg.solve(a, yu.T @ np.array([r.rating for r in mine]))
    return out


def _as_array(factors: DataFrame, key: str, n: int, rank: int) -> np.ndarray:
    out = np.full((n, rank), np.nan)
    for r in factors.collect():
        out[r[key]] = r.factors
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        AlsConfig(rank=6, max_iter=4, reg_param=0.1, alpha=2.0, confidence="binary", seed=1),
        AlsConfig(rank=5, max_iter=4, reg_param=0.05, alpha=3.0, confidence="log", seed=2),
        AlsConfig(rank=4, max_iter=4, reg_param=0.2, alpha=1.0, confidence="linear", seed=3),
        AlsConfig(rank=5, max_iter=4, reg_param=0.1, feedback="explicit", seed=4),
    ],
    ids=["binary", "log", "linear", "explicit"],
)
def test_fold_in_reproduces_mllibs_user_factors_and_the_dense_solve_to_1e_5(
    spark: SparkSession, cfg: AlsConfig
) -> None:
    matrix = _matrix(spark)
    users, items = factor_frames(fit_als(training_frame(matrix, cfg), cfg))
    y = _as_array(items, "item_idx", 25, cfg.rank)
    mllib = _as_array(users, "user_idx", 30, cfg.rank)

    folded = _as_array(fold_in_users(matrix, items, cfg), "user_idx", 30, cfg.rank)

    np.testing.assert_allclose(folded, _dense_reference(matrix, y, cfg, 30), atol=1e-5, rtol=0)
    np.testing.assert_allclose(folded, mllib, atol=1e-5, rtol=0)


def test_nonnegative_fold_in_is_the_constrained_optimum(spark: SparkSession) -> None:
    from scipy.optimize import minimize

    cfg = AlsConfig(rank=4, max_iter=4, reg_param=0.1, alpha=2.0, nonnegative=True, seed=5)
    matrix = _matrix(spark, users=8, items=12)
    _, items = factor_frames(fit_als(training_frame(matrix, cfg), cfg))
    y = _as_array(items, "item_idx", 12, 4)
    folded = _as_array(fold_in_users(matrix, items, cfg), "user_idx", 8, 4)
    assert (folded >= 0).all()
    rows = matrix.collect()
    for u in range(8):
        mine = [r.item_idx for r in rows if r.user_idx == u]
        strength = np.array([r.confidence for r in rows if r.user_idx == u])
        c, p = np.ones(12), np.zeros(12)
        c[mine], p[mine] = 1 + cfg.alpha * confidence_array(strength, cfg.confidence), 1.0

        def loss(x: np.ndarray, c: np.ndarray = c, p: np.ndarray = p, n: int = len(mine)) -> float:
            return float(c @ (p - y @ x) ** 2 + cfg.reg_param * n * x @ x)

        best = minimize(loss, np.full(4, 0.1), bounds=[(0, None)] * 4, method="L-BFGS-B", tol=1e-14)
        assert loss(folded[u]) <= best.fun + 1e-6


def test_items_without_factors_are_left_out_and_a_user_with_none_gets_no_factor(spark: SparkSession) -> None:
    cfg = AlsConfig(rank=3, reg_param=0.1, alpha=1.0)
    items = spark.createDataFrame([(0, [1.0, 0.0, 0.0]), (1, [0.0, 1.0, 0.5])], "item_idx INT, factors ARRAY<FLOAT>")
    history = spark.createDataFrame(
        [(0, 0, 1.0, None, 1), (0, 7, 1.0, None, 1), (1, 8, 1.0, None, 1)], MATRIX
    )  # item 7 and 8 arrived after training
    got = {r.user_idx: r.factors for r in fold_in_users(history, items, cfg).collect()}
    assert set(got) == {0}
    y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    expected = fold_in_factors(np.array([0, 1]), y[:1], np.array([1.0]), cfg, gram=y.T @ y)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


def test_the_batched_solve_matches_one_user_at_a_time() -> None:
    rng = np.random.default_rng(7)
    cfg = AlsConfig(rank=4, reg_param=0.3, alpha=5.0)
    y = rng.normal(size=(20, 4))
    gram = y.T @ y
    offsets = np.array([0, 3, 3 + 5, 3 + 5 + 1])
    picks = rng.integers(0, 20, size=9)
    values = rng.random(9)
    both = fold_in_factors(offsets, y[picks], values, cfg, gram)
    for u in range(3):
        lo, hi = offsets[u], offsets[u + 1]
        alone = fold_in_factors(np.array([0, hi - lo]), y[picks[lo:hi]], values[lo:hi], cfg, gram)
        np.testing.assert_allclose(both[u], alone[0], atol=1e-12)


def test_changed_users_are_those_with_a_pair_added_removed_or_changed(spark: SparkSession) -> None:
    before = spark.createDataFrame(
        [(0, 0, 1.0, None, 1), (1, 0, 1.0, None, 1), (2, 1, 1.0, None, 1), (3, 1, 2.0, None, 2), (5, 0, 1.0, None, 1)],
        MATRIX,
    )
    after = spark.createDataFrame(
        [
            (0, 0, 1.0, None, 1),  # unchanged
            (1, 0, 1.0, None, 1),
            (1, 2, 1.0, None, 1),  # user 1 gained a pair
            (3, 1, 3.0, None, 3),  # user 3's pair grew; user 2's pair was deleted
            (4, 0, 1.0, None, 1),  # a new user
            (5, 1, 1.0, None, 1),  # user 5's one pair moved to another item
        ],
        MATRIX,
    )
    got = changed_users(before, after)
    want = spark.createDataFrame([(1,), (2,), (3,), (4,), (5,)], "user_idx INT")
    assert_df_equality(got, want, ignore_row_order=True)
    assert changed_users(after, after).count() == 0


def test_changed_users_agree_with_a_row_by_row_comparison_on_random_edits(spark: SparkSession) -> None:
    rng = np.random.default_rng(11)
    before = {(u, i): (float(rng.integers(1, 6)), int(rng.integers(1, 4))) for u in range(200) for i in range(12)}
    after = dict(before)
    for key in list(after)[::37]:
        del after[key]
    for u, i in zip(rng.integers(0, 220, 40), rng.integers(12, 30, 40), strict=True):
        after[(int(u), int(i))] = (1.0, 1)
    for key in list(after)[5::53]:
        after[key] = (after[key][0] + 1.0, after[key][1])
    want = {key[0] for key, _ in set(before.items()) ^ set(after.items())}

    def frame(pairs: dict[tuple[int, int], tuple[float, int]]) -> DataFrame:
        return spark.createDataFrame([(u, i, c, None, n) for (u, i), (c, n) in pairs.items()], MATRIX)

    got = {r.user_idx for r in changed_users(frame(before), frame(after)).collect()}
    assert got == want and len(want) > 40
