"""The evaluation metrics on the driver, in numpy: twins of :mod:`recsys_spark.evaluation.metrics`
for lists small enough to collect.

Why: the Spark SQL metrics run about twenty jobs per scored list (windows, cross joins against the
cut-offs, a window over the whole exposure per k), and on 2 cores scoring one strategy's lists for
the demo's 5,000 evaluated users (500k rows) took 15-20 s, nearly all of it scheduling. The demo
scores five lists (three strategies, two baselines), so the metrics were about 60 of its
evaluation's 95 s. Collected as Arrow (three int columns: 6 MB) the same lists are scored here in
well under a second. The Spark path stays for lists above :data:`MAX_DRIVER_ROWS`, the scale at
which collecting stops being cheap.

The definitions are those of :mod:`recsys_spark.evaluation.metrics`, whose docstring states them
once; ``tests/test_metrics.py`` runs every hand-computed case, edge case and randomised reference
check against both paths, and the rows come back in the same order with the same ``users`` counts.
Intra-list diversity is summed in chunks of users, so its memory is bounded by
:data:`_ILD_CHUNK_ROWS` rows of factors whatever the list size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from recsys_spark.evaluation.metrics import CATALOG_METRICS, GRADED_METRICS, RANKING_METRICS, cutoffs
from recsys_spark.kernels.selection import ranks_in_runs, run_starts

log = logging.getLogger(__name__)

__all__ = [
    "LOCAL_METRICS",
    "MAX_DRIVER_FACTOR_ITEMS",
    "MAX_DRIVER_ROWS",
    "MetricRow",
    "catalog_rows",
    "catalog_rows_from_arrow",
    "ranking_metric",
    "ranking_rows",
    "ranking_rows_from_arrow",
]

#: List (or truth) rows the driver scores; above it the Spark SQL metrics run. About 17 bytes a
#: row collected, a few copies while sorting: 20M rows stay under 2 GB of driver memory.
MAX_DRIVER_ROWS = 20_000_000

#: Listed items whose factors the driver takes for intra-list diversity (1M at rank 128: 1 GB of doubles).
MAX_DRIVER_FACTOR_ITEMS = 1_000_000

#: Binary-relevance metrics :func:`ranking_metric` scores one at a time (the blend search's trials).
LOCAL_METRICS = ("ndcg", "precision", "recall", "hit_rate", "mrr", "map")

#: Rows of factors gathered at once for intra-list diversity (at rank 128: 128 MB of doubles).
_ILD_CHUNK_ROWS = 1 << 17

MetricRow = tuple[str, int, float, int]
"""(metric, k, value, users), as the Spark metric frames' rows."""


def _keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    return (users.astype(np.int64) << 32) | items.astype(np.int64)


def _discount(rank: np.ndarray) -> np.ndarray:
    """1 / log2(rank + 1)."""
    return 1.0 / np.log2(rank.astype(np.float64) + 1.0)


def _best_ranks(
    users: np.ndarray, items: np.ndarray, ranks: np.ndarray, max_k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, rank) with each listed item once at its best rank, ranks beyond ``max_k`` dropped,
    sorted by user, then rank, then item."""
    keep = ranks <= max_k
    u, i, r = users[keep].astype(np.int64), items[keep].astype(np.int64), ranks[keep].astype(np.int64)
    order = np.lexsort((r, _keys(u, i)))
    u, i, r = u[order], i[order], r[order]
    first = np.r_[True, (u[1:] != u[:-1]) | (i[1:] != i[:-1])] if len(u) else np.empty(0, dtype=bool)
    u, i, r = u[first], i[first], r[first]
    order = np.lexsort((i, r, u))
    return u[order], i[order], r[order]


def ranking_rows(
    users: np.ndarray,
    items: np.ndarray,
    ranks: np.ndarray,
    truth_users: np.ndarray,
    truth_items: np.ndarray,
    truth_grades: np.ndarray | None,
    ks: Sequence[int],
    *,
    graded: bool = False,
) -> list[MetricRow]:
    """:func:`recsys_spark.evaluation.metrics.ranking_metrics` on arrays: every ranking metric at
    every cut-off, averaged over the truth users, ordered by metric then k (no rows without truth).

    Args:
        users, items, ranks: the lists, rank 1 = best.
        truth_users, truth_items, truth_grades: the relevant held-out pairs; a NaN grade (a null)
            counts as 0, a pair listed twice counts once at its highest grade. ``truth_grades``
            may be None when ``graded`` is not set.
    """
    ks_list = cutoffs(ks)
    max_k = ks_list[-1]
    grades = np.zeros(len(truth_users)) if truth_grades is None else np.nan_to_num(truth_grades.astype(np.float64))
    rel = _keys(truth_users, truth_items)
    order = np.lexsort((grades, rel))  # the last of each key's run has its highest grade
    rel, grades = rel[order], grades[order]
    last = np.r_[rel[1:] != rel[:-1], True] if len(rel) else np.empty(0, dtype=bool)
    rel, grades = rel[last], grades[last]
    if len(rel) == 0:
        return []
    rel_users = rel >> 32
    user_ids, n_rel = np.unique(rel_users, return_counts=True)
    n_users = len(user_ids)
    truth_row = np.searchsorted(user_ids, rel_users)

    u, i, r = _best_ranks(users, items, ranks, max_k)
    listed = _keys(u, i)
    at = np.minimum(np.searchsorted(rel, listed), len(rel) - 1)
    hit = rel[at] == listed
    row, hit_rank, hit_gain = np.searchsorted(user_ids, u[hit]), r[hit], 2.0 ** grades[at[hit]] - 1.0
    hit_no = ranks_in_runs(row)  # hits come sorted by user then rank: their number among the user's hits

    ideal = np.cumsum(_discount(np.arange(1, max_k + 1)))
    gains = 2.0**grades - 1.0
    by_gain = np.lexsort((rel, -gains, truth_row))  # the ideal list: each user's gains, largest first
    ideal_pos = ranks_in_runs(truth_row[by_gain])
    ideal_gain = gains[by_gain] * _discount(ideal_pos)

    per_metric: dict[str, list[tuple[int, float]]] = {m: [] for m in (*RANKING_METRICS, *GRADED_METRICS)}
    for k in ks_list:
        in_k = hit_rank <= k
        rows_k, rank_k = row[in_k], hit_rank[in_k]
        hits = np.bincount(rows_k, minlength=n_users).astype(np.float64)
        dcg = np.bincount(rows_k, weights=_discount(rank_k), minlength=n_users)
        first_hit = np.full(n_users, np.inf)
        np.minimum.at(first_hit, rows_k, rank_k.astype(np.float64))
        ap = np.bincount(rows_k, weights=hit_no[in_k] / rank_k, minlength=n_users)
        values = {
            "precision": hits / k,
            "recall": hits / n_rel,
            "ndcg": dcg / ideal[np.minimum(n_rel, k) - 1],
            "map": ap / np.minimum(n_rel, k),
            "mrr": np.where(np.isfinite(first_hit), 1.0 / first_hit, 0.0),
            "hit_rate": (hits > 0).astype(np.float64),
        }
        if graded:
            gdcg = np.bincount(rows_k, weights=hit_gain[in_k] * _discount(rank_k), minlength=n_users)
            igdcg = np.bincount(
                truth_row[by_gain], weights=np.where(ideal_pos <= k, ideal_gain, 0.0), minlength=n_users
            )
            # all-zero grades give IDCG 0: nothing to rank well, so such a user scores 0, not NaN
            values["ndcg_graded"] = np.divide(gdcg, igdcg, out=np.zeros(n_users), where=igdcg > 0)
        for metric, per_user in values.items():
            per_metric[metric].append((k, float(per_user.mean())))
    names = RANKING_METRICS + (GRADED_METRICS if graded else ())
    return [(m, k, v, n_users) for m in names for k, v in per_metric[m]]


def ranking_metric(
    metric: str,
    k: int,
    users: np.ndarray,
    items: np.ndarray,
    ranks: np.ndarray,
    truth_users: np.ndarray,
    truth_items: np.ndarray,
) -> float:
    """One binary-relevance metric of :data:`LOCAL_METRICS` at cut-off ``k`` (:func:`ranking_rows`'s value)."""
    if metric not in LOCAL_METRICS:
        raise ValueError(f"metric {metric!r} has no driver-side twin; known: {', '.join(LOCAL_METRICS)}")
    rows = ranking_rows(users, items, ranks, truth_users, truth_items, None, [k])
    if not rows:
        raise ValueError("no truth pairs to score against")
    return next(v for m, _, v, _ in rows if m == metric)


def _unit_factors(item_idx: np.ndarray, factors: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(sorted item indexes, their unit factors in double): zero vectors have no direction and are
    dropped, as are null ones."""
    flat = factors.combine_chunks() if isinstance(factors, pa.ChunkedArray) else factors
    valid = flat.is_valid().to_numpy(zero_copy_only=False)
    flat, item_idx = flat.filter(pa.array(valid)), item_idx[valid]
    if len(item_idx) == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, 0))
    rank = len(flat[0])
    values = flat.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(item_idx), rank)
    norms = np.linalg.norm(values, axis=1)
    keep = norms > 0
    idx, unit = item_idx[keep].astype(np.int64), values[keep] / norms[keep, None]
    order = np.argsort(idx, kind="stable")
    return idx[order], unit[order]


def _ild_rows(
    u: np.ndarray, i: np.ndarray, r: np.ndarray, factor_items: np.ndarray, unit: np.ndarray, ks: list[int]
) -> list[MetricRow]:
    """Mean ILD per k over users with at least 2 items with factors in their top-k (rows sorted by user, rank)."""
    at = np.minimum(np.searchsorted(factor_items, i), max(len(factor_items) - 1, 0))
    known = (factor_items[at] == i) if len(factor_items) else np.zeros(len(i), dtype=bool)
    u, r, vec = u[known], r[known], at[known]
    sums = {k: 0.0 for k in ks}
    counts = {k: 0 for k in ks}
    starts = run_starts(u)
    bounds = np.r_[starts, len(u)]
    lo = 0
    while lo < len(starts):  # chunks of whole users
        hi = max(lo + 1, int(np.searchsorted(bounds, bounds[lo] + _ILD_CHUNK_ROWS, side="right")) - 1)
        hi = min(hi, len(starts))
        a, b = bounds[lo], bounds[hi]
        local_starts = starts[lo:hi] - a
        vectors, rank = unit[vec[a:b]], r[a:b]
        for k in ks:
            inside = (rank <= k).astype(np.float64)
            m = np.add.reduceat(inside, local_starts)
            s = np.add.reduceat(vectors * inside[:, None], local_starts, axis=0)
            ok = m >= 2
            s2 = np.einsum("ij,ij->i", s[ok], s[ok])
            mm = m[ok]
            sums[k] += float(np.sum(1.0 - (s2 - mm) / (mm * (mm - 1.0))))
            counts[k] += int(ok.sum())
        lo = hi
    return [("ild", k, sums[k] / counts[k], counts[k]) for k in ks if counts[k]]


def catalog_rows(
    users: np.ndarray,
    items: np.ndarray,
    ranks: np.ndarray,
    ks: Sequence[int],
    *,
    n_items: int,
    popularity_items: np.ndarray,
    popularity_users: np.ndarray,
    n_users: int,
    factor_items: np.ndarray | None = None,
    factors: pa.ChunkedArray | pa.Array | None = None,
) -> list[MetricRow]:
    """:func:`recsys_spark.evaluation.metrics.catalog_metrics` on arrays: coverage, Gini, novelty and
    (with factors) intra-list diversity per cut-off, ordered by metric then k.

    Args:
        popularity_items, popularity_users: distinct training users per item (an item absent has 0).
        factor_items, factors: (item_idx, factors) for ILD.
    """
    ks_list = cutoffs(ks)
    if n_items < 1 or n_users < 1:
        raise ValueError(f"n_items and n_users must be positive, got {n_items} and {n_users}")
    u, i, r = _best_ranks(users, items, ranks, ks_list[-1])
    n = float(n_items)
    default_info = -np.log2(1.0 / n_users)  # unknown item: popularity 0, treated as 1
    pop_order = np.argsort(popularity_items, kind="stable")
    pop_items, pop_users = popularity_items[pop_order].astype(np.int64), popularity_users[pop_order]
    rows: dict[str, list[MetricRow]] = {m: [] for m in CATALOG_METRICS}
    for k in ks_list:
        in_k = r <= k
        listed_users = len(np.unique(u[in_k]))
        exposed, c = np.unique(i[in_k], return_counts=True)
        rows["coverage"].append(("coverage", k, len(exposed) / n, listed_users))
        if len(exposed) == 0:
            continue
        m = len(exposed)
        c_sorted = np.sort(c).astype(np.float64)
        place = n - m + np.arange(1, m + 1)
        total = c_sorted.sum()
        rows["gini"].append(("gini", k, float(np.sum((2.0 * place - n - 1.0) * c_sorted) / (n * total)), listed_users))
        at = np.minimum(np.searchsorted(pop_items, exposed), max(len(pop_items) - 1, 0))
        found = (pop_items[at] == exposed) if len(pop_items) else np.zeros(m, dtype=bool)
        pop = np.where(found, pop_users[at] if len(pop_items) else 0, 0).astype(np.float64)
        info = np.where(found, -np.log2(np.maximum(pop, 1.0) / n_users), default_info)
        rows["novelty"].append(("novelty", k, float(np.sum(c * info) / total), listed_users))
    if factor_items is not None and factors is not None:
        f_items, unit = _unit_factors(np.asarray(factor_items), factors)
        rows["ild"] = _ild_rows(u, i, r, f_items, unit, ks_list)
    return [row for m in CATALOG_METRICS for row in rows[m]]


def _ints(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy(zero_copy_only=False)


def ranking_rows_from_arrow(lists: pa.Table, truth: pa.Table, ks: Sequence[int], *, graded: bool) -> list[MetricRow]:
    """:func:`ranking_rows` of collected (user_idx, item_idx, rank) lists and (user_idx, item_idx,
    grade) truth; a null grade counts as 0."""
    grades = truth.column("grade").cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    return ranking_rows(
        *(_ints(lists, c) for c in ("user_idx", "item_idx", "rank")),
        _ints(truth, "user_idx"),
        _ints(truth, "item_idx"),
        grades,
        ks,
        graded=graded,
    )


def catalog_rows_from_arrow(
    lists: pa.Table,
    ks: Sequence[int],
    *,
    n_items: int,
    popularity: pa.Table,
    n_users: int,
    factors: pa.Table | None = None,
) -> list[MetricRow]:
    """:func:`catalog_rows` of collected (user_idx, item_idx, rank) lists, (item_idx, users)
    popularity and, for ILD, (item_idx, factors)."""
    return catalog_rows(
        *(_ints(lists, c) for c in ("user_idx", "item_idx", "rank")),
        ks,
        n_items=n_items,
        popularity_items=_ints(popularity, "item_idx"),
        popularity_users=_ints(popularity, "users"),
        n_users=n_users,
        factor_items=None if factors is None else _ints(factors, "item_idx"),
        factors=None if factors is None else factors.column("factors"),
    )
