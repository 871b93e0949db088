"""EASE item weights (Steck 2019) as item neighbours (DataFrame in, DataFrame out).

EASE fits every item as a ridge regression on all the others, in closed form:

    G = X'X,   P = (G + l2 I)^-1,   B = I - P diag(1 / diag(P)),   diag(B) = 0,

X the users x items matrix of entries r = the pair's confidence after ``similarity.ease.confidence``
(histories capped at ``similarity.max_user_items`` strongest items, as for cosine). A user's
score for item j is sum_i x_ui B[i, j], which is exactly what the neighbour votes compute
(candidates/neighbor_votes.py) when row i of the table lists B[i, j] and votes are weighted by the same r.

Design, and why:

* **The Gram in Spark, on the cosine's block-sparse kernel.** G is the cells' Q'T, so each
  (query block, target block) task multiplies its columns with scipy and emits the cell's entries.
  G is symmetric, so only the upper triangle is formed (``CellGrid.upper``: cells wholly below the
  diagonal never exist, the others skip their lower part) and the driver mirrors it.
* **One dense matrix on the driver, factored and inverted in place.** The Gram is collected into
  an n x n float64 array; LAPACK's Cholesky factorisation (dpotrf) and inverse from the factor
  (dpotri) overwrite it, the mirror and the column scaling that make B run in place too, so the
  solve holds one matrix (8 n^2 bytes) where ``np.linalg.inv`` holds three (its input, a copy it
  factors and the identity it solves into), and the Cholesky inverse does half the LU inverse's
  flops (n^3 against 2 n^3).
* **Memory is estimated before anything is computed** (:func:`ease_memory`, logged) and a
  catalogue above ``similarity.ease.max_items`` is a ConfigError: no Spark work is spent on a fit
  the driver cannot hold. Beyond a dense solve the known route is a sparse approximate inverse
  (SANSA, Spisak et al., RecSys 2023), not implemented here.
* **The Gram arrives in bounded pieces.** The entries are persisted in Spark and collected in
  chunks of at most ``_COLLECT_BYTES``, so neither spark.driver.maxResultSize (1 GiB by default)
  nor an Arrow copy of the whole Gram beside the dense matrix limits the catalogue.
* **Rows are pruned to the largest |weight|**, not the largest weight: negative weights lower a
  candidate's score, and on ML-100K keeping each item's 400 largest positive weights costs 0.012
  NDCG@10 where the 400 largest by |w| cost 0.001. Selection is exact (ties to the lower item id);
  exact zeros (items the regression never relates) are not neighbours.
* **Or the budget is spent over all of B** (``similarity.ease.prune = "global"``): the n x top_n
  entries largest in |B| anywhere, so the table is as big but rows differ in length. A score sums
  a history's rows; a per-item quota keeps weak weights of items with few strong associations and
  drops strong ones of items with many. On ml-latest-small (numpy EASE, linear, l2 3000) keeping
  2,000 per item cost 1.1% of the unpruned NDCG@10 and 2,000 per item on average globally 0.1%
  (at 500: 2.2% and 0.6%). The threshold is found exactly in two passes over B without a copy
  (:func:`largest_abs_overall`).
* **Or on what a weight does to the scores** (``prune = "score"``): the same global budget, spent
  on the weights largest in |B_ij| * ||X_i||, ||X_i|| = sqrt(G_ii) the norm of item i's column.
  Dropping B_ij changes the training scores XB by x_ui * B_ij for each user u of i, a squared
  change of G_ii * B_ij^2 in all, so this keeps the weights whose loss moves the users' scores
  most, where "global" treats a weight of a rarely seen item like one of a hit. On ml-latest-small
  (linear, l2 3000, random 20% per user; ``docs/examples/ease_variants.py prune``) 500 weights per
  item on average scored NDCG@10 0.3361 this way against 0.3338 globally and 0.3353 unpruned, a
  quarter of the table at the unpruned model's quality; at 2,000 both scored 0.3349.
* **Ranked by signed weight**, highest first: the kept set is what the scores need, the order is
  what a similar-items lookup shows (``rank <= k``), where rank 1 must be the strongest positive
  association and a negative weight, "users of i are less likely to want j", comes last.
* **A search over l2 keeps the Gram** (:class:`EaseGrams`): every l2 of one transform solves the
  same X'X, so a search computes and collects it once per transform and solves a copy per trial,
  without the co-occurrence counts that only the written table needs.
* **cooccurrence** is the Gram's count of users who have both items (0 for a kept pair nobody
  shares: the inverse relates items the Gram does not), looked up for the kept pairs only in the
  persisted Gram entries, so no count matrix is held beside the dense one.

``similarity.ease`` has no ``min_similarity``: B's weights are regression coefficients, of either
sign and no fixed scale, so a similarity floor has no meaning for them; ``top_n`` is the pruning.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.linalg import lapack

from recsys_spark.config.schema import EasePrune, SimilarityConfig
from recsys_spark.errors import ConfigError
from recsys_spark.kernels.cells import (
    RESULT_SCHEMA,
    CellGrid,
    block_products,
    cell_grid,
    cooccurrence_counts,
    cross_products,
    decode_cell,
    product_entries,
    ranked_neighbors,
)
from recsys_spark.models.ratings import cap_user_history, positive_ratings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

GRAM_SCHEMA = "item_idx INT, other_idx INT, gram DOUBLE, cooccurrence LONG"

#: Bytes of Gram entries per collect (int32 + int32 + float64 each): far below
#: spark.driver.maxResultSize's default 1 GiB, and a small buffer beside the dense matrix.
_COLLECT_BYTES = 1 << 27
_GRAM_ENTRY_BYTES = 16
#: Entries per buffer while pruning rows (float64: 16 MiB; a few such buffers are live at once).
_ROW_BUFFER = 1 << 21
#: Driver bytes per kept weight before it becomes a DataFrame (the arrays and their Arrow copy).
_KEPT_ROW_BYTES = 64
#: |w| buckets: the top bits of a float64 with its sign cleared (11 exponent and 8 mantissa bits)
#: order as the values do, so a bucket is 1/256 of a binade and counting them is one bincount.
_BUCKET_SHIFT = 44
#: Rows mirrored at once (the copy is a strided transpose; blocks keep it cache-friendly).
_MIRROR_BLOCK = 512

_GB = 1e9


@dataclass(frozen=True)
class EaseMemory:
    """What the EASE solve holds on the driver (the Python process, outside the JVM heap)."""

    items: int
    matrix_bytes: int
    """The dense n x n float64 Gram, factored, inverted and turned into B in place."""
    kept_bytes: int
    """The pruned weights (n x top_n at most) until they become a DataFrame."""
    buffer_bytes: int
    """One collected chunk of Gram entries, or a few blocks of rows being pruned."""

    @property
    def total_bytes(self) -> int:
        return self.matrix_bytes + self.kept_bytes + self.buffer_bytes

    def __str__(self) -> str:
        return (
            f"{self.total_bytes / _GB:.2f} GB on the driver (one {self.items:,} x {self.items:,} float64 matrix "
            f"{self.matrix_bytes / _GB:.2f} GB, kept weights {self.kept_bytes / _GB:.2f} GB, buffers "
            f"{self.buffer_bytes / _GB:.2f} GB)"
        )


def ease_memory(n_items: int, top_n: int) -> EaseMemory:
    """The driver memory an EASE fit of ``n_items`` items keeping ``top_n`` weights per item needs."""
    kept = n_items * min(top_n, max(n_items - 1, 0))
    buffers = max(_COLLECT_BYTES, 4 * 8 * _ROW_BUFFER)
    return EaseMemory(n_items, 8 * n_items * n_items, _KEPT_ROW_BYTES * kept, buffers)


@dataclass
class EaseFit:
    """An EASE fit: its neighbour frame and what the fit measured (counts, seconds per phase)."""

    neighbors: DataFrame
    """(item_idx, neighbor_idx, similarity, rank, cooccurrence): row i lists B[i, j]."""
    items: int
    gram_entries: int
    """Entries of the Gram's upper triangle (diagonal included) that are non-zero."""
    memory: EaseMemory
    seconds: dict[str, float] = field(default_factory=dict)
    """gram (the Spark job), collect, solve, prune, cooccurrence."""


def item_ease(matrix: DataFrame, params: SimilarityConfig) -> DataFrame:
    """Every item's ``top_n_of("ease")`` EASE weights largest in absolute value.

    Args:
        matrix: (user_idx, item_idx, confidence) rows, one per pair (the interaction_matrix table).

    Returns:
        (item_idx, neighbor_idx, similarity, rank, cooccurrence): similarity = B[item, neighbour];
        rank 1.. by weight desc, then neighbor_idx asc.

    Raises:
        ConfigError: the catalogue has more than ``similarity.ease.max_items`` items.
    """
    return fit_ease(matrix, params).neighbors


def fit_ease(matrix: DataFrame, params: SimilarityConfig, grams: EaseGrams | None = None) -> EaseFit:
    """:func:`item_ease`, with the fit's counts and timings (for logs and the benchmark).

    With ``grams`` (a search over l2), the Gram comes from its cache and the frame carries no
    co-occurrence counts (null): see :class:`EaseGrams`.
    """
    if grams is not None:
        return grams.fit(params)
    spark = matrix.sparkSession
    own, top_n = params.ease, params.top_n_of("ease")
    ratings = positive_ratings(matrix, own.confidence, own.epsilon)
    items, memory = _catalog(ratings, params)
    if len(items) == 0:
        return EaseFit(spark.createDataFrame([], RESULT_SCHEMA), 0, 0, memory)
    gram, grid = _spark_gram(ratings, params, items)
    seconds: dict[str, float] = {}
    try:
        entries, weights = _collected(gram, items, grid, seconds)
        norms = np.sqrt(np.diag(weights)) if own.prune == "score" else None  # before the solve overwrites G
        rows, cols, kept = _solved_and_pruned(weights, own.l2, top_n, own.prune, seconds, norms)
        del weights  # the n x n matrix goes before Spark is asked for anything more
        start = time.perf_counter()
        neighbors = _ranked_with_cooccurrence(
            spark, gram, items[rows], items[cols], kept, _row_limit(top_n, own.prune, len(items)), grid.n_items
        )
        seconds["cooccurrence"] = time.perf_counter() - start
    finally:
        gram.unpersist()
    return EaseFit(neighbors, len(items), entries, memory, seconds)


class EaseGrams:
    """The Gram of one matrix kept on the driver between the trials of a search over l2.

    Each trial of a grid over l2 with the same transform solves the same Gram, so the Gram is
    computed in Spark and collected once per transform, and each trial solves a copy of it. Trials
    carry no co-occurrence counts (they are never written; the served fit has them). On
    ml-latest-small's validation carve-out (9,370 items) an EASE fit took 110 s: Gram 22 s, collect
    13 s, solve 29 s, prune 2 s, co-occurrence and frame 44 s. A trial from the cache is the
    copy, the solve, the prune and the frame.

    The cache holds one Gram (the last transform asked for) and one solved B (the last l2 asked
    for): two dense matrices on the driver during a search, where a fit holds one. A trial that
    only changes top_n or prune (``tuning.ease_top_n``, ``tuning.ease_prune``) re-prunes the kept B
    and solves nothing.
    """

    def __init__(self, matrix: DataFrame) -> None:
        self.matrix = matrix
        self._key: tuple[Any, ...] | None = None
        self._items = np.empty(0, dtype=np.int64)
        self._upper: np.ndarray | None = None
        self._entries = 0
        self._solved: tuple[float, np.ndarray] | None = None  # (l2, B) of the last trial

    def fit(self, params: SimilarityConfig) -> EaseFit:
        spark = self.matrix.sparkSession
        own, top_n = params.ease, params.top_n_of("ease")
        seconds: dict[str, float] = {}
        key = (own.confidence, own.epsilon, params.max_user_items, params.block_items)
        if key != self._key:
            self.release()
            ratings = positive_ratings(self.matrix, own.confidence, own.epsilon)
            items, memory = _catalog(ratings, params)
            if len(items):
                log.info(
                    "EASE search: the Gram stays on the driver between trials, a second matrix of %.2f GB",
                    memory.matrix_bytes / _GB,
                )
                gram, grid = _spark_gram(ratings, params, items)
                try:
                    self._entries, self._upper = _collected(gram, items, grid, seconds)
                finally:
                    gram.unpersist()
            self._key, self._items = key, items
        memory = ease_memory(len(self._items), top_n)
        if self._upper is None:
            return EaseFit(spark.createDataFrame([], RESULT_SCHEMA), 0, 0, memory)
        if self._solved is None or self._solved[0] != own.l2:
            self._solved = None  # the old B goes before the copy: two dense matrices at most
            start = time.perf_counter()
            weights = self._upper.copy()
            seconds["copy"] = time.perf_counter() - start
            _solve(weights, own.l2, seconds)
            self._solved = (own.l2, weights)
        norms = np.sqrt(np.diag(self._upper)) if own.prune == "score" else None
        rows, cols, kept = _pruned(self._solved[1], top_n, own.prune, seconds, norms)
        items = self._items
        ranked = ranked_neighbors(
            np.zeros(len(rows), np.int32),
            items[rows],
            items[cols],
            kept,
            np.zeros(len(rows)),
            _row_limit(top_n, own.prune, len(items)),
            with_block=False,
        )
        neighbors = spark.createDataFrame(ranked, RESULT_SCHEMA).withColumn("cooccurrence", F.lit(None).cast("long"))
        return EaseFit(neighbors, len(items), self._entries, memory, seconds)

    def release(self) -> None:
        self._key, self._upper, self._entries, self._solved = None, None, 0, None


def _catalog(ratings: DataFrame, params: SimilarityConfig) -> tuple[np.ndarray, EaseMemory]:
    """The item ids (ascending) of ``positive_ratings`` rows and the solve's memory, logged and
    checked against max_items."""
    own, top_n = params.ease, params.top_n_of("ease")
    items = np.sort(ratings.select("item_idx").distinct().toArrow().column("item_idx").to_numpy()).astype(np.int64)
    memory = ease_memory(len(items), top_n)
    if len(items):
        log.info(
            "EASE: %d items, %s confidence, l2 %g, top %d by |weight| (%s), histories capped at %d; the solve needs %s",
            len(items),
            own.confidence,
            own.l2,
            top_n,
            _PRUNE_WORDS[own.prune],
            params.max_user_items,
            memory,
        )
        check_ease_size(memory, own.max_items)
    return items, memory


def _spark_gram(ratings: DataFrame, params: SimilarityConfig, items: np.ndarray) -> tuple[DataFrame, CellGrid]:
    """The Gram of ``positive_ratings`` rows: its upper-triangle entries as a persisted DataFrame
    (the caller unpersists), and its grid."""
    spark = ratings.sparkSession
    grid = cell_grid(int(items[-1]) + 1, params.block_items, spark.sparkContext.defaultParallelism, upper=True)
    capped = cap_user_history(ratings, params.max_user_items, "r")
    values = capped.select("user_idx", "item_idx", F.col("r").alias("q"), F.col("r").alias("t"))
    return block_products(values, grid, _gram_cell, GRAM_SCHEMA).persist(StorageLevel.MEMORY_AND_DISK), grid


def _collected(gram: DataFrame, items: np.ndarray, grid: CellGrid, seconds: dict[str, float]) -> tuple[int, np.ndarray]:
    """(entries, the dense upper-triangle Gram): runs the Spark job, then collects it."""
    start = time.perf_counter()
    entries = gram.count()
    seconds["gram"] = time.perf_counter() - start
    log.info(
        "EASE: Gram X'X in Spark: %d non-zero entries in the upper triangle (%.1f%% of it), %s; %.1f s",
        entries,
        100 * entries / (len(items) * (len(items) + 1) / 2),
        grid,
        seconds["gram"],
    )
    start = time.perf_counter()
    dense = dense_gram(gram, items, entries)
    seconds["collect"] = time.perf_counter() - start
    return entries, dense


def _solved_and_pruned(
    weights: np.ndarray,
    l2: float,
    top_n: int,
    prune: EasePrune,
    seconds: dict[str, float],
    norms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, weights) of B's entries kept by :func:`_pruned`; ``weights`` is overwritten."""
    _solve(weights, l2, seconds)
    return _pruned(weights, top_n, prune, seconds, norms)


def _solve(weights: np.ndarray, l2: float, seconds: dict[str, float]) -> None:
    """B from the Gram's upper triangle in ``weights``, in place, on every core."""
    start = time.perf_counter()
    with solver_threads():
        ease_weights_in_place(weights, l2)
    seconds["solve"] = time.perf_counter() - start
    log.info("EASE: solved in %.1f s (collect %.1f s)", seconds["solve"], seconds.get("collect", 0.0))


_PRUNE_WORDS = {
    "item": "per item",
    "global": "per item on average, over all of B",
    "score": "per item on average, over all of B by |weight| x the item's norm",
}


def _pruned(
    weights: np.ndarray,
    top_n: int,
    prune: EasePrune,
    seconds: dict[str, float],
    norms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, weights) of the |B| entries kept: each row's ``top_n`` largest (prune "item"),
    the n x ``top_n`` largest of all (prune "global"), or of all |B_ij| * norms[i] (prune "score",
    ``norms`` the columns' norms sqrt(diag(G))); ``weights`` is read only."""
    start = time.perf_counter()
    n = len(weights)
    if prune in ("global", "score"):
        if prune == "score" and norms is None:
            raise ValueError('prune = "score" needs the items\' norms sqrt(diag(G))')
        rows, cols = largest_abs_overall(weights, n * min(top_n, max(n - 1, 0)), norms if prune == "score" else None)
    else:
        rows, cols = largest_abs_per_row(weights, top_n)
    kept = weights[rows, cols]
    seconds["prune"] = time.perf_counter() - start
    lengths = np.bincount(rows, minlength=n) if n else np.zeros(1, np.int64)
    log.info(
        "EASE: %d weights kept (%d negative, top %d per item%s; %d to %d per item) in %.1f s",
        len(kept),
        int((kept < 0).sum()),
        top_n,
        "" if prune == "item" else " on average, over all of B",
        int(lengths.min()),
        int(lengths.max()),
        seconds["prune"],
    )
    return rows, cols, kept


def solver_threads() -> contextlib.AbstractContextManager[Any]:
    """A context in which the driver's BLAS runs on every core this process may use.

    The session sets OPENBLAS_NUM_THREADS=1 so that each Spark task's BLAS keeps to its core, and a
    local driver inherits it when numpy loads after the session starts. No task runs while the
    driver solves (the Gram is collected by then), so the solve takes the cores back.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.info("EASE: threadpoolctl is not installed, so the solve uses the BLAS threads the driver started with")
        return contextlib.nullcontext()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return threadpool_limits(limits=cores, user_api="blas")


def check_ease_size(memory: EaseMemory, max_items: int) -> None:
    """ConfigError when the catalogue exceeds ``similarity.ease.max_items``."""
    if memory.items <= max_items:
        return
    raise ConfigError(
        f"similarity.method = 'ease' solves densely on the driver, and the interaction matrix has {memory.items:,} "
        f"items, more than similarity.ease.max_items = {max_items:,}: the solve would need {memory}. Raise "
        "similarity.ease.max_items if the driver machine has that memory (it is held by the Python driver, not "
        "by the JVM heap that spark.driver.memory sizes), or use similarity.method = 'rp3beta' or 'cosine'. "
        "Beyond a dense solve, the known route is a sparse approximate inverse (SANSA, Spisak et al., RecSys 2023)."
    )


def _gram_cell(table: pa.Table, cell_of: dict[int, int], n_tb: int) -> pa.Table:
    """One cell's entries of G = X'X with item <= other (the upper triangle), and their user counts."""
    cell = decode_cell(table, cell_of, n_tb)
    if cell is None:
        none = np.empty(0, dtype=np.int64)
        return _gram_table(none, none, np.empty(0), np.empty(0))
    products = cross_products(cell.queries, cell.targets)
    counts = cooccurrence_counts(cell, products)
    rows, cols = product_entries(cell, products)
    src, dst = cell.query_ids[rows], cell.target_ids[cols]
    upper = src <= dst  # the grid already left out pairs below the query block; this drops the rest
    return _gram_table(src[upper], dst[upper], products.data[upper], counts[upper])


def _gram_table(src: np.ndarray, dst: np.ndarray, gram: np.ndarray, counts: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "item_idx": pa.array(src.astype(np.int32)),
            "other_idx": pa.array(dst.astype(np.int32)),
            "gram": pa.array(gram.astype(np.float64)),
            "cooccurrence": pa.array(np.rint(counts).astype(np.int64)),
        }
    )


def dense_gram(gram: DataFrame, items: np.ndarray, entries: int) -> np.ndarray:
    """The Gram's upper-triangle entries collected into the upper triangle of a dense n x n float64 matrix.

    The lower triangle is left 0: the solve reads one triangle. Mirroring entries here instead
    wrote every second one a row apart (a cache and TLB miss each): 15 s of scattering for the demo
    catalogue's 9.6M entries, where the upper triangle alone is written row by row as the cells list it.

    Args:
        gram: (item_idx, other_idx, gram) entries with item_idx <= other_idx (persisted: it is
            read once per chunk).
        items: the catalogue's item ids, ascending; matrix row/column k is item ``items[k]``.
        entries: how many rows ``gram`` has.
    """
    n = len(items)
    dense = np.zeros((n, n))
    flat = dense.reshape(-1)  # a view: C order
    dense_ids = items[-1] == n - 1  # ids 0..n-1 (ingest's usual ones): an id is its own position
    for lo, hi in _collect_ranges(gram, entries):
        part = gram.where(F.col("item_idx").between(lo, hi)) if lo is not None else gram
        table = part.select("item_idx", "other_idx", "gram").toArrow()
        i, j = (table.column(c).to_numpy().astype(np.int64) for c in ("item_idx", "other_idx"))
        if not dense_ids:
            i, j = np.searchsorted(items, i), np.searchsorted(items, j)
        flat[i * n + j] = table.column("gram").to_numpy()
        del table
    return dense


def _collect_ranges(gram: DataFrame, entries: int) -> list[tuple[int | None, int | None]]:
    """item_idx ranges [lo, hi] of at most ``_COLLECT_BYTES`` of entries each (one open range if all fit)."""
    chunks = math.ceil(entries * _GRAM_ENTRY_BYTES / _COLLECT_BYTES)
    if chunks <= 1:
        return [(None, None)]
    per_item = gram.groupBy("item_idx").count().toArrow()
    ids = per_item.column("item_idx").to_numpy()
    order = np.argsort(ids)
    ids, counts = ids[order], per_item.column("count").to_numpy()[order]
    budget = _COLLECT_BYTES // _GRAM_ENTRY_BYTES
    ranges, start, taken = [], 0, 0
    for k, c in enumerate(counts.tolist()):
        if taken and taken + c > budget:  # a single item above the budget is a chunk of its own
            ranges.append((int(ids[start]), int(ids[k - 1])))
            start, taken = k, 0
        taken += c
    ranges.append((int(ids[start]), int(ids[-1])))
    log.info("EASE: Gram collected in %d chunks of at most %d MiB", len(ranges), _COLLECT_BYTES >> 20)
    return ranges


def ease_weights_in_place(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE's B = I - P diag(1 / diag(P)), P = (G + l2 I)^-1, diagonal 0, computed in ``gram``'s memory.

    ``gram`` is a C-ordered float64 n x n matrix whose upper triangle (row <= column) holds G; its
    lower triangle is never read. It is overwritten and returned: B[i, j] is the weight of item
    i's interaction in the score of item j.
    """
    n = len(gram)
    gram.reshape(-1)[:: n + 1] += l2
    # the transpose of a C-ordered matrix is a Fortran-ordered view of the same memory, which
    # LAPACK factors and inverts without a copy; its lower triangle is gram's upper one
    factor, info = lapack.dpotrf(gram.T, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        raise ValueError(
            f"the Cholesky factorisation of G + l2 I failed (LAPACK info {info}): G + l2 I is not "
            "positive definite; is the Gram finite and l2 > 0?"
        )
    inverse, info = lapack.dpotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise ValueError(f"inverting the Cholesky factor of G + l2 I failed (LAPACK info {info})")
    if not np.shares_memory(inverse, gram):  # LAPACK worked on a copy (it should not): put it back
        gram.T[...] = inverse
    del factor, inverse
    _mirror_upper(gram)
    # B[i, j] = -P[i, j] / P[j, j]: one in-place division of every row by -diag(P)
    np.divide(gram, -np.diag(gram).copy(), out=gram)
    gram.reshape(-1)[:: n + 1] = 0.0
    return gram


def _mirror_upper(a: np.ndarray) -> None:
    """Copy the upper triangle of a square matrix onto its lower one, in place, a block of rows at a time."""
    n = len(a)
    for s in range(0, n, _MIRROR_BLOCK):
        e = min(n, s + _MIRROR_BLOCK)
        a[e:, s:e] = a[s:e, e:].T
        block = a[s:e, s:e]
        block[...] = np.triu(block) + np.triu(block, 1).T


def largest_abs_per_row(weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of each row's ``n`` entries largest in absolute value, zeros never kept.

    Exact: entries tied at a row's n-th largest |value| are kept in column order until there are n.
    Rows come in order, columns ascending within a row.
    """
    n_rows, n_cols = weights.shape
    k = min(n, n_cols)
    chunk = max(1, _ROW_BUFFER // max(n_cols, 1))
    rows, cols = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for s in range(0, n_rows, chunk):
        a = np.abs(weights[s : s + chunk])
        kth = np.partition(a, n_cols - k, axis=1)[:, n_cols - k] if k < n_cols else np.zeros(len(a))
        keep = a > kth[:, None]
        # a k-th value of 0 means the row has fewer than k non-zeros: all of them are kept above
        short = k - keep.sum(axis=1)
        tied = np.flatnonzero((short > 0) & (kth > 0))
        if len(tied):
            tie = a[tied] == kth[tied, None]
            keep[tied] |= tie & (np.cumsum(tie, axis=1) <= short[tied, None])
        r, c = np.nonzero(keep)
        rows.append(r + s)
        cols.append(c)
    return np.concatenate(rows), np.concatenate(cols)


def _row_limit(top_n: int, prune: EasePrune, n_items: int) -> int:
    """The most rows an item can keep: its quota, or under global pruning every other item."""
    return top_n if prune == "item" else max(n_items, 1)


def largest_abs_overall(
    weights: np.ndarray, count: int, row_scale: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the ``count`` entries of ``weights`` largest in absolute value, zeros never kept.

    With ``row_scale`` (non-negative, one per row), the entries largest in |value| * row_scale[row].

    Exact: entries tied at the count-th largest |value| are kept in row-major order until there
    are ``count``. Rows come in order, columns ascending within a row.

    Two passes over the rows in blocks, and no copy of the matrix: the first counts the entries of
    each |value| bucket (``_BUCKET_SHIFT``), which finds the bucket holding the count-th largest;
    the second keeps every entry above that bucket and selects exactly among the few inside it.
    """
    n_rows, n_cols = weights.shape
    chunk = max(1, _ROW_BUFFER // max(n_cols, 1))
    counts = np.zeros(1 << (63 - _BUCKET_SHIFT), np.int64)
    for s in range(0, n_rows, chunk):
        a = _scaled_abs(weights, s, chunk, row_scale)
        counts += np.bincount((a.view(np.int64) >> _BUCKET_SHIFT).ravel(), minlength=len(counts))
        counts[0] -= np.count_nonzero(a == 0)  # zeros share bucket 0 with subnormals; they are never kept
    from_top = np.cumsum(counts[::-1])
    if count <= 0 or from_top[-1] == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if count >= from_top[-1]:
        edge, need = -1, 0  # every non-zero is kept
    else:
        at = int(np.searchsorted(from_top, count))  # the first bucket from the top reaching count
        edge = len(counts) - 1 - at
        need = count - int(from_top[at] - counts[edge])
    rows, cols = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    tie_rows, tie_cols, tie_vals = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0)]
    for s in range(0, n_rows, chunk):
        a = _scaled_abs(weights, s, chunk, row_scale)
        bucket = a.view(np.int64) >> _BUCKET_SHIFT
        r, c = np.nonzero((bucket > edge) & (a != 0)) if edge < 0 else np.nonzero(bucket > edge)
        rows.append(r + s)
        cols.append(c)
        if need:
            r, c = np.nonzero((bucket == edge) & (a != 0))
            tie_rows.append(r + s)
            tie_cols.append(c)
            tie_vals.append(a[r, c])
    if need:
        tr, tc, tv = np.concatenate(tie_rows), np.concatenate(tie_cols), np.concatenate(tie_vals)
        best = np.lexsort((tc, tr, -tv))[:need]  # largest first, ties in row-major order
        rows.append(tr[best])
        cols.append(tc[best])
    r, c = np.concatenate(rows), np.concatenate(cols)
    order = np.lexsort((c, r))
    return r[order], c[order]


def _scaled_abs(weights: np.ndarray, start: int, chunk: int, row_scale: np.ndarray | None) -> np.ndarray:
    """|weights| of rows start .. start + chunk, each times its row_scale when given (a new array)."""
    a = np.abs(weights[start : start + chunk])
    if row_scale is not None:
        a *= row_scale[start : start + chunk, None]
    return a


def _ranked_with_cooccurrence(
    spark: SparkSession,
    gram: DataFrame,
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray,
    top_n: int,
    id_bound: int,
) -> DataFrame:
    """The ranked neighbour frame of the kept weights, each pair with its user count from the Gram.

    The frame is built from driver data, so it does not depend on the persisted Gram, which the
    caller releases.
    """
    counts = kept_pair_counts(spark, gram, src, dst, id_bound)
    log.info(
        "EASE: co-occurrence counts of %d kept pairs (%d shared by no user)", len(counts), int((counts == 0).sum())
    )
    ranked = ranked_neighbors(np.zeros(len(src), np.int32), src, dst, weights, counts, top_n, with_block=False)
    return spark.createDataFrame(ranked, RESULT_SCHEMA)


def kept_pair_counts(
    spark: SparkSession,
    gram: DataFrame,
    src: np.ndarray,
    dst: np.ndarray,
    id_bound: int,
) -> np.ndarray:
    """The Gram's user count of each (src, dst) pair, 0 for a pair no user shares.

    ``id_bound`` exceeds every item id of the Gram (pairs are keyed as lo * id_bound + hi).

    The sorted keys of the wanted pairs are broadcast and each task keeps the Gram entries among
    them: for 1M pairs and a 9.3M-entry Gram that took 8 s where joining the pairs with the Gram
    took 18-25 s.
    """
    if len(src) == 0:
        return np.empty(0, dtype=np.int64)
    base = int(id_bound)
    keys = np.minimum(src, dst).astype(np.int64) * base + np.maximum(src, dst)
    wanted = np.unique(keys)
    shared = spark.sparkContext.broadcast(wanted)

    def pick(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        sorted_keys = shared.value
        for batch in batches:
            k = batch.column(0).to_numpy().astype(np.int64) * base + batch.column(1).to_numpy()
            at = np.minimum(np.searchsorted(sorted_keys, k), len(sorted_keys) - 1)
            hit = sorted_keys[at] == k
            yield pa.RecordBatch.from_arrays(
                [pa.array(k[hit]), pa.array(batch.column(2).to_numpy()[hit])], names=["key", "cooccurrence"]
            )

    try:
        found = (
            gram.select("item_idx", "other_idx", "cooccurrence")
            .mapInArrow(pick, "key LONG, cooccurrence LONG")
            .toArrow()
        )
    finally:
        shared.destroy()
    found_keys = found.column("key").to_numpy()
    order = np.argsort(found_keys)
    found_keys, found_counts = found_keys[order], found.column("cooccurrence").to_numpy()[order]
    counts = np.zeros(len(keys), dtype=np.int64)
    if len(found_keys):
        at = np.minimum(np.searchsorted(found_keys, keys), len(found_keys) - 1)
        hit = found_keys[at] == keys
        counts[hit] = found_counts[at[hit]]
    return counts
