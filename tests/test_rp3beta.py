"""RP3beta: the Spark walk weights against a dense numpy RP3beta, for several block sizes and the
alpha = 0 / beta = 0 edge cases."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import pytest

from recsys_spark.config.schema import Rp3betaConfig, SimilarityConfig
from recsys_spark.models.confidence import confidence_array
from recsys_spark.models.rp3beta import item_rp3beta

if TYPE_CHECKING:
    from pyspark.sql import Row, SparkSession


def _rows(seed: int = 5) -> list[tuple[int, int, float]]:
    """~50 users x 23 items (Zipf-popular), integer confidences 1..4, one user heavy enough to be capped."""
    rng = np.random.default_rng(seed)
    pairs = {(int(u), int(min(rng.zipf(1.4), 23) - 1)) for u in rng.integers(0, 50, 320)}
    pairs |= {(50, i) for i in range(0, 23, 2)}
    return [(u, i, float(rng.integers(1, 5))) for u, i in sorted(pairs)]


def _reference(
    rows: list[tuple[int, int, float]], params: SimilarityConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W, co-occurrence counts, popularity), dense numpy over item ids 0..max:
    W_ij = sum_u P(u|i)^alpha P(j|u)^alpha / pop_j^beta on the capped matrix."""
    own = params.rp3beta
    n_users, n_items = max(u for u, _, _ in rows) + 1, max(i for _, i, _ in rows) + 1
    x = np.zeros((n_users, n_items))
    by_user: dict[int, list[tuple[float, int]]] = {}
    for u, i, c in rows:
        by_user.setdefault(u, []).append((float(confidence_array(np.array([c]), own.confidence, own.epsilon)[0]), i))
    for u, history in by_user.items():
        for r, i in sorted(history, key=lambda e: (-e[0], e[1]))[: params.max_user_items]:
            x[u, i] = r
    seen = x > 0
    item_degree, user_degree = x.sum(axis=0), x.sum(axis=1)
    # only the matrix's entries are steps of the walk (0 ** 0 would make every absent pair one)
    p_user_given_item = np.where(seen, (x / np.where(item_degree > 0, item_degree, 1.0)) ** own.alpha, 0.0)
    p_item_given_user = np.where(seen, (x / np.where(user_degree > 0, user_degree, 1.0)[:, None]) ** own.alpha, 0.0)
    popularity = seen.sum(axis=0).astype(float)
    w = (p_user_given_item.T @ p_item_given_user) / np.where(popularity > 0, popularity, 1.0) ** own.beta
    return w, seen.T.astype(float) @ seen.astype(float), popularity


def _check_against_reference(got: list, w: np.ndarray, counts: np.ndarray, params: SimilarityConfig) -> int:
    """Every item's list is its top_n by W up to exact ties (values to 1e-9); returns the rows checked."""
    top_n, min_similarity = params.top_n_of("rp3beta"), params.rp3beta.min_similarity
    for i in range(len(w)):
        mine = [r for r in got if r.item_idx == i]
        eligible = [(w[i, j], j) for j in range(len(w)) if j != i and counts[i, j] > 0 and w[i, j] >= min_similarity]
        eligible.sort(key=lambda e: (-e[0], e[1]))
        assert len(mine) == min(top_n, len(eligible)), i
        assert [r.rank for r in mine] == list(range(1, len(mine) + 1))
        assert all(a.similarity >= b.similarity for a, b in itertools.pairwise(mine))
        for r in mine:
            assert r.similarity == pytest.approx(w[i, r.neighbor_idx], rel=1e-9, abs=1e-12)
            assert r.cooccurrence == counts[i, r.neighbor_idx]
        if mine:
            cut = eligible[len(mine) - 1][0]
            must = {j for v, j in eligible if v > cut * (1 + 1e-9)}  # strictly above the cut: no tie can excuse it
            assert must <= {r.neighbor_idx for r in mine}, i
            assert all(r.similarity >= cut * (1 - 1e-9) for r in mine), i
    return len(got)


def _fit(spark: SparkSession, rows: list[tuple[int, int, float]], params: SimilarityConfig) -> list[Row]:
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    return item_rp3beta(df, params).orderBy("item_idx", "rank").collect()


@pytest.mark.parametrize("block_items", [3, 5, 1000])
def test_spark_rp3beta_equals_a_dense_numpy_walk(spark: SparkSession, block_items: int) -> None:
    rows = _rows()
    params = SimilarityConfig(
        method="rp3beta",
        top_n=4,
        max_user_items=7,
        block_items=block_items,
        rp3beta=Rp3betaConfig(confidence="linear", alpha=0.8, beta=0.6, min_similarity=0.01),
    )
    w, counts, _ = _reference(rows, params)
    got = _fit(spark, rows, params)
    assert _check_against_reference(got, w, counts, params) > 40
    assert min(r.similarity for r in got) >= 0.01
    # the floor is not vacuous: some co-occurring pairs lie below it
    assert ((counts > 0) & (w < 0.01) & ~np.eye(len(w), dtype=bool)).any()


@pytest.mark.parametrize(
    ("alpha", "beta", "confidence"), [(0.0, 0.5, "linear"), (1.0, 0.0, "log"), (0.0, 0.0, "binary")]
)
def test_alpha_and_beta_zero_edge_cases_match_the_reference(
    spark: SparkSession,
    alpha: float,
    beta: float,
    confidence: str,
) -> None:
    rows = _rows(seed=9)
    params = SimilarityConfig(
        method="rp3beta",
        top_n=6,
        max_user_items=7,
        block_items=5,
        rp3beta=Rp3betaConfig(confidence=confidence, alpha=alpha, beta=beta),
    )
    w, counts, popularity = _reference(rows, params)
    got = _fit(spark, rows, params)
    assert _check_against_reference(got, w, counts, params) > 40
    if alpha == 0.0:
        # every step weighs 1: a weight is the users both items share over the target's popularity^beta
        for r in got:
            assert r.similarity == pytest.approx(r.cooccurrence / popularity[r.neighbor_idx] ** beta, rel=1e-9)
    if beta == 0.0 and alpha == 1.0:
        # the reference itself: without the popularity penalty W is a two-step transition probability,
        # so every full row (diagonal included) sums to 1
        np.testing.assert_allclose(w[popularity > 0].sum(axis=1), 1.0)
