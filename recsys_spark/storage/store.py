"""Every Delta table read, write, history and vacuum goes through :class:`TableStore`.

Two engines write genuine Delta tables, and the store picks one when it is built:

* ``delta-spark`` (:mod:`.delta_spark`): native ``format("delta")``, when the Delta jars are on
  the classpath.
* ``delta-rs`` (:mod:`.delta_rs`): Spark writes Parquet, the ``deltalake`` package commits it;
  for clusters and laptops without those jars.

The store itself checks what must hold whichever engine writes (write mode, partition columns,
the schema against the table's, the version a conditional write expects) and leaves the data
files and the commit to the engine. Reading a log (versions, history, vacuum) needs no Spark and
lives in :mod:`.delta_log`.

Conditional commits. ``write(..., expected_version=V)`` commits only if the table is still at
version V, the version the caller read (``None``: only if the table does not exist yet); otherwise
it raises :class:`ConcurrentWriteError` and nothing becomes visible. This is Delta's own
optimistic concurrency, narrowed: the log allows one writer per version number (an atomic
put-if-absent of ``_delta_log/<V+1>.json``), and a conditional commit gives up instead of
retrying on top of the winner, because what it wrote was computed from version V. Ingest builds
on it (see ``pipeline.ingest``): a run whose inputs moved while it worked restarts from the new
state rather than appending events or ids a concurrent run already added. A lock file would not
do: object stores have no locks, and a killed holder would leave one behind. How each engine
narrows its commit is told in its module.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
from deltalake import Schema as DeltaSchema

from recsys_spark.config.schema import StorageConfig
from recsys_spark.errors import SchemaMismatchError, StorageError
from recsys_spark.session import delta_jars_loaded
from recsys_spark.storage.delta_log import (
    ANY_VERSION,
    CommitInfo,
    EngineName,
    ExpectedVersion,
    HistoryEntry,
    TableHandle,
    TableSummary,
    WriteMode,
    WritePlan,
    WriteResult,
    arrow_schema,
    check_expected,
    describe_table,
    history,
    schema_diff,
    spark_schema,
    table_history,
    vacuum_table,
)
from recsys_spark.storage.delta_rs import DeltaRsEngine, file_stats
from recsys_spark.storage.delta_spark import DeltaSparkEngine
from recsys_spark.tables import table_location
from recsys_spark.uris import absolute, filesystem

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

__all__ = [
    "ANY_VERSION",
    "CommitInfo",
    "ExpectedVersion",
    "HistoryEntry",
    "TableStore",
    "TableSummary",
    "WriteMode",
    "WriteResult",
    "describe_table",
    "file_stats",
    "table_history",
    "table_location",
    "vacuum_table",
]

log = logging.getLogger(__name__)


class TableStore:
    """Reads and writes the pipeline's Delta tables under one root.

    Args:
        spark: the session whose executors write and read the data files.
        cfg: storage settings (root, engine, retries, vacuum retention).
    """

    def __init__(self, spark: SparkSession, cfg: StorageConfig) -> None:
        self.spark = spark
        self.cfg = cfg
        self.root = absolute(cfg.root)
        self._engine = self._resolve_engine(cfg.engine)
        log.info("table store at %s, engine %s", self.root, self.engine)

    @property
    def engine(self) -> EngineName:
        """The engine this store writes with: delta-spark when the Delta jars are loaded, else delta-rs."""
        return self._engine.name

    def _resolve_engine(self, wanted: str) -> DeltaRsEngine | DeltaSparkEngine:
        loaded = delta_jars_loaded(self.spark)
        if wanted == "delta-spark" and not loaded:
            raise StorageError(
                "storage.engine = 'delta-spark' but the Delta jars are not on the Spark classpath; "
                "add --packages io.delta:delta-spark_4.2_2.13:4.4.1 or set storage.engine = 'delta-rs'"
            )
        if wanted == "delta-spark" or (wanted == "auto" and loaded):
            return DeltaSparkEngine(self.spark)
        return DeltaRsEngine(self.spark, self.cfg.max_commit_retries)

    def check_writable(self) -> None:
        """Fail now, naming the root and the cause, if this store cannot write under its root.

        A job would otherwise do all its work first and then die in Spark's Parquet write with a
        JVM stack that names neither. The probe is a hidden empty file at the root (outside every
        table), created and removed again, so object stores are checked the same way.
        """
        fs, base = filesystem(self.root)
        probe = f"{base.rstrip('/')}/.recsys-write-check-{uuid.uuid4().hex[:12]}"
        try:
            fs.create_dir(base, recursive=True)
            with fs.open_output_stream(probe) as out:
                out.write(b"")
            fs.delete_file(probe)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(
                f"storage.root {self.cfg.root!r} ({self.root}) is not writable: {exc}. "
                "Fix its permissions or point storage.root elsewhere; nothing was run"
            ) from None

    # -- locations -------------------------------------------------------------------------------

    def location(self, table: str) -> str:
        """Where ``table`` lives (see :func:`table_location`)."""
        return table_location(self.root, table)

    def describe(self, table: str) -> TableSummary:
        return describe_table(self.root, table)

    def _table(self, table: str) -> TableHandle:
        return TableHandle(table, self.location(table))

    def exists(self, table: str) -> bool:
        return self._table(table).exists()

    def version(self, table: str) -> int | None:
        """Latest committed version, or None when the table does not exist yet."""
        t = self._table(table)
        return t.delta().version() if t.exists() else None

    def schema(self, table: str) -> StructType:
        return spark_schema(self._table(table).delta())

    def partition_values(self, table: str, column: str) -> set[str]:
        """Distinct values of partition column ``column`` in the latest version (empty if no table)."""
        t = self._table(table)
        if not t.exists():
            return set()
        return {p[column] for p in t.delta().partitions() if p.get(column) is not None}

    # -- reads -----------------------------------------------------------------------------------

    def read(self, table: str, version: int | None = None, where: str | None = None) -> DataFrame:
        """The table (latest version, or ``version``) as a DataFrame.

        Args:
            where: optional SQL predicate on partition or data columns; files whose partition
                values or statistics rule it out are not read at all. Rows are filtered too.
        """
        return self._engine.read(self._table(table), version, where)

    # -- writes ----------------------------------------------------------------------------------

    def write(
        self,
        df: DataFrame,
        table: str,
        mode: WriteMode,
        commit: CommitInfo,
        partition_by: Sequence[str] = (),
        replace: Mapping[str, str] | None = None,
        row_group_bytes: int | None = None,
        expected_version: ExpectedVersion = ANY_VERSION,
    ) -> WriteResult:
        """Commit ``df`` as a new version of ``table``; nothing is visible unless the commit lands.

        Args:
            replace: with ``mode="overwrite"``, replace only the partitions with these values
                (e.g. {"method": "als"}) and keep the rest; every row of ``df`` must belong to them.
            row_group_bytes: Parquet row-group size; small groups let a key lookup on sorted data
                read one group instead of a whole file.
            expected_version: commit only if the table is still at this version (the one the
                caller read ``df``'s inputs from), or, with None, only if it does not exist yet.
                The default, :data:`ANY_VERSION`, commits on top of whatever is latest (a blind
                append retries past concurrent appends).

        Raises:
            SchemaMismatchError: the table exists and ``df`` has other columns or types.
            ConcurrentWriteError: another writer overwrote the table first, or the table is no
                longer at ``expected_version``.
        """
        if mode not in ("overwrite", "append"):
            raise StorageError(f"unknown write mode {mode!r} for table {table!r}")
        t = self._table(table)
        partition_by = list(partition_by)
        missing = [p for p in partition_by if p not in df.columns]
        if missing:
            raise StorageError(f"partition columns {missing} of table {table!r} are not in the data")
        if replace and (mode != "overwrite" or not set(replace) <= set(partition_by)):
            raise StorageError(
                f"replacing partitions {dict(replace)} of table {table!r} needs mode 'overwrite' "
                f"and partition columns {sorted(replace)} (table partitioned by {partition_by})"
            )
        arrow = arrow_schema(df.schema)
        new_schema = DeltaSchema.from_arrow(arrow)
        if t.exists():
            self._check_compatible(t, new_schema, partition_by)
        # Fail before the Parquet write when the table has already moved: the common case of a
        # lost race costs no data files at all.
        check_expected(t, expected_version)
        write_id = f"w{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        plan = WritePlan(
            mode=mode,
            partition_by=partition_by,
            arrow=arrow,
            schema=new_schema,
            write_id=write_id,
            metadata=commit.as_metadata(write_id),
            replace=replace,
            row_group_bytes=row_group_bytes,
            expected=expected_version,
        )
        result = self._engine.write(df, t, plan)
        log.info(
            "%s %s: version %d, %d rows in %d files (%s, run %s)",
            mode,
            table,
            result.version,
            result.rows,
            result.files,
            result.engine,
            commit.run_id,
        )
        return result

    def _check_compatible(self, t: TableHandle, new_schema: DeltaSchema, partition_by: list[str]) -> None:
        dt = t.delta()
        problems = schema_diff(dt.schema(), new_schema)
        existing_parts = dt.metadata().partition_columns
        if existing_parts != partition_by:
            problems.append(f"partitioned by {partition_by}, table is partitioned by {existing_parts}")
        if problems:
            raise SchemaMismatchError(
                f"schema mismatch writing table {t.name!r} at {t.location}:\n  " + "\n  ".join(problems)
            )

    # -- maintenance -----------------------------------------------------------------------------

    def history(self, table: str, limit: int | None = None) -> list[HistoryEntry]:
        """Committed versions, newest first, with the job metadata each commit carried."""
        return history(self._table(table), limit)

    def vacuum(self, table: str, retention_hours: float | None = None, dry_run: bool = False) -> list[str]:
        """See :func:`vacuum_table`."""
        removed = vacuum_table(self.cfg, table, retention_hours, dry_run)
        if removed is None:
            raise StorageError(f"table {table!r} does not exist at {self.location(table)}")
        return removed
