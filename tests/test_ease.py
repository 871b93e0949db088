"""EASE: the Spark fit against a dense numpy EASE (np.linalg.inv), the in-place solve and the exact
|weight| pruning (per item and over all of B) against brute force, and the memory guard."""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

import numpy as np
import pytest

from recsys_spark.config.schema import EaseConfig, EasePrune, SimilarityConfig
from recsys_spark.errors import ConfigError
from recsys_spark.models import ease as ease
from recsys_spark.models.confidence import confidence_array
from recsys_spark.models.ease import (
    ease_memory,
    ease_weights_in_place,
    item_ease,
    largest_abs_overall,
    largest_abs_per_row,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession


def _rows(seed: int = 3) -> list[tuple[int, int, float]]:
    """~40 users x 12 items with integer confidences 1..5, one user heavy enough to be capped."""
    rng = np.random.default_rng(seed)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, 40, 220), rng.integers(0, 12, 220))}
    pairs |= {(40, i) for i in range(12)}  # the heavy user
    return [(u, i, float(rng.integers(1, 6))) for u, i in sorted(pairs)]


def _capped_matrix(
    rows: list[tuple[int, int, float]], transform: str, epsilon: float, max_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """(items, users x items X) with each history cut to its max_items strongest (ties: lower item)."""
    items = np.array(sorted({i for _, i, _ in rows}))
    x = np.zeros((max(u for u, _, _ in rows) + 1, len(items)))
    by_user: dict[int, list[tuple[float, int]]] = {}
    for u, i, c in rows:
        by_user.setdefault(u, []).append((float(confidence_array(np.array([c]), transform, epsilon)[0]), i))
    for u, history in by_user.items():
        for r, i in sorted(history, key=lambda e: (-e[0], e[1]))[:max_items]:
            x[u, np.searchsorted(items, i)] = r
    return items, x


def _reference_ease(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck's EASE with a plain inverse: B = I - P / diag(P), diagonal 0."""
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


def _fit(spark: SparkSession, rows: list[tuple[int, int, float]], params: SimilarityConfig) -> list[Row]:
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    return item_ease(df, params).orderBy("item_idx", "rank").collect()


@pytest.mark.parametrize("block_items", [5, 1000])
@pytest.mark.parametrize("confidence", ["binary", "linear", "log"])
def test_spark_ease_equals_a_dense_numpy_inverse(
    spark: SparkSession,
    monkeypatch: pytest.MonkeyPatch,
    confidence: str,
    block_items: int,
) -> None:
    if block_items == 5:
        # several target blocks and query blocks that straddle them; the Gram also arrives in chunks
        monkeypatch.setattr(ease, "_COLLECT_BYTES", 40 * ease._GRAM_ENTRY_BYTES)
    rows = _rows()
    params = SimilarityConfig(
        method="ease",
        top_n=100,
        max_user_items=8,
        block_items=block_items,
        ease=EaseConfig(confidence=confidence, epsilon=2.0, l2=3.0),
    )
    got = _fit(spark, rows, params)

    items, x = _capped_matrix(rows, confidence, 2.0, 8)
    ref = _reference_ease(x, 3.0)
    assert np.abs(ref).max() > 0.05  # weights large enough for a 1e-6 tolerance to mean something
    dense = np.zeros_like(ref)
    local = {int(item): k for k, item in enumerate(items)}
    for r in got:
        dense[local[r.item_idx], local[r.neighbor_idx]] = r.similarity
    np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-6)
    # every non-zero off-diagonal weight is there (top_n exceeds the catalogue), each once
    assert len(got) == int((ref != 0).sum()) == len(items) * (len(items) - 1)
    counts = (x > 0).T.astype(int) @ (x > 0).astype(int)
    assert all(r.cooccurrence == counts[local[r.item_idx], local[r.neighbor_idx]] for r in got)
    for item in items:
        mine = [r for r in got if r.item_idx == item]
        assert [r.rank for r in mine] == list(range(1, len(mine) + 1))
        assert all(a.similarity >= b.similarity for a, b in itertools.pairwise(mine))  # ranked by signed weight


def test_a_search_fits_every_l2_from_one_gram_per_transform(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _rows(seed=8)
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    built = []
    spark_gram = ease._spark_gram
    monkeypatch.setattr(ease, "_spark_gram", lambda *a: built.append(a[1].ease.confidence) or spark_gram(*a))
    grams = ease.EaseGrams(df)
    for confidence in ("binary", "linear"):
        for l2 in (2.0, 30.0):
            params = SimilarityConfig(
                method="ease", top_n=100, max_user_items=8, ease=EaseConfig(confidence=confidence, l2=l2)
            )
            got = ease.fit_ease(df, params, grams).neighbors.collect()
            items, x = _capped_matrix(rows, confidence, 1.0, 8)
            ref = _reference_ease(x, l2)
            dense = np.zeros_like(ref)
            local = {int(item): k for k, item in enumerate(items)}
            for r in got:
                dense[local[r.item_idx], local[r.neighbor_idx]] = r.similarity
            np.testing.assert_allclose(dense, ref, rtol=0, atol=1e-6)  # the solve did not eat the cached Gram
            assert {r.cooccurrence for r in got} == {None}  # trials are never written, so they skip the counts
    assert built == ["binary", "linear"]
    grams.release()


def test_a_top_n_grid_solves_each_l2_once_and_prunes_it_as_a_fit_would(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _rows(seed=8)
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    solved = []
    solve = ease.ease_weights_in_place
    monkeypatch.setattr(ease, "ease_weights_in_place", lambda g, l2: solved.append(l2) or solve(g, l2))
    grams = ease.EaseGrams(df)
    items, x = _capped_matrix(rows, "linear", 1.0, 8)
    for l2 in (2.0, 30.0):
        ref = _reference_ease(x, l2)
        for top_n in (2, 5, 100):
            params = SimilarityConfig(
                method="ease", top_n=top_n, max_user_items=8, ease=EaseConfig(confidence="linear", l2=l2)
            )
            got = ease.fit_ease(df, params, grams).neighbors.collect()
            for k, item in enumerate(items):
                mine = sorted((r for r in got if r.item_idx == item), key=lambda r: r.rank)
                by_size = np.argsort(-np.abs(ref[k]), kind="stable")[: min(top_n, len(items) - 1)]
                assert {r.neighbor_idx for r in mine} == {int(items[j]) for j in by_size}
                at = [int(np.searchsorted(items, r.neighbor_idx)) for r in mine]
                np.testing.assert_allclose([r.similarity for r in mine], ref[k, at], rtol=0, atol=1e-6)
    assert solved == [2.0, 30.0]  # the second and third top_n re-pruned the kept B
    grams.release()


def test_top_n_keeps_exactly_the_largest_absolute_weights(spark: SparkSession) -> None:
    # item ids with gaps: matrix positions are not ids, and pairs are keyed by the id range
    rows = [(u, 3 * i + 1, c) for u, i, c in _rows(seed=8)]
    params = SimilarityConfig(
        method="ease", top_n=3, max_user_items=8, block_items=4, ease=EaseConfig(confidence="linear", l2=3.0)
    )
    got = _fit(spark, rows, params)
    items, x = _capped_matrix(rows, "linear", 1.0, 8)
    ref = _reference_ease(x, 3.0)
    counts = (x > 0).T.astype(int) @ (x > 0).astype(int)
    for k, item in enumerate(items):
        by_size = np.argsort(-np.abs(ref[k]), kind="stable")
        assert abs(ref[k, by_size[2]]) - abs(ref[k, by_size[3]]) > 1e-6  # no tie at the cut
        mine = [r for r in got if r.item_idx == item]
        assert {r.neighbor_idx for r in mine} == {int(items[j]) for j in by_size[:3]}
        at = [int(np.searchsorted(items, r.neighbor_idx)) for r in mine]
        np.testing.assert_allclose([r.similarity for r in mine], ref[k, at], atol=1e-6)
        assert [r.cooccurrence for r in mine] == counts[k, at].tolist()
    assert sum(r.similarity < 0 for r in got) > 0  # negative weights are kept, not only positive ones
    assert {r.rank for r in got} == {1, 2, 3}


def test_a_catalog_above_max_items_is_a_config_error_naming_the_option(
    spark: SparkSession, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _rows()
    params = SimilarityConfig(method="ease", ease=EaseConfig(max_items=5))
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    with caplog.at_level(logging.INFO, logger="recsys_spark.models.ease"), pytest.raises(ConfigError) as err:
        item_ease(df, params)
    message = str(err.value)
    assert "similarity.ease.max_items = 5" in message and "12 items" in message
    assert f"{ease_memory(12, 50).total_bytes / 1e9:.2f} GB" in message and "SANSA" in message
    assert any("the solve needs" in r.getMessage() for r in caplog.records)  # estimated and logged first


def test_memory_estimate_counts_one_dense_matrix_and_the_kept_weights() -> None:
    m = ease_memory(20_000, 50)
    assert m.matrix_bytes == 8 * 20_000**2
    assert m.kept_bytes == ease._KEPT_ROW_BYTES * 20_000 * 50
    assert ease_memory(10, 50).kept_bytes == ease._KEPT_ROW_BYTES * 10 * 9  # at most n - 1 neighbours per item
    assert m.total_bytes == m.matrix_bytes + m.kept_bytes + m.buffer_bytes


def test_in_place_solve_reads_the_upper_triangle_and_equals_the_inverse_formula(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ease, "_MIRROR_BLOCK", 3)  # several mirror blocks, one of them ragged
    rng = np.random.default_rng(1)
    x = rng.poisson(0.7, size=(30, 11)).astype(float)
    gram = np.ascontiguousarray(x.T @ x)
    gram[np.tril_indices(11, -1)] = np.nan  # only the upper triangle is G's: the lower one is never read
    out = ease_weights_in_place(gram, 4.0)
    assert out is gram
    np.testing.assert_allclose(out, _reference_ease(x, 4.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("buffer", [7, 1 << 21])
def test_largest_abs_per_row_is_exact_with_ties_and_zeros(monkeypatch: pytest.MonkeyPatch, buffer: int) -> None:
    monkeypatch.setattr(ease, "_ROW_BUFFER", buffer)  # 7: one row per buffer
    rng = np.random.default_rng(4)
    w = rng.integers(-3, 4, size=(9, 8)).astype(float)  # many ties, zeros and negatives
    w[2] = 0.0
    w[5, :6] = 0.0
    for n in (1, 3, 8, 20):
        rows, cols = largest_abs_per_row(w, n)
        for r in range(len(w)):
            order = sorted((-abs(v), c) for c, v in enumerate(w[r]) if v != 0)[:n]
            assert sorted(cols[rows == r].tolist()) == sorted(c for _, c in order)


def _largest_abs_by_sort(w: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The brute-force answer: sort every non-zero by |value| desc, then row-major position."""
    flat = np.abs(w).ravel()
    at = np.flatnonzero(flat)
    keep = np.sort(at[np.lexsort((at, -flat[at]))[:count]])
    return keep // w.shape[1], keep % w.shape[1]


@pytest.mark.parametrize("buffer", [7, 1 << 21])
def test_largest_abs_overall_is_exact_with_ties_zeros_and_subnormals(
    monkeypatch: pytest.MonkeyPatch, buffer: int
) -> None:
    monkeypatch.setattr(ease, "_ROW_BUFFER", buffer)  # 7: one row per pass step
    rng = np.random.default_rng(5)
    for trial in range(60):
        w = rng.normal(size=(int(rng.integers(1, 12)), int(rng.integers(1, 12))))
        if trial % 3 == 0:
            w = np.round(w, 1)  # ties inside one bucket and across the cut
        if trial % 4 == 0:
            w[rng.random(w.shape) < 0.4] = 0.0
        if trial % 5 == 0:
            w.ravel()[::3] = 5e-324  # subnormals share bucket 0 with the zeros, yet are non-zero
        for count in (0, 1, w.size // 3, w.size - 1, w.size + 2):
            rows, cols = largest_abs_overall(w, count)
            want_rows, want_cols = _largest_abs_by_sort(w, count)
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_array_equal(cols, want_cols)


def test_largest_abs_overall_with_a_row_scale_ranks_each_row_by_its_scaled_values() -> None:
    rng = np.random.default_rng(11)
    for _ in range(40):
        w = np.round(rng.normal(size=(int(rng.integers(1, 10)), int(rng.integers(1, 10)))), 1)
        scale = rng.choice([0.0, 0.5, 1.0, 3.0], size=len(w))
        for count in (1, w.size // 2, w.size):
            rows, cols = largest_abs_overall(w, count, scale)
            want_rows, want_cols = _largest_abs_by_sort(w * scale[:, None], count)
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_array_equal(cols, want_cols)


def test_score_pruning_keeps_the_weights_that_move_the_training_scores_most(spark: SparkSession) -> None:
    rows = _rows(seed=8)
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    items, x = _capped_matrix(rows, "linear", 1.0, 8)
    ref = _reference_ease(x, 3.0)
    # dropping B[i, j] changes the training scores XB by x[:, i] * B[i, j]: a squared change of G_ii B_ij^2
    moved = np.abs(ref) * np.linalg.norm(x, axis=0)[:, None]
    want_rows, want_cols = _largest_abs_by_sort(moved, len(items) * 3)
    want = {(int(items[r]), int(items[c])): ref[r, c] for r, c in zip(want_rows, want_cols)}
    by_abs_rows, by_abs_cols = _largest_abs_by_sort(ref, len(items) * 3)
    assert set(zip(by_abs_rows.tolist(), by_abs_cols.tolist())) != set(zip(want_rows.tolist(), want_cols.tolist()))
    _kept_by_both_fits(df, "score", want)


def _kept_by_both_fits(df: DataFrame, prune: EasePrune, want: dict[tuple[int, int], float]) -> list[list[Row]]:
    """The rows of a plain fit and of a search's fit, each keeping exactly ``want``'s weights (3 per
    item on average, l2 3, linear, histories of 8)."""
    params = SimilarityConfig(
        method="ease",
        top_n=3,
        max_user_items=8,
        block_items=4,
        ease=EaseConfig(confidence="linear", l2=3.0, prune=prune),
    )
    grams = ease.EaseGrams(df)
    fits = [item_ease(df, params).collect(), ease.fit_ease(df, params, grams).neighbors.collect()]
    grams.release()
    for got in fits:
        assert {(r.item_idx, r.neighbor_idx) for r in got} == set(want)
        np.testing.assert_allclose(
            [r.similarity for r in got], [want[r.item_idx, r.neighbor_idx] for r in got], rtol=0, atol=1e-6
        )
    return fits


def test_global_pruning_keeps_the_n_times_top_n_largest_weights_of_b_with_rows_of_any_length(
    spark: SparkSession,
) -> None:
    rows = _rows(seed=8)
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    items, x = _capped_matrix(rows, "linear", 1.0, 8)
    ref = _reference_ease(x, 3.0)
    want_rows, want_cols = _largest_abs_by_sort(ref, len(items) * 3)
    want = {(int(items[r]), int(items[c])): ref[r, c] for r, c in zip(want_rows, want_cols)}
    for got in _kept_by_both_fits(df, "global", want):
        lengths = np.bincount([r.item_idx for r in got])
        assert lengths.max() > 3 and lengths[items].min() < 3  # the budget moved between items
        for item in items:
            mine = sorted((r for r in got if r.item_idx == item), key=lambda r: r.rank)
            assert [r.rank for r in mine] == list(range(1, len(mine) + 1))
            assert all(a.similarity >= b.similarity for a, b in itertools.pairwise(mine))
