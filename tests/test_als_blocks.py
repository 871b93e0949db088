"""The blocks ALS engine (``als.engine = "blocks"``): its solvers against the textbook normal
equations, its two ways of reaching the fixed side against each other, and its lists against
MLlib's and implicit's on ML-100K."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from pydantic import ValidationError

from recsys_spark.config.schema import AlsConfig
from recsys_spark.models.als import factor_frames, fit_als, training_frame
from recsys_spark.models.least_squares import cg_factors, exact_factors
from tests.test_fold_in import _as_array, _dense_reference, _matrix

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _batch(seed: int, rows: int = 12, fixed: int = 40, rank: int = 6) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(fixed, rank)) / np.sqrt(rank)
    counts = rng.integers(1, 15, size=rows)
    offsets = np.r_[0, np.cumsum(counts)]
    cols = np.concatenate([rng.choice(fixed, size=c, replace=False) for c in counts])
    values = rng.integers(1, 6, size=len(cols)).astype(float)
    return offsets, y, cols, values


def _textbook(offsets: np.ndarray, y: np.ndarray, cols: np.ndarray, values: np.ndarray, cfg: AlsConfig) -> np.ndarray:
    """argmin_x Σ_i c_i (p_i - x·y_i)² + λ_u |x|² over every fixed row, solved densely."""
    out = []
    for u in range(len(offsets) - 1):
        mine = slice(offsets[u], offsets[u + 1])
        n = offsets[u + 1] - offsets[u]
        lam = cfg.reg_param * (n if cfg.reg_scale == "count" else 1)
        if cfg.feedback == "implicit":
            c, p = np.ones(len(y)), np.zeros(len(y))
            c[cols[mine]] = 1 + cfg.alpha * values[mine]
            p[cols[mine]] = 1.0
            out.append(np.linalg.solve((y.T * c) @ y + lam * np.eye(y.shape[1]), (y.T * c) @ p))
        else:
            yu = y[cols[mine]]
            out.append(np.linalg.solve(yu.T @ yu + lam * np.eye(y.shape[1]), yu.T @ values[mine]))
    return np.array(out)


CONFIGS = [
    AlsConfig(rank=6, reg_param=0.1, alpha=2.0, confidence="linear"),
    AlsConfig(rank=6, reg_param=3.0, alpha=5.0, confidence="linear", reg_scale="none", engine="blocks"),
    AlsConfig(rank=6, reg_param=0.2, feedback="explicit"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["implicit", "implicit-unscaled", "explicit"])
def test_the_exact_solver_is_the_textbook_least_squares_solution(cfg: AlsConfig) -> None:
    offsets, y, cols, values = _batch(1)
    got = exact_factors(offsets, y[cols], values, cfg, gram=y.T @ y)
    np.testing.assert_allclose(got, _textbook(offsets, y, cols, values, cfg), atol=1e-10)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["implicit", "implicit-unscaled", "explicit"])
def test_conjugate_gradient_with_as_many_steps_as_the_rank_reaches_the_exact_solve(cfg: AlsConfig) -> None:
    offsets, y, cols, values = _batch(2)
    exact = exact_factors(offsets, y[cols], values, cfg, gram=y.T @ y)
    got = cg_factors(offsets, cols, y, values, cfg, np.zeros_like(exact), gram=y.T @ y, steps=2 * cfg.rank)
    np.testing.assert_allclose(got, exact, atol=1e-5 * np.abs(exact).max())


def test_each_conjugate_gradient_step_lowers_every_rows_objective_toward_the_optimum() -> None:
    cfg = AlsConfig(rank=6, reg_param=0.1, alpha=4.0)
    offsets, y, cols, values = _batch(3)
    gram = y.T @ y
    exact = exact_factors(offsets, y[cols], values, cfg, gram=gram)

    def error(x: np.ndarray) -> np.ndarray:
        """Each row's A-norm distance to the optimum, the quantity CG minimises step by step."""
        out = []
        for u in range(len(offsets) - 1):
            mine = slice(offsets[u], offsets[u + 1])
            yu = y[cols[mine]]
            a = gram + yu.T @ (cfg.alpha * values[mine, None] * yu) + cfg.reg_param * len(yu) * np.eye(6)
            d = x[u] - exact[u]
            out.append(d @ a @ d)
        return np.array(out)

    start = np.random.default_rng(0).normal(size=exact.shape)
    errors = [error(cg_factors(offsets, cols, y, values, cfg, start, gram=gram, steps=s)) for s in range(5)]
    for before, after in itertools.pairwise(errors):
        assert (after <= before * (1 + 1e-9)).all()
    assert errors[3].sum() < 0.05 * errors[0].sum()


def test_the_engines_options_are_checked_against_the_engine() -> None:
    with pytest.raises(ValidationError, match=re.escape('reg_scale = "none" needs als.engine = "blocks"')):
        AlsConfig(reg_scale="none")
    with pytest.raises(ValidationError, match=re.escape('nonnegative = true needs als.engine = "mllib"')):
        AlsConfig(engine="blocks", nonnegative=True)


def _transposed(matrix: DataFrame) -> DataFrame:
    return matrix.selectExpr("item_idx AS user_idx", "user_idx AS item_idx", "confidence", "rating", "event_count")


@pytest.mark.parametrize(
    "cfg",
    [
        AlsConfig(rank=5, reg_param=0.1, alpha=2.0, confidence="binary", seed=1),
        AlsConfig(rank=4, reg_param=0.2, feedback="explicit", seed=4),
    ],
    ids=["implicit", "explicit"],
)
def test_each_half_iteration_of_the_exact_solver_solves_its_sides_normal_equations(
    spark: SparkSession, cfg: AlsConfig
) -> None:
    cfg = cfg.model_copy(update={"engine": "blocks", "solver": "cholesky"})
    matrix = _matrix(spark)
    train = training_frame(matrix, cfg)
    _, before = factor_frames(fit_als(train, cfg.model_copy(update={"max_iter": 3})))
    users, items = factor_frames(fit_als(train, cfg.model_copy(update={"max_iter": 4})))
    x = _as_array(users, "user_idx", 30, cfg.rank)
    y = _as_array(items, "item_idx", 25, cfg.rank)
    # a fit of four iterations solves its users against the items of a fit of three (the same
    # seed, so the same path), then its items against those users
    np.testing.assert_allclose(
        x, _dense_reference(matrix, _as_array(before, "item_idx", 25, cfg.rank), cfg, 30), atol=1e-5
    )
    np.testing.assert_allclose(y, _dense_reference(_transposed(matrix), x, cfg, 25), atol=1e-5)


def test_joining_the_fixed_side_to_the_blocks_gives_the_broadcast_fits_factors(spark: SparkSession) -> None:
    cfg = AlsConfig(rank=4, max_iter=3, reg_param=0.1, alpha=2.0, engine="blocks", num_user_blocks=3, seed=3)
    matrix = training_frame(_matrix(spark, users=20, items=15), cfg)
    broadcast = factor_frames(fit_als(matrix, cfg.model_copy(update={"exchange": "broadcast"})))
    joined = factor_frames(fit_als(matrix, cfg.model_copy(update={"broadcast_limit_mb": 1e-6})))
    for (b, j), key, n in zip(zip(broadcast, joined), ("user_idx", "item_idx"), (20, 15)):
        np.testing.assert_allclose(_as_array(j, key, n, 4), _as_array(b, key, n, 4), atol=1e-5)


@pytest.mark.parametrize("blocks", [(2, 1), (1, 2)], ids=["users-2-items-1", "users-1-items-2"])
def test_the_barrier_exchange_gives_the_broadcast_fits_factors(spark: SparkSession, blocks: tuple[int, int]) -> None:
    from recsys_spark.models.als_blocks import _BlocksFit, exchange_mode

    cfg = AlsConfig(
        rank=4, max_iter=3, reg_param=0.1, alpha=2.0, engine="blocks", seed=3,
        num_user_blocks=blocks[0], num_item_blocks=blocks[1],
    )  # fmt: skip
    matrix = training_frame(_matrix(spark, users=20, items=15), cfg)
    fit = _BlocksFit(matrix, cfg)
    try:  # the factors fit, so auto chooses the barrier
        assert exchange_mode(fit) == "barrier"
    finally:
        fit.release()
    barrier = factor_frames(fit_als(matrix, cfg))
    broadcast = factor_frames(fit_als(matrix, cfg.model_copy(update={"exchange": "broadcast"})))
    for (b, j), key, n in zip(zip(broadcast, barrier), ("user_idx", "item_idx"), (20, 15)):
        np.testing.assert_array_equal(_as_array(j, key, n, 4), _as_array(b, key, n, 4))


def test_a_block_index_without_rows_on_either_side_gets_no_barrier_task(spark: SparkSession) -> None:
    from pyspark.sql import functions as F

    cfg = AlsConfig(rank=3, max_iter=2, reg_param=0.1, alpha=2.0, engine="blocks", seed=5, exchange="barrier")
    # even users and items only: with two blocks a side, block 1 is empty on both
    even = _matrix(spark, users=20, items=15).where((F.col("user_idx") % 2 == 0) & (F.col("item_idx") % 2 == 0))
    matrix = training_frame(even, cfg)
    barrier = factor_frames(fit_als(matrix, cfg))
    broadcast = factor_frames(fit_als(matrix, cfg.model_copy(update={"exchange": "broadcast"})))
    for (b, j), key, n in zip(zip(broadcast, barrier), ("user_idx", "item_idx"), (20, 15)):
        np.testing.assert_array_equal(_as_array(j, key, n, 3), _as_array(b, key, n, 3))


def test_more_blocks_than_task_slots_share_the_barriers_tasks_and_give_the_same_factors(spark: SparkSession) -> None:
    cfg = AlsConfig(
        rank=4, max_iter=3, reg_param=0.1, alpha=2.0, engine="blocks", seed=3, num_user_blocks=5, num_item_blocks=3
    )
    matrix = training_frame(_matrix(spark, users=20, items=15), cfg)
    barrier = factor_frames(fit_als(matrix, cfg))  # 5 and 3 blocks on the session's 2 task slots
    broadcast = factor_frames(fit_als(matrix, cfg.model_copy(update={"exchange": "broadcast"})))
    for (b, j), key, n in zip(zip(broadcast, barrier), ("user_idx", "item_idx"), (20, 15)):
        np.testing.assert_array_equal(_as_array(j, key, n, 4), _as_array(b, key, n, 4))


def test_auto_exchange_takes_the_barrier_while_the_factors_fit_and_joins_above_the_limit(spark: SparkSession) -> None:
    from recsys_spark.models.als_blocks import _BlocksFit, exchange_mode

    matrix = training_frame(_matrix(spark, users=20, items=15), AlsConfig())
    for update, mode in (
        ({"num_user_blocks": 3}, "barrier"),
        ({"num_user_blocks": 3, "broadcast_limit_mb": 1e-6}, "joined"),
        ({"exchange": "broadcast"}, "broadcast"),
    ):
        fit = _BlocksFit(matrix, AlsConfig(engine="blocks", **update))
        try:
            assert exchange_mode(fit) == mode, update
        finally:
            fit.release()


def test_three_warm_started_cg_steps_reach_the_exact_solvers_objective(spark: SparkSession) -> None:
    base = AlsConfig(rank=5, max_iter=12, reg_param=0.1, alpha=3.0, confidence="linear", engine="blocks", seed=2)
    matrix = _matrix(spark, users=40, items=30, seed=4)
    rows = matrix.collect()

    def loss(cfg: AlsConfig) -> float:
        users, items = factor_frames(fit_als(training_frame(matrix, cfg), cfg))
        x, y = _as_array(users, "user_idx", 40, 5), _as_array(items, "item_idx", 30, 5)
        c, p = np.ones((40, 30)), np.zeros((40, 30))
        for r in rows:
            c[r.user_idx, r.item_idx] = 1 + cfg.alpha * r.confidence
            p[r.user_idx, r.item_idx] = 1
        n_u, n_i = (p.sum(axis=1), p.sum(axis=0))
        return float((c * (p - x @ y.T) ** 2).sum() + cfg.reg_param * (n_u @ (x**2).sum(1) + n_i @ (y**2).sum(1)))

    exact, cg = loss(base.model_copy(update={"solver": "cholesky"})), loss(base)
    assert cg <= exact * 1.01


def _ml100k(shared_data: Path, fold: str) -> tuple[np.ndarray, ...]:
    import pandas as pd

    names = ["user", "item", "rating", "ts"]
    train = pd.read_csv(shared_data / "ml-100k" / f"{fold}.base", sep="\t", names=names)
    test = pd.read_csv(shared_data / "ml-100k" / f"{fold}.test", sep="\t", names=names)
    return (train.user.to_numpy() - 1, train.item.to_numpy() - 1, train.rating.to_numpy().astype(float), test)


def _ndcg_at_10(scores: np.ndarray, seen: set[tuple[int, int]], test: object) -> float:
    import pandas as pd

    assert isinstance(test, pd.DataFrame)
    liked = test[test.rating >= 4]
    relevant: dict[int, set[int]] = {}
    for u, i in zip(liked.user - 1, liked.item - 1):
        relevant.setdefault(int(u), set()).add(int(i))
    discount = 1 / np.log2(np.arange(2, 12))
    total = 0.0
    for u, wanted in relevant.items():
        row = scores[u].copy()
        row[[i for (v, i) in seen if v == u]] = -np.inf
        top = np.argsort(-row, kind="stable")[:10]
        gains = np.array([i in wanted for i in top], dtype=float)
        total += (gains @ discount) / discount[: min(10, len(wanted))].sum()
    return total / len(relevant)


@pytest.mark.realdata
def test_on_ml100k_the_blocks_engine_ranks_as_well_as_mllib_and_implicit_with_the_same_settings(
    spark: SparkSession, shared_data: Path
) -> None:
    import scipy.sparse as sp

    from recsys_spark.bench.peers import implicit_als_rank

    users, items, ratings, test = _ml100k(shared_data, "u1")
    n_users, n_items = 943, 1682
    frame = spark.createDataFrame(
        list(zip(users.tolist(), items.tolist(), ratings.tolist(), ratings.tolist(), [1] * len(users))),
        "user_idx INT, item_idx INT, confidence DOUBLE, rating DOUBLE, event_count LONG",
    )
    seen = set(zip(users.tolist(), items.tolist()))

    def ours(cfg: AlsConfig) -> float:
        uf, itf = factor_frames(fit_als(training_frame(frame, cfg), cfg))
        x, y = np.zeros((n_users, cfg.rank)), np.zeros((n_items, cfg.rank))
        for r in uf.collect():
            x[r.user_idx] = r.factors
        for r in itf.collect():
            y[r.item_idx] = r.factors
        return _ndcg_at_10(x @ y.T, seen, test)

    # conf/movielens-100k.toml's settings (MLlib's count-scaled λ), then implicit's unscaled λ
    scaled = AlsConfig(rank=32, max_iter=15, reg_param=0.50752, alpha=1.6594, confidence="linear")
    mllib, blocks = ours(scaled), ours(scaled.model_copy(update={"engine": "blocks"}))
    unscaled = scaled.model_copy(update={"engine": "blocks", "reg_scale": "none", "reg_param": 20.0})
    # implicit weighs a pair by alpha x value (not 1 + alpha x value): fed 1 + 1.6594 r with
    # alpha 1, it fits exactly our objective
    x = sp.csr_matrix((1.0 + 1.6594 * ratings, (users, items)), shape=(n_users, n_items))
    every = np.arange(n_users)
    u, i, r = implicit_als_rank(
        x, {"factors": 32, "regularization": 20.0, "alpha": 1.0, "confidence": "linear"}, every, 10
    )
    scores = np.full((n_users, n_items), -1.0)
    scores[u, i] = 100.0 - r
    peer, blocks_unscaled = _ndcg_at_10(scores, seen, test), ours(unscaled)
    print(f"ndcg@10 mllib {mllib:.4f} blocks {blocks:.4f}; implicit {peer:.4f} blocks unscaled {blocks_unscaled:.4f}")
    assert abs(blocks - mllib) <= 0.01
    assert abs(blocks_unscaled - peer) <= 0.01
