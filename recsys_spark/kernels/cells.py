"""The block-sparse cell kernel shared by every behavioural similarity method.

The item catalogue is cut into query blocks and target blocks of consecutive item ids. Each
(query block, target block) cell is one task: it receives the complete columns of both blocks,
builds them as scipy sparse matrices and multiplies Q^T T, so the work is the co-occurrences of the
cell, done by a compiled sparse kernel instead of one Spark row per co-occurring pair. Each cell
keeps its items' best ``top_n`` neighbours; with more than one target block the partial lists are
merged per query block. Query blocks are small enough that every core has a few cells; target
blocks are ``block_items`` wide, so a task holds at most one block of columns whatever the size of
the catalogue. Shuffled data is nnz x (query blocks + target blocks), never items x items.

Each entry carries one value for the query side and one for the target side, and a method's
kernel turns the cell's product into its rows: cosine (:mod:`recsys_spark.models.cosine`) uses r on
both sides and divides by the norms; EASE (:mod:`recsys_spark.models.ease`) emits the cell's Gram
entries X'X, on the upper triangle only since the Gram is symmetric; RP3beta
(:mod:`recsys_spark.models.rp3beta`) puts the two transition probabilities on the two sides and
scales the target columns by popularity.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy.sparse import csc_matrix, csr_matrix

from recsys_spark.kernels.selection import kth_largest_per_row, top_n_per_key

log = logging.getLogger(__name__)

RESULT_SCHEMA = "item_idx INT, neighbor_idx INT, similarity DOUBLE, rank INT, cooccurrence LONG"
PARTIAL_SCHEMA = "qb INT, " + RESULT_SCHEMA

#: Cells per core: enough that one slow cell does not leave the other cores idle.
_CELLS_PER_CORE = 2


# -- the block-sparse cell kernel ------------------------------------------------------------------


@dataclass(frozen=True)
class CellGrid:
    """How item ids 0..n_items-1 are cut into (query block, target block) cells, one task each."""

    n_items: int
    query_size: int
    target_size: int
    upper: bool = False
    """A symmetric product (the Gram X'X): only pairs with query item <= target item are computed,
    so cells wholly below the diagonal are never formed and the others skip their lower part."""

    @property
    def n_qb(self) -> int:
        return math.ceil(self.n_items / self.query_size)

    @property
    def n_tb(self) -> int:
        return math.ceil(self.n_items / self.target_size)

    @property
    def n_cells(self) -> int:
        return self.n_qb * self.n_tb

    def __str__(self) -> str:
        half = ", upper triangle" if self.upper else ""
        return (
            f"{self.n_items} items in {self.n_qb} query x {self.n_tb} target block(s) of "
            f"{self.query_size} x {self.target_size}{half}"
        )


def cell_grid(n_items: int, block_items: int, cores: int, upper: bool = False) -> CellGrid:
    """Target blocks ``block_items`` wide; query blocks small enough that every core has a few cells."""
    target_size = max(1, min(block_items, n_items))
    # in the upper triangle a cell's work shrinks with its query block's position: twice as many
    # cells keep the cores evenly loaded
    cells = _CELLS_PER_CORE * cores * (2 if upper else 1)
    query_size = max(1, min(target_size, math.ceil(n_items / cells)))
    return CellGrid(n_items, query_size, target_size, upper)


#: A cell's computation: (its entries as an Arrow table, partition key -> cell id, target blocks)
#: -> its result rows. Entries are (user, item, r, side, key), side 0 a query column, 1 a target one.
CellKernel = Callable[[pa.Table, Mapping[int, int], int], pa.Table]


def block_products(values: DataFrame, grid: CellGrid, kernel: CellKernel, schema: str) -> DataFrame:
    """Run ``kernel`` on every cell of ``grid``; each cell receives the complete columns of its two blocks.

    Args:
        values: (user_idx, item_idx, q, t): every non-zero with its value on the query side (q) and
            on the target side (t) of the cell product Q^T T (cosine and the Gram: both r).
        schema: the kernel's result schema (DDL).
    """
    spark = values.sparkSession
    keys = _partition_keys(spark, grid.n_cells)
    qs, ts, n_qb, n_tb = grid.query_size, grid.target_size, grid.n_qb, grid.n_tb
    qb = F.floor(F.col("item_idx") / qs).cast("int")
    tb = F.floor(F.col("item_idx") / ts).cast("int")
    if grid.upper:
        # a query item meets target items from its query block's first item on, so its cells start
        # at the target block holding that item; a target item meets the query blocks up to its own
        first_tb, last_qb = F.floor(qb * qs / ts).cast("int"), qb
    else:
        first_tb, last_qb = F.lit(0), F.lit(n_qb - 1)

    def placed(side: int, cell: Column, value: str) -> Column:
        return F.struct(F.lit(side).alias("side"), cell.cast("int").alias("cell"), F.col(value).alias("r"))

    # each entry goes to every cell whose query block, or whose target block, holds its item: one
    # explode, so the (capped) values are computed once
    placements = F.concat(
        F.transform(F.sequence(first_tb, F.lit(n_tb - 1)), lambda t: placed(0, qb * n_tb + t, "q")),
        F.transform(F.sequence(F.lit(0), last_qb), lambda q: placed(1, q * n_tb + tb, "t")),
    )
    key_of = F.array(*[F.lit(k) for k in keys])
    entries = (
        values.select(
            F.col("user_idx").cast("int").alias("user"),
            F.col("item_idx").cast("int").alias("item"),
            F.explode(placements).alias("p"),
        )
        .select(
            "user",
            "item",
            F.col("p.r").cast("double").alias("r"),
            F.col("p.side").cast("byte").alias("side"),
            F.element_at(key_of, F.col("p.cell") + 1).alias("key"),
        )
        # a fixed partition count, and keys that hash one cell to each partition: adaptive
        # execution cannot pack cells onto one core, and no two cells share a task
        .repartition(grid.n_cells, "key")
    )
    cell_of = {k: c for c, k in enumerate(keys)}

    def cell(table: pa.Table) -> pa.Table:
        return kernel(table, cell_of, n_tb)

    return entries.groupBy("key").applyInArrow(cell, schema)


def merge_partial_lists(partial: DataFrame, grid: CellGrid, top_n: int) -> DataFrame:
    """Each item's ``top_n`` best neighbours from its per-target-block lists (PARTIAL_SCHEMA rows)."""
    if grid.n_tb == 1:
        return partial.drop("qb")  # one target block: every list is complete

    def merge(table: pa.Table) -> pa.Table:
        return _merge_neighbors(table, top_n)

    return partial.groupBy("qb").applyInArrow(merge, RESULT_SCHEMA)


def _partition_keys(spark: SparkSession, n: int) -> list[int]:
    """``n`` ints whose hash partitioning into ``n`` partitions puts the i-th in partition i.

    Spark places a row in pmod(murmur3(key), n); asking Spark for the hashes of a small range finds
    such keys without re-implementing its hash.
    """
    span = 64 * n
    found: dict[int, int] = {}
    while len(found) < n:
        rows = (
            spark.range(span)
            .select(F.col("id").cast("int").alias("k"))
            .select("k", F.pmod(F.hash("k"), F.lit(n)).alias("p"))
            .groupBy("p")
            .agg(F.min("k").alias("k"))
            .collect()
        )
        found = {r.p: r.k for r in rows}
        span *= 4
    return [found[p] for p in range(n)]


def _sparse_columns(
    users: np.ndarray, items: np.ndarray, values: np.ndarray, n_users: int
) -> tuple[np.ndarray, csc_matrix]:
    """(item ids, users x items CSC matrix) of one block's entries; users already local ints."""
    ids, col = np.unique(items, return_inverse=True)
    return ids, csc_matrix((values, (users, col)), shape=(n_users, len(ids)))


def cross_products(queries: csc_matrix, targets: csc_matrix) -> csr_matrix:
    """Q^T T as CSR: entry (i, j) sums r_ui * r_uj over shared users.

    Column order within a row depends only on the operands' sparsity pattern, so two products of the
    same patterns list their entries in the same order.
    """
    return (queries.T.tocsr() @ targets.tocsr()).tocsr()


@dataclass(frozen=True)
class Cell:
    """One cell's columns: users x items sparse matrices over the users its entries name."""

    query_block: int
    query_ids: np.ndarray
    """Item ids of the query columns, ascending."""
    queries: csc_matrix
    target_ids: np.ndarray
    """Item ids of the target columns, ascending."""
    targets: csc_matrix


def decode_cell(table: pa.Table, cell_of: Mapping[int, int], n_tb: int) -> Cell | None:
    """The query and target columns of a cell's entries; None when one side has none (no pairs)."""
    side = table.column("side").to_numpy()
    q, t = side == 0, side == 1
    if not q.any() or not t.any():
        return None
    user = table.column("user").to_numpy()
    item = table.column("item").to_numpy()
    r = table.column("r").to_numpy()
    users, local_user = np.unique(user, return_inverse=True)
    q_ids, qm = _sparse_columns(local_user[q], item[q], r[q], len(users))
    t_ids, tm = _sparse_columns(local_user[t], item[t], r[t], len(users))
    return Cell(cell_of[table.column("key")[0].as_py()] // n_tb, q_ids, qm, t_ids, tm)


def cooccurrence_counts(cell: Cell, products: csr_matrix) -> np.ndarray:
    """Users each pair of ``products`` (the cell's Q^T T) shares, in the order of products.data.

    Values are > 0, so the product of the two sparsity patterns has the same entries as
    ``products`` and lists them in the same order (see cross_products).
    """
    if np.all(cell.queries.data == 1.0) and np.all(cell.targets.data == 1.0):
        return products.data

    def pattern(m: csc_matrix) -> csc_matrix:
        return csc_matrix((np.ones_like(m.data), m.indices, m.indptr), shape=m.shape)

    return cross_products(pattern(cell.queries), pattern(cell.targets)).data


def product_entries(cell: Cell, products: csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) in the cell of each entry of a cell product, in the order of products.data."""
    return np.repeat(np.arange(products.shape[0]), np.diff(products.indptr)), products.indices


def best_of_cell(
    cell: Cell,
    indptr: np.ndarray,
    rows: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    sims: np.ndarray,
    counts: np.ndarray,
    valid: np.ndarray,
    top_n: int,
) -> pa.Table:
    """The ``top_n`` best valid entries of each row of a cell product, as PARTIAL_SCHEMA rows."""
    # sorting every pair costs far more than the product; only entries at or above their row's
    # top_n-th similarity can be ranked, so the exact sort below sees about top_n per row
    eligible = np.where(valid, sims, -np.inf)
    keep = valid & (eligible >= kth_largest_per_row(indptr, eligible, top_n)[rows])
    return ranked_neighbors(
        np.full(int(keep.sum()), cell.query_block, dtype=np.int32),
        src[keep],
        dst[keep],
        sims[keep],
        counts[keep],
        top_n,
        with_block=True,
    )


def ranked_neighbors(
    qb: np.ndarray, src: np.ndarray, dst: np.ndarray, sims: np.ndarray, counts: np.ndarray, top_n: int, with_block: bool
) -> pa.Table:
    """Each source's ``top_n`` rows by (similarity desc, neighbour asc), ranked from 1."""
    kept, rank = top_n_per_key(src, sims, dst, top_n)
    columns = {
        "item_idx": pa.array(src[kept].astype(np.int32)),
        "neighbor_idx": pa.array(dst[kept].astype(np.int32)),
        "similarity": pa.array(sims[kept].astype(np.float64)),
        "rank": pa.array(rank),
        "cooccurrence": pa.array(np.rint(counts[kept]).astype(np.int64)),
    }
    if with_block:
        columns = {"qb": pa.array(qb[kept].astype(np.int32)), **columns}
    return pa.table(columns)


def empty_partial() -> pa.Table:
    """No rows, in PARTIAL_SCHEMA."""
    e = np.empty(0, dtype=np.int64)
    return ranked_neighbors(e, e, e, np.empty(0), e, 1, with_block=True)


def _merge_neighbors(table: pa.Table, top_n: int) -> pa.Table:
    """Merge one query block's per-target-block lists into each item's ``top_n`` best."""
    col = {name: table.column(name).to_numpy() for name in ("item_idx", "neighbor_idx", "similarity", "cooccurrence")}
    return ranked_neighbors(
        np.zeros(table.num_rows, dtype=np.int32),
        col["item_idx"].astype(np.int64),
        col["neighbor_idx"].astype(np.int64),
        col["similarity"],
        col["cooccurrence"],
        top_n,
        with_block=False,
    )
