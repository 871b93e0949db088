"""The project's ALS engine on Spark (``als.engine = "blocks"``): CSR blocks, one Arrow task per
block, numpy solves.

MLlib's ALS ships every rating to the factor blocks that need it through a shuffle each
half-iteration and solves each row's normal equations exactly (a Cholesky factorisation per row).
This engine holds the training pairs twice, cached as compressed sparse rows: once in user blocks
(each user's items) and once in item blocks (each item's users), one Spark row per block. In a
half-iteration one ``mapInArrow`` task per block gathers the fixed side's vectors for its pairs,
and solves all of its rows at once with :func:`recsys_spark.models.least_squares.cg_factors` (a
few conjugate-gradient steps, warm-started from the previous factors) or
:func:`~recsys_spark.models.least_squares.exact_factors`. YᵀY is computed once per half-iteration
(by each barrier task, else on the driver).

How the tasks get the fixed side (``als.exchange``; auto picks by size):

* **barrier**: the whole fit is one barrier stage of at most one task per task slot, each holding
  its share of the user and item blocks in memory. After each half-iteration every task sends its
  solved rows to a relay on the driver (:mod:`recsys_spark.models.factor_relay`), which sends the
  whole side back to each. A failed task fails the stage; Spark runs it again and the tasks
  resume from the relay's last complete half-iteration, so the factors are those of an
  uninterrupted fit;
* **broadcast**: a Spark job per half-iteration. The driver holds both sides as numpy arrays,
  broadcasts the fixed side (and the solved side's previous factors, the warm start) and collects
  the solved rows. Nothing but the cached blocks lives on executors, so the lineage is the blocks'
  and an executor lost mid-iteration only costs its tasks' recomputation;
* **joined**, when a side is above ``als.broadcast_limit_mb``: factors stay on executors as one row
  per block, the fixed vectors a block needs are joined to it (the block's distinct columns, cached
  once, as MLlib's out-blocks), and each half-iteration's factors are checkpointed so the plan
  stays short: reliably when the SparkContext has a checkpoint directory (set one on a cluster: a
  local checkpoint does not survive the loss of the executor holding it), else locally.

Why the barrier: on these 2 cores a two-task Spark job costs 0.11-0.15 s however little it does,
and solving the demo's 580k pairs takes about 0.07 s a half-iteration, so the broadcast mode spent
most of its 0.5-0.6 s iteration scheduling two jobs; in one barrier stage the same iterations took
0.10-0.12 s, with the same factors to the bit (the demo's matrix, rank 32, 10 iterations, one
session, each mode twice). Spark's own ``BarrierTaskContext.allGather`` would have been the
natural exchange, but each call took 1.0 s on Spark 4.2, whatever the message size.

The factors come back as MLlib's ``ALSModel`` (:func:`recsys_spark.models.als.als_model_from_factors`),
so everything downstream (the factor tables, RMSE, the search) reads them the same way whichever
engine trained them. Initial factors are drawn per block from ``als.seed``, identically in both
modes, so the two modes give the same model.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from py4j.protocol import Py4JError
from pyspark import StorageLevel
from pyspark.sql import functions as F

from recsys_spark.models.least_squares import cg_factors, exact_factors

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from recsys_spark.config.schema import AlsConfig

log = logging.getLogger(__name__)

__all__ = ["block_count", "csr_blocks", "fit_blocks"]

#: The schema of one CSR block: its row indices (ascending int32), the offsets of each row's pairs
#: (int32), and the pairs' column indices (int32) and values (float64), each a numpy array's bytes.
#: Bytes rather than Spark arrays because every half-iteration hands the cached blocks to Python:
#: a binary value crosses as one copy, an array element by element (at 600k pairs the array form
#: cost about a tenth of a second per half-iteration more).
BLOCK_SCHEMA = "block INT, rows BINARY, offsets BINARY, cols BINARY, values BINARY"
#: A solved block, in the same form: its row indices and their float32 factors.
SOLVED_SCHEMA = "block INT, rows BINARY, factors BINARY"
#: Pairs per block when the config leaves the count open: a task's per-pair float32 temporaries
#: (three pairs x rank arrays) stay near 400 MiB at rank 32.
_PAIRS_PER_BLOCK = 1 << 20
_MIB = 1 << 20
#: How long a barrier task waits for the others' half-iteration: a failed task fails the stage
#: (and Spark kills its partners) long before; this only bounds a wedged exchange.
_RELAY_TIMEOUT_S = 600.0


def block_count(spark: SparkSession, pairs: int, configured: int | None) -> int:
    """Blocks per side: the configured count, else Spark's parallelism or more, so no block holds
    more than about a million pairs."""
    if configured:
        return configured
    return max(1, spark.sparkContext.defaultParallelism, math.ceil(pairs / _PAIRS_PER_BLOCK))


def _partition_keys(spark: SparkSession, blocks: int) -> list[int]:
    """For each block b, an int that Spark's hash partitioning into ``blocks`` partitions sends to
    partition b, so every block gets a task of its own. Hashing the block ids themselves put blocks
    0 and 1 of 2 into one partition, and range partitioning merged neighbours too: one core solved
    every block while the other idled."""
    ids = F.col("id").cast("int")
    found = (
        spark.range(0, 64 * blocks + 1024)
        .select(ids.alias("key"), F.pmod(F.hash(ids), F.lit(blocks)).alias("part"))
        .groupBy("part")
        .agg(F.min("key").alias("key"))
        .collect()
    )
    keys = {r["part"]: r["key"] for r in found}
    if len(keys) < blocks:  # pragma: no cover - 64 candidates per partition leave no gap in practice
        raise RuntimeError(f"no partition key found for {blocks - len(keys)} of {blocks} ALS blocks")
    return [keys[b] for b in range(blocks)]


def csr_blocks(pairs: DataFrame, row: str, col: str, blocks: int) -> DataFrame:
    """(:data:`BLOCK_SCHEMA`) rows of ``pairs`` (``row``, ``col``, ``value``), grouped into
    ``blocks`` blocks by ``row`` modulo ``blocks``; rows and each row's columns ascending."""
    block = F.pmod(F.col(row), F.lit(blocks)).cast("int")
    keys = F.array(*[F.lit(k) for k in _partition_keys(pairs.sparkSession, blocks)])
    keyed = pairs.select(
        block.alias("block"),
        keys[block].alias("key"),
        F.col(row).cast("int").alias("r"),
        F.col(col).cast("int").alias("c"),
        F.col("value").cast("double").alias("v"),
    )
    ordered = keyed.repartition(blocks, "key").sortWithinPartitions("block", "r", "c")

    def build(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        table = pa.Table.from_batches(parts)
        block = table.column("block").to_numpy()
        r = table.column("r").to_numpy()
        c = table.column("c").to_numpy()
        v = table.column("v").to_numpy()
        cuts = np.flatnonzero(np.diff(block)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(block)], strict=True):
            rows, starts = np.unique(r[lo:hi], return_index=True)
            offsets = np.r_[starts, hi - lo]
            parts = [rows.astype(np.int32), offsets.astype(np.int32), c[lo:hi].astype(np.int32), v[lo:hi]]
            yield pa.RecordBatch.from_arrays(
                [pa.array([int(block[lo])], pa.int32()), *(pa.array([a.tobytes()], pa.binary()) for a in parts)],
                ["block", "rows", "offsets", "cols", "values"],
            )

    return ordered.mapInArrow(build, BLOCK_SCHEMA)


def _initial(rows: np.ndarray, block: int, rank: int, seed: int) -> np.ndarray:
    """A block's starting factors: Gaussian, scaled to about unit norm, drawn from (seed, block)."""
    rng = np.random.default_rng([seed, block])
    return (rng.standard_normal((len(rows), rank)) / math.sqrt(rank)).astype(np.float32)


def _array(batch: pa.RecordBatch, column: int, i: int, dtype: type) -> np.ndarray:
    """Row ``i`` of a binary column as the numpy array whose bytes it holds (no copy)."""
    return np.frombuffer(batch.column(column)[i].as_buffer(), dtype=dtype)


def _rows(batch: pa.RecordBatch, i: int) -> np.ndarray:
    return _array(batch, 1, i, np.int32)


def _solve(
    block: pa.RecordBatch,
    i: int,
    fixed: np.ndarray,
    positions: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray | None,
    gram: np.ndarray | None,
    cfg: AlsConfig,
) -> np.ndarray:
    """Block ``i`` of a batch of :data:`BLOCK_SCHEMA` rows solved against the vectors ``fixed``
    (``positions`` maps the block's column indices to rows of it), as float32 (rows, rank)."""
    offsets = _array(block, 2, i, np.int32)
    cols = positions(_array(block, 3, i, np.int32))
    values = _array(block, 4, i, np.float64)
    if cfg.solver == "cholesky":
        x = exact_factors(offsets, fixed[cols], values, cfg, gram)
    else:
        begin = np.zeros((len(offsets) - 1, fixed.shape[1])) if start is None else start
        x = cg_factors(offsets, cols, fixed, values, cfg, begin, gram)
    return x.astype(np.float32)


def _gram(fixed: np.ndarray) -> np.ndarray:
    """YᵀY of every fixed row, in float64 (the implicit-feedback term of each row's system)."""
    wide = fixed.astype(np.float64)
    return wide.T @ wide


def _same(cols: np.ndarray) -> np.ndarray:
    return cols


def _factor_rows(rows: np.ndarray, x: np.ndarray) -> pa.RecordBatch:
    flat = pa.array(x.ravel(), pa.float32())
    return pa.RecordBatch.from_arrays(
        [pa.array(rows, pa.int32()), pa.FixedSizeListArray.from_arrays(flat, x.shape[1]).cast(pa.list_(pa.float32()))],
        ["id", "features"],
    )


class _BlocksFit:
    """One fit: the two sides' cached blocks and the loop over half-iterations."""

    def __init__(self, train: DataFrame, cfg: AlsConfig) -> None:
        self.spark = train.sparkSession
        self.cfg = cfg
        pairs = train.select("user_idx", "item_idx", "value").persist(StorageLevel.MEMORY_AND_DISK)
        self._pairs = pairs
        stats = pairs.agg(F.count(F.lit(1)), F.max("user_idx"), F.max("item_idx")).first()
        self.pairs = int(stats[0])
        self.size = {"user": int(stats[1] or 0) + 1, "item": int(stats[2] or 0) + 1}
        self.block_counts = {
            "user": block_count(self.spark, self.pairs, cfg.num_user_blocks),
            "item": block_count(self.spark, self.pairs, cfg.num_item_blocks),
        }
        self.blocks = {
            "user": csr_blocks(pairs, "user_idx", "item_idx", self.block_counts["user"]),
            "item": csr_blocks(pairs, "item_idx", "user_idx", self.block_counts["item"]),
        }
        for blocks in self.blocks.values():
            blocks.persist(StorageLevel.MEMORY_AND_DISK)
        self._cached: list[DataFrame] = [pairs, *self.blocks.values()]
        self.rows = {side: self._present(side) for side in ("user", "item")}
        pairs.unpersist()
        self._cached.remove(pairs)

    def _present(self, side: str) -> np.ndarray:
        table = self.blocks[side].select("rows").toArrow()
        found = [np.frombuffer(b.as_buffer(), np.int32) for b in table.column("rows").combine_chunks()]
        return np.sort(np.concatenate(found)) if found else np.zeros(0, np.int32)

    def _describe(self, iteration: int, side: str) -> None:
        """Name the half-iteration's jobs in the Spark UI (and its REST API)."""
        self.spark.sparkContext.setJobDescription(f"ALS blocks: iteration {iteration + 1}/{self.cfg.max_iter}, {side}")

    def release(self) -> None:
        self.spark.sparkContext.setJobDescription(None)  # type: ignore[arg-type]
        for df in self._cached:
            df.unpersist()
        self._cached.clear()

    def broadcast_fits(self) -> bool:
        limit = self.cfg.broadcast_limit_mb * _MIB
        return max(self.size.values()) * self.cfg.rank * 4 <= limit

    # -- broadcast mode: both sides on the driver ------------------------------------------------

    def _initial_array(self, side: str) -> np.ndarray:
        out = np.zeros((self.size[side], self.cfg.rank), dtype=np.float32)
        self._scatter(out, self._initial_frame(side).toArrow())
        return out

    def _scatter(self, out: np.ndarray, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        ids = table.column("id").to_numpy()
        features = table.column("features").combine_chunks()
        out[ids] = features.flatten().to_numpy().reshape(len(ids), out.shape[1])

    def _half_broadcast(self, side: str, fixed: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        cfg = self.cfg
        gram = _gram(fixed) if cfg.feedback == "implicit" else None
        sc = self.spark.sparkContext
        shipped = sc.broadcast((fixed, previous, gram))

        def solve(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            y, prev, g = shipped.value
            for batch in batches:
                for i in range(batch.num_rows):
                    rows = _rows(batch, i)
                    start = None if prev is None else prev[rows]
                    x = _solve(batch, i, y, _same, start, g, cfg)
                    yield pa.RecordBatch.from_arrays(
                        [
                            batch.column(0).slice(i, 1),
                            batch.column(1).slice(i, 1),
                            pa.array([x.tobytes()], pa.binary()),
                        ],
                        ["block", "rows", "factors"],
                    )

        try:
            table = self.blocks[side].mapInArrow(solve, SOLVED_SCHEMA).toArrow()
        finally:
            shipped.unpersist()
        out = np.zeros((self.size[side], cfg.rank), dtype=np.float32)
        for rows, factors in zip(table.column("rows").combine_chunks(), table.column("factors").combine_chunks()):
            ids = np.frombuffer(rows.as_buffer(), np.int32)
            out[ids] = np.frombuffer(factors.as_buffer(), np.float32).reshape(len(ids), cfg.rank)
        return out

    # -- barrier mode: one stage for the whole fit, the driver relays each half-iteration ---------

    def barrier_fits(self) -> bool:
        """Whether a barrier stage can run: Spark refuses one under dynamic allocation."""
        sc = self.spark.sparkContext
        return sc.getConf().get("spark.dynamicAllocation.enabled", "false").lower() != "true"

    def run_barrier(self) -> tuple[DataFrame, DataFrame]:
        from pyspark import BarrierTaskContext

        from recsys_spark.models.factor_relay import SIDES, FactorRelay, RelayClient

        cfg = self.cfg
        halves, rank = 2 * cfg.max_iter, cfg.rank
        implicit = cfg.feedback == "implicit"
        # A barrier stage needs all of its tasks running at once, so there are at most as many tasks
        # as task slots, and a task holds every block whose rank among the blocks is its own modulo
        # the task count (user block b and item block b together). Blocks without rows get no task:
        # an empty partition may never start its Python function, leaving the others waiting.
        present = sorted({int(b) for side in SIDES for b in np.unique(self.rows[side] % self.block_counts[side])})
        if not present:
            return self.run_broadcast()
        tasks = min(len(present), max(1, _task_slots(self.spark)))
        task_keys = _partition_keys(self.spark, tasks)
        by_block = {b: task_keys[i % tasks] for i, b in enumerate(present)}
        keys = F.array(*[F.lit(by_block.get(b, 0)) for b in range(max(self.block_counts.values()))])
        both = (
            self.blocks["user"]
            .withColumn("side", F.lit(0))
            .unionByName(self.blocks["item"].withColumn("side", F.lit(1)))
            .withColumn("key", keys[F.col("block")])
            .repartition(tasks, "key")
            .select("block", "rows", "offsets", "cols", "values", "side")
        )
        bind, host = _relay_host(self.spark)
        relay = FactorRelay(tasks, self.size, rank, halves, self._initial_array("item"), bind, host, _RELAY_TIMEOUT_S)
        address = relay.address

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            ctx = BarrierTaskContext.get()
            mine: dict[str, list[tuple[pa.RecordBatch, int]]] = {side: [] for side in SIDES}
            for batch in batches:
                for i in range(batch.num_rows):
                    mine[SIDES[batch.column(5)[i].as_py()]].append((batch, i))
            client = RelayClient(address, ctx.partitionId(), ctx.taskAttemptId())
            try:
                for half in range(client.done, halves):
                    side, other = SIDES[half % 2], SIDES[1 - half % 2]
                    rows, solved = [np.zeros(0, np.int32)], [np.zeros((0, rank), np.float32)]
                    fixed, previous = client.factors[other], client.factors[side]
                    assert fixed is not None
                    gram = _gram(fixed) if implicit and mine[side] else None
                    for batch, i in mine[side]:
                        ids = _rows(batch, i)
                        start = None if previous is None else previous[ids]
                        rows.append(ids)
                        solved.append(_solve(batch, i, fixed, _same, start, gram, cfg))
                    client.swap(half, np.concatenate(rows), np.concatenate(solved))
            finally:
                client.close()
            yield pa.RecordBatch.from_arrays([pa.array([ctx.partitionId()], pa.int32())], ["task"])

        self.spark.sparkContext.setJobDescription(
            f"ALS blocks: iterations 1-{cfg.max_iter}/{cfg.max_iter}, barrier stage of {tasks} tasks"
        )
        started = time.perf_counter()
        with relay:
            # The shuffle after the stage matters: Spark reruns a failed barrier map stage, but
            # aborts the job when a barrier result stage fails.
            both.mapInArrow(run, "task INT", barrier=True).repartition(1).collect()
        users, items = relay.factors["user"], relay.factors["item"]
        assert users is not None and items is not None
        log.info(
            "ALS blocks (barrier): %d iterations in %.2fs, %d task(s) rerun",
            cfg.max_iter,
            time.perf_counter() - started,
            relay.reconnects,
        )
        return self._frame(users, self.rows["user"]), self._frame(items, self.rows["item"])

    def run_broadcast(self) -> tuple[DataFrame, DataFrame]:
        items = self._initial_array("item")
        users: np.ndarray | None = None
        for it in range(self.cfg.max_iter):
            started = time.perf_counter()
            self._describe(it, "users")
            users = self._half_broadcast("user", items, users)
            self._describe(it, "items")
            items = self._half_broadcast("item", users, items)
            log.info("ALS blocks: iteration %d/%d in %.2fs", it + 1, self.cfg.max_iter, time.perf_counter() - started)
        assert users is not None
        return self._frame(users, self.rows["user"]), self._frame(items, self.rows["item"])

    def _frame(self, factors: np.ndarray, rows: np.ndarray) -> DataFrame:
        table = pa.Table.from_batches([_factor_rows(rows.astype(np.int32), factors[rows])])
        return self.spark.createDataFrame(table).persist(StorageLevel.MEMORY_AND_DISK)

    # -- joined mode: factors stay on executors --------------------------------------------------

    def _links(self, side: str) -> DataFrame:
        """(block, col): each block of ``side`` with the distinct fixed-side indices it needs."""
        row, col = ("user_idx", "item_idx") if side == "user" else ("item_idx", "user_idx")
        block = F.pmod(F.col(row), F.lit(self.block_counts[side])).cast("int")
        links = self._pairs.select(block.alias("block"), F.col(col).cast("int").alias("col")).distinct()
        return links.persist(StorageLevel.MEMORY_AND_DISK)

    def _initial_frame(self, side: str) -> DataFrame:
        cfg = self.cfg
        rank, seed = cfg.rank, cfg.seed

        def draw(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                for i in range(batch.num_rows):
                    rows = _rows(batch, i)
                    yield _factor_rows(rows, _initial(rows, batch.column(0)[i].as_py(), rank, seed))

        return self.blocks[side].mapInArrow(draw, "id INT, features ARRAY<FLOAT>")

    def _half_joined(self, side: str, links: DataFrame, fixed: DataFrame, previous: DataFrame | None) -> DataFrame:
        """(id, features) of ``side`` solved against ``fixed`` (id, features) joined to its blocks."""
        from recsys_spark.models.fold_in import item_gram

        cfg = self.cfg
        rank = cfg.rank
        gram = item_gram(fixed.select(F.col("features").alias("factors")), rank) if cfg.feedback == "implicit" else None
        needed = (
            links.join(fixed, links["col"] == fixed["id"])
            .groupBy("block")
            .agg(F.sort_array(F.collect_list(F.struct("id", "features"))).alias("fixed"))
        )
        joined = self.blocks[side].join(needed, "block")
        if previous is not None:
            starts = (
                previous.withColumn("block", F.pmod(F.col("id"), F.lit(self.block_counts[side])).cast("int"))
                .groupBy("block")
                .agg(F.sort_array(F.collect_list(F.struct("id", "features"))).alias("previous"))
            )
            joined = joined.join(starts, "block", "left")
        else:
            joined = joined.withColumn("previous", F.lit(None).cast("array<struct<id:int,features:array<float>>>"))
        joined = joined.select("block", "rows", "offsets", "cols", "values", "fixed", "previous")

        def solve(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                for i in range(batch.num_rows):
                    rows = _rows(batch, i)
                    have = batch.column(5)[i].values
                    ids = have.field("id").to_numpy(zero_copy_only=False)
                    vecs = have.field("features").flatten().to_numpy(zero_copy_only=False).reshape(len(ids), rank)
                    start = None
                    prev = batch.column(6)[i]
                    if prev.is_valid:
                        p = prev.values
                        p_ids = p.field("id").to_numpy(zero_copy_only=False)
                        p_vecs = p.field("features").flatten().to_numpy(zero_copy_only=False).reshape(len(p_ids), rank)
                        start = np.zeros((len(rows), rank), dtype=np.float32)
                        start[np.searchsorted(rows, p_ids)] = p_vecs

                    def positions(cols: np.ndarray, ids: np.ndarray = ids) -> np.ndarray:
                        return np.searchsorted(ids, cols)

                    yield _factor_rows(rows, _solve(batch, i, vecs, positions, start, gram, cfg))

        return joined.mapInArrow(solve, "id INT, features ARRAY<FLOAT>")

    def _keep(self, df: DataFrame) -> DataFrame:
        """A side's factors, materialised with their plan cut: each half-iteration's plan holds the
        previous two, so an uncut plan doubles in size every iteration (the driver ran out of heap
        by the third on a 30 x 25 matrix)."""
        reliable = self.spark.sparkContext.getCheckpointDir() is not None
        return df.checkpoint(eager=True) if reliable else df.localCheckpoint(eager=True)

    def run_joined(self) -> tuple[DataFrame, DataFrame]:
        links = {side: self._links(side) for side in ("user", "item")}
        self._cached += list(links.values())
        items = self._keep(self._initial_frame("item"))
        users: DataFrame | None = None
        for it in range(self.cfg.max_iter):
            started = time.perf_counter()
            self._describe(it, "users")
            new_users = self._keep(self._half_joined("user", links["user"], items, users))
            if users is not None:
                users.unpersist()
            users = new_users
            self._describe(it, "items")
            new_items = self._keep(self._half_joined("item", links["item"], users, items))
            items.unpersist()
            items = new_items
            log.info(
                "ALS blocks (joined): iteration %d/%d in %.2fs",
                it + 1,
                self.cfg.max_iter,
                time.perf_counter() - started,
            )
        assert users is not None
        return users, items


def _task_slots(spark: SparkSession) -> int:
    """Tasks the application can run at once (its executors' cores over spark.task.cpus)."""
    sc = spark.sparkContext
    try:
        jsc = sc._jsc.sc()  # type: ignore[union-attr]
        return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
    except (Py4JError, AttributeError):  # pragma: no cover - a JVM without the method: Spark's own estimate
        return sc.defaultParallelism


def _relay_host(spark: SparkSession) -> tuple[str, str]:
    """(the interface the relay listens on, the name tasks reach the driver by): loopback in
    local mode, else the driver's address as Spark's executors reach it."""
    conf = spark.sparkContext.getConf()
    if spark.sparkContext.master.startswith("local"):
        return "127.0.0.1", "127.0.0.1"
    host = conf.get("spark.driver.host") or socket.gethostname()
    return conf.get("spark.driver.bindAddress") or host, host


def exchange_mode(fit: _BlocksFit) -> str:
    """``als.exchange``, with auto resolved (its docstring in the config)."""
    wanted = fit.cfg.exchange
    if wanted != "auto":
        return wanted
    if not fit.broadcast_fits():
        return "joined"
    return "barrier" if fit.barrier_fits() else "broadcast"


def fit_blocks(train: DataFrame, cfg: AlsConfig) -> tuple[DataFrame, DataFrame]:
    """(user factors, item factors) as MLlib's (id INT, features ARRAY<FLOAT>) frames, fitted on
    ``train`` (user_idx, item_idx, value: :func:`recsys_spark.models.als.training_frame`)."""
    fit = _BlocksFit(train, cfg)
    try:
        mode = exchange_mode(fit)
        log.info(
            "ALS blocks: %d pairs, %d users x %d items, %s solver, %s exchange",
            fit.pairs,
            len(fit.rows["user"]),
            len(fit.rows["item"]),
            cfg.solver if cfg.solver == "cholesky" else f"cg ({cfg.cg_steps} steps)",
            mode,
        )
        runs = {"barrier": fit.run_barrier, "broadcast": fit.run_broadcast, "joined": fit.run_joined}
        return runs[mode]()
    finally:
        fit.release()
