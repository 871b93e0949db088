"""Blocked dense top-k: equals brute-force numpy top-k, exclusions hold, ties are deterministic."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from recsys_spark.kernels.blocked_topk import BlockShape, blocked_top_k, score_block, top_k_rows

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def brute_force(
    q: np.ndarray, t: np.ndarray, k: int, exclude: set[tuple[int, int]] = frozenset(), min_score: float | None = None
) -> dict[int, list[tuple[int, float]]]:
    """Reference: full product in float64, sort each row by (score desc, id asc)."""
    scores = q.astype(np.float64) @ t.astype(np.float64).T
    out = {}
    for i in range(q.shape[0]):
        cand = [
            (j, scores[i, j])
            for j in range(t.shape[0])
            if (i, j) not in exclude and (min_score is None or scores[i, j] >= min_score)
        ]
        cand.sort(key=lambda x: (-x[1], x[0]))
        out[i] = cand[:k]
    return out


def _assert_same(got: dict[int, list[tuple[int, float]]], want: dict[int, list[tuple[int, float]]]) -> None:
    """Same items in the same order, except where adjacent reference scores tie within float32 noise."""
    assert set(got) == {i for i, v in want.items() if v}
    for i, ref in want.items():
        mine = got.get(i, [])
        assert len(mine) == len(ref), i
        np.testing.assert_allclose([s for _, s in mine], [s for _, s in ref], rtol=1e-5, atol=1e-5)
        ref_scores = [s for _, s in ref]
        for pos, ((a, _), (b, _)) in enumerate(zip(mine, ref)):
            if a != b:  # only allowed inside a near-tie
                near = [abs(ref_scores[pos] - x) < 1e-4 for x in ref_scores]
                assert sum(near) > 1, (i, pos, a, b)


def test_top_k_rows_orders_and_breaks_ties_by_id() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    ids = np.array([10, 11, 12, 13, 14])
    r, c, s = top_k_rows(scores, ids, 3)
    assert r.tolist() == [0, 0, 0, 1, 1, 1]
    assert ids[c].tolist() == [11, 10, 12, 10, 11, 12]  # ties at 0.5 and 1.0: lower ids first
    assert s.tolist() == pytest.approx([0.9, 0.5, 0.5, 1.0, 1.0, 1.0])


def test_top_k_rows_drops_excluded_and_handles_short_rows() -> None:
    scores = np.array([[-np.inf, 0.2, -np.inf], [-np.inf, -np.inf, -np.inf]], dtype=np.float32)
    r, c, _ = top_k_rows(scores, np.arange(3), 2)
    assert list(zip(r.tolist(), c.tolist())) == [(0, 1)]
    r, c, _ = top_k_rows(scores[:1], np.arange(3), 10)  # k larger than the row
    assert c.tolist() == [1]


@pytest.mark.parametrize("n_cols", [5, 40, 3000])
@pytest.mark.parametrize("shuffled_ids", [False, True])
def test_top_k_rows_matches_a_full_sort(n_cols: int, shuffled_ids: bool) -> None:
    """The sampled-bound selection is exact: heavy ties, excluded entries, NaN and rows with few candidates."""
    rng = np.random.default_rng(n_cols)
    scores = rng.integers(0, 6, size=(50, n_cols)).astype(np.float32) / 4  # many exact ties
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[3, :] = -np.inf  # no candidate at all
    scores[4, : n_cols - 2] = -np.inf  # fewer candidates than k
    scores[5, 1] = np.nan
    scores[6, :] = -0.0
    scores[6, ::2] = 0.0  # -0.0 and +0.0 tie
    ids = rng.permutation(n_cols) + 100 if shuffled_ids else np.arange(n_cols) + 100
    k = 7
    r, c, s = top_k_rows(scores, ids, k)
    want_r, want_id, want_s = [], [], []
    for i in range(scores.shape[0]):
        cand = sorted((-float(v), int(ids[j])) for j, v in enumerate(scores[i]) if v > -np.inf)[:k]
        want_r += [i] * len(cand)
        want_id += [j for _, j in cand]
        want_s += [-v for v, _ in cand]
    assert r.tolist() == want_r
    assert ids[c].tolist() == want_id
    assert s.tolist() == want_s


def test_score_block_chunks_and_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    import recsys_spark.kernels.blocked_topk as bt

    monkeypatch.setattr(bt, "_SCORE_BUFFER", 7)  # forces many small row chunks
    rng = np.random.default_rng(1)
    q, t = rng.normal(size=(9, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    ex = {(0, 1), (3, 0), (3, 5), (8, 2)}
    r, c, s = score_block(q, t, np.arange(6), 3, np.array([a for a, _ in ex]), np.array([b for _, b in ex]))
    got: dict[int, list] = {}
    for a, b, v in zip(r, c, s):
        got.setdefault(int(a), []).append((int(b), float(v)))
    _assert_same(got, brute_force(q, t, 3, ex))


def _frames(spark: SparkSession, q: np.ndarray, t: np.ndarray) -> tuple[DataFrame, DataFrame]:
    qdf = spark.createDataFrame([(i, v.tolist()) for i, v in enumerate(q)], "query INT, vector ARRAY<FLOAT>")
    tdf = spark.createDataFrame([(i, v.tolist()) for i, v in enumerate(t)], "target INT, vector ARRAY<FLOAT>")
    return qdf, tdf


def _collect(df: DataFrame) -> dict[int, list[tuple[int, float]]]:
    got: dict[int, list[tuple[int, float, int]]] = {}
    for row in df.collect():
        got.setdefault(row.query, []).append((row.rank, row.target, row.score))
    out = {}
    for qid, rows in got.items():
        rows.sort()
        assert [rk for rk, _, _ in rows] == list(range(1, len(rows) + 1))  # ranks are 1..n without gaps
        out[qid] = [(tid, s) for _, tid, s in rows]
    return out


@pytest.mark.parametrize(
    "shape",
    [BlockShape(1000, 1000), BlockShape(7, 1000), BlockShape(16, 11), BlockShape(5, 3)],
    ids=["one-cell", "query-blocks", "both", "tiny"],
)
def test_blocked_equals_brute_force_with_seen_items(spark: SparkSession, shape: BlockShape) -> None:
    rng = np.random.default_rng(7)
    q = rng.normal(size=(40, 6)).astype(np.float32)
    t = rng.normal(size=(37, 6)).astype(np.float32)
    seen = {(int(a), int(b)) for a, b in zip(rng.integers(0, 40, 300), rng.integers(0, 37, 300))}
    seen |= {(5, j) for j in range(37)}  # a user who has seen everything gets nothing
    seen |= {(6, j) for j in range(33)}  # ... and one with only four unseen items gets those four
    qdf, tdf = _frames(spark, q, t)
    ex = spark.createDataFrame(sorted(seen), "query INT, target INT")
    got = _collect(blocked_top_k(qdf, tdf, 10, exclude=ex, shape=shape))
    want = brute_force(q, t, 10, seen)
    _assert_same(got, want)
    assert 5 not in got and len(got[6]) == 4
    assert not any((qid, tid) in seen for qid, rows in got.items() for tid, _ in rows)


def test_blocked_min_score_and_exact_ties(spark: SparkSession) -> None:
    # integer-valued vectors give exact ties; the lower target id must win them across blocks
    q = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    t = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    qdf, tdf = _frames(spark, q, t)
    got = _collect(blocked_top_k(qdf, tdf, 3, shape=BlockShape(2, 2)))
    assert [tid for tid, _ in got[0]] == [0, 1, 3]
    assert [tid for tid, _ in got[1]] == [2, 4, 5]
    assert [tid for tid, _ in got[2]][:1] == [5]
    got = _collect(blocked_top_k(qdf, tdf, 3, shape=BlockShape(2, 2), min_score=1.5))
    assert got == {2: [(5, 2.0)]}


def test_blocked_top_k_empty_inputs(spark: SparkSession) -> None:
    qdf, tdf = _frames(spark, np.ones((2, 3), dtype=np.float32), np.ones((2, 3), dtype=np.float32))
    assert blocked_top_k(qdf.limit(0), tdf, 5).count() == 0
