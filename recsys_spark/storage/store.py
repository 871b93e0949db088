"""Every Delta table read, write, history and vacuum goes through this module.

Two engines write genuine Delta tables:

* ``delta-spark``: native ``format("delta")``, used when the Delta jars are on the classpath.
* ``delta-rs``: for clusters and laptops without those jars. Spark writes Parquet in parallel into a
  fresh folder inside the table, then the driver commits exactly those files as one Delta
  transaction with the ``deltalake`` package. Add actions carry size, partition values and
  min/max/null statistics from the Parquet footers, so any Delta reader can skip files. Readers
  take the snapshot's file list from ``deltalake`` and scan it with Spark's native Parquet reader.

A write is visible only once its commit lands, so a job killed mid-write leaves the previous
version intact; its orphaned files are invisible and ``vacuum`` removes them.

Conditional commits. ``write(..., expected_version=V)`` commits only if the table is still at
version V, the version the caller read (``None``: only if the table does not exist yet); otherwise
it raises :class:`ConcurrentWriteError` and nothing becomes visible. This is Delta's own
optimistic concurrency, narrowed: the log allows one writer per version number (an atomic
put-if-absent of ``_delta_log/<V+1>.json``), and a conditional commit gives up instead of
retrying on top of the winner, because what it wrote was computed from version V. Ingest builds
on it (see ``pipeline``): a run whose inputs moved while it worked restarts from the new state
rather than appending events or ids a concurrent run already added. A lock file would not do:
object stores have no locks, and a killed holder would leave one behind.

* delta-rs: the transaction is opened on the handle loaded at version V, with no commit
  retries: deltalake then tries exactly V+1 and fails if another commit took it.
* delta-spark: Delta's idempotent-write options, with the table's own app id and the version the
  commit will create as ``txnVersion``. A second writer that read V either meets the first
  one's transaction record (Delta skips its write, which we detect: its write id is not in the
  log) or commits at the same moment and gets Delta's ``ConcurrentTransactionException``. This
  holds against other conditional writers, which every writer of the ingest tables is.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Final, Literal
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StringType, StructField, StructType

from recsys_spark.config.schema import StorageConfig
from recsys_spark.errors import ConcurrentWriteError, SchemaMismatchError, StorageError
from recsys_spark.session import delta_jars_loaded
from recsys_spark.tables import available_versions, table_location
from recsys_spark.uris import absolute, arrow_uri, filesystem, is_uri, spark_uri

log = logging.getLogger(__name__)

WriteMode = Literal["overwrite", "append"]
EngineName = Literal["delta-spark", "delta-rs"]
#: ``write(expected_version=ANY_VERSION)``: commit on top of whatever version is latest.
ANY_VERSION: Final = "any"
ExpectedVersion = int | None | Literal["any"]

_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# String statistics longer than this are left out: a truncated max would be wrong for pruning.
_MAX_STRING_STAT = 32


@dataclass(frozen=True)
class CommitInfo:
    """Who wrote a version: recorded in the commit and shown by ``history``."""

    job: str
    """Job name (ingest, train-als, ...)."""
    run_id: str
    """Identifier of the pipeline run that made the commit."""
    config_hash: str
    """Hash of the effective configuration of that run."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Anything else worth keeping with the commit (input versions, counts)."""

    def as_metadata(self, write_id: str) -> dict[str, Any]:
        return {
            "job": self.job,
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            "write_id": write_id,
            **self.extra,
        }


@dataclass(frozen=True)
class WriteResult:
    """What a write committed."""

    table: str
    version: int
    rows: int
    files: int
    bytes: int
    engine: EngineName


@dataclass(frozen=True)
class HistoryEntry:
    """One committed version of a table."""

    version: int
    timestamp: datetime
    operation: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class TableSummary:
    """Latest state of a table, read from its Delta log alone (no Spark needed)."""

    name: str
    location: str
    version: int | None
    rows: int
    files: int
    bytes: int
    last_job: str | None
    last_run_id: str | None


def describe_table(root: str, table: str) -> TableSummary:
    """Version, row count (from file statistics) and last writer of a table, without Spark."""
    t = _Table(table, table_location(root, table))
    if not t.exists():
        return TableSummary(table, t.location, None, 0, 0, 0, None, None)
    last = _history(t, 1)[0]
    # the files of the version whose writer is reported, even if another commit lands meanwhile
    adds = pa.table(t.delta(last.version).get_add_actions(flatten=True))
    rows = int(sum(v or 0 for v in adds.column("num_records").to_pylist())) if adds.num_rows else 0
    size = int(sum(adds.column("size_bytes").to_pylist())) if adds.num_rows else 0
    return TableSummary(
        table,
        t.location,
        last.version,
        rows,
        adds.num_rows,
        size,
        last.metadata.get("job"),
        last.metadata.get("run_id"),
    )


def table_history(root: str, table: str, limit: int | None = None) -> list[HistoryEntry]:
    """Committed versions of a table, newest first, with each commit's job metadata (no Spark)."""
    return _history(_Table(table, table_location(root, table)), limit)


def vacuum_table(
    cfg: StorageConfig, table: str, retention_hours: float | None = None, dry_run: bool = False
) -> list[str] | None:
    """Delete files that no version within the retention window needs, including orphans of
    killed writes; None when the table does not exist. Files of a write still in progress are
    younger than any sane retention, so they are kept."""
    t = _Table(table, table_location(cfg.root, table))
    if not t.exists():
        return None
    hours = cfg.vacuum_retention_hours if retention_hours is None else retention_hours
    fs, base = filesystem(t.location)
    # deltalake keeps listing tombstones whose files an earlier vacuum already deleted: report
    # only files that exist.
    candidates = t.delta().vacuum(retention_hours=int(hours), dry_run=True, enforce_retention_duration=False, full=True)
    present = [f for f in candidates if fs.get_file_info(_absolute(base, f)).type == pafs.FileType.File]
    if present and not dry_run:
        t.delta().vacuum(retention_hours=int(hours), dry_run=False, enforce_retention_duration=False, full=True)
        _remove_empty_write_folders(fs, base)
    log.info(
        "vacuum %s: %s %d files older than %sh", table, "would remove" if dry_run else "removed", len(present), hours
    )
    return present


def _absolute(base: str, path: str) -> str:
    path = unquote(path)
    return path if path.startswith("/") else f"{base.rstrip('/')}/{path}"


def _remove_empty_write_folders(fs: pafs.FileSystem, base: str) -> None:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    dirs = sorted((i.path for i in infos if i.type == pafs.FileType.Directory), key=len, reverse=True)
    files = [i.path for i in infos if i.type == pafs.FileType.File]
    for d in dirs:
        if "/_delta_log" in d[len(base) :]:
            continue
        if not any(f.startswith(d + "/") for f in files):
            fs.delete_dir(d)


def _history(t: _Table, limit: int | None) -> list[HistoryEntry]:
    entries = []
    for raw in _commit_infos(t.delta(), limit):
        meta: dict[str, Any] = {}
        user = raw.get("userMetadata")
        if isinstance(user, str):
            try:
                meta = json.loads(user)
            except json.JSONDecodeError:
                meta = {"userMetadata": user}
        ts = datetime.fromtimestamp(raw.get("timestamp", 0) / 1000, tz=timezone.utc)
        entries.append(HistoryEntry(int(raw["version"]), ts, str(raw.get("operation", "")), meta))
    return entries


def _commit_infos(dt: DeltaTable, limit: int | None, attempts: int = 20) -> list[dict[str, Any]]:
    """``dt.history(limit)`` with version numbers that are right under concurrent commits.

    deltalake numbers the commit infos downwards from the handle's loaded version, but lists them
    from the newest commit in the log: a commit landing after the load shifts every number down
    (deltalake 1.6.6; cf. delta-rs#4488). Versions only grow, so if the handle is still the latest
    once the list is in hand, no commit landed in between and the numbers are right.
    """
    for _ in range(attempts):
        loaded = dt.version()
        infos = dt.history(limit)
        dt.update_incremental()
        if dt.version() == loaded:
            return infos
    raise StorageError(
        f"the history of table at {dt.table_uri} kept moving: {attempts} commits landed while it was read; retry"
    )


def _arrow_schema(schema: StructType) -> pa.Schema:
    # Delta columns are nullable: Spark reads Parquet as nullable anyway, and a NOT NULL flag that
    # differs between two writes of the same data must not make an append fail.
    nullable = StructType([StructField(f.name, f.dataType, True) for f in schema.fields])
    return to_arrow_schema(nullable, timezone="UTC")


def _spark_schema(dt: DeltaTable) -> StructType:
    arrow = pa.schema(dt.schema().to_arrow())
    return from_arrow_schema(arrow, prefer_timestamp_ntz=True)


def _strip_nullability(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_nullability(v)
            for k, v in node.items()
            if k not in ("nullable", "containsNull", "valueContainsNull", "metadata")
        }
    if isinstance(node, list):
        return [_strip_nullability(v) for v in node]
    return node


def _schema_diff(existing: DeltaSchema, new: DeltaSchema) -> list[str]:
    """Human-readable differences between two Delta schemas (nullability ignored)."""
    old_f = {f["name"]: _strip_nullability(f["type"]) for f in json.loads(existing.to_json())["fields"]}
    new_f = {f["name"]: _strip_nullability(f["type"]) for f in json.loads(new.to_json())["fields"]}
    problems = [f"missing column {n!r} ({json.dumps(t)})" for n, t in old_f.items() if n not in new_f]
    problems += [f"unexpected column {n!r} ({json.dumps(t)})" for n, t in new_f.items() if n not in old_f]
    problems += [
        f"column {n!r} is {json.dumps(new_f[n])}, table has {json.dumps(t)}"
        for n, t in old_f.items()
        if n in new_f and new_f[n] != t
    ]
    if not problems and list(old_f) != list(new_f):
        problems.append(f"column order {list(new_f)} differs from the table's {list(old_f)}")
    return problems


def _stat_value(value: Any, arrow_type: pa.DataType, is_max: bool) -> Any:
    """A Parquet footer statistic as Delta's JSON stats expect it, or None to leave it out."""
    if value is None:
        return None
    if pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type):
        return value
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return value if len(value) <= _MAX_STRING_STAT else None
    if pa.types.is_date(arrow_type):
        return value.isoformat() if isinstance(value, date) else None
    if pa.types.is_timestamp(arrow_type) and isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        # Delta stores millisecond precision; round the max up so it still bounds every row.
        if is_max and value.microsecond % 1000:
            value += timedelta(microseconds=1000 - value.microsecond % 1000)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return None  # floats (NaN ordering), decimals, binary, nested: no min/max, no pruning


def file_stats(md: pq.FileMetaData, schema: pa.Schema) -> dict[str, Any]:
    """Delta ``stats`` (numRecords, minValues, maxValues, nullCount) from one Parquet footer."""
    types = {f.name: f.type for f in schema}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    unknown_minmax: set[str] = set()
    unknown_nulls: set[str] = set()
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            name = col.path_in_schema
            if name not in types:  # nested leaf (list element, struct field)
                continue
            st = col.statistics
            if st is None or not st.has_null_count:
                unknown_nulls.add(name)
            else:
                nulls[name] = nulls.get(name, 0) + st.null_count
            if st is None or not st.has_min_max:
                # A row group of only nulls has no min/max and does not widen the range.
                if st is None or st.null_count != rg.num_rows:
                    unknown_minmax.add(name)
                continue
            lo = _stat_value(st.min, types[name], is_max=False)
            hi = _stat_value(st.max, types[name], is_max=True)
            if lo is None or hi is None:
                unknown_minmax.add(name)
                continue
            mins[name] = lo if name not in mins else min(mins[name], lo)
            maxs[name] = hi if name not in maxs else max(maxs[name], hi)
    for name in unknown_minmax:
        mins.pop(name, None)
        maxs.pop(name, None)
    for name in unknown_nulls:
        nulls.pop(name, None)
    return {"numRecords": md.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _partition_values(relative: str, partition_by: Sequence[str]) -> dict[str, str | None]:
    """Partition values from a Hive-style relative path written by Spark (col=value/...)."""
    if not partition_by:
        return {}
    values: dict[str, str | None] = {}
    for part in relative.split("/")[:-1]:
        key, sep, raw = part.partition("=")
        if sep and key in partition_by:
            value = unquote(raw)  # Spark escapes special characters as %XX in directory names
            values[key] = None if value == _HIVE_NULL else value
    missing = [c for c in partition_by if c not in values]
    if missing:
        raise StorageError(f"cannot read partition values {missing} from written file {relative!r}")
    return values


class _Table:
    """Location helpers shared by both engines."""

    def __init__(self, name: str, location: str) -> None:
        self.name = name
        self.location = location
        self.spark_uri = spark_uri(location)
        self.rs_uri = arrow_uri(location)

    def delta(self, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.rs_uri, version=version)
        except TableNotFoundError:
            raise StorageError(f"table {self.name!r} does not exist at {self.location}") from None
        except DeltaError as exc:
            if version is not None:
                raise StorageError(
                    f"table {self.name!r} has no version {version}: {available_versions(self.rs_uri)}"
                ) from None
            raise StorageError(f"cannot open table {self.name!r} at {self.location}: {exc}") from None

    def exists(self) -> bool:
        return DeltaTable.is_deltatable(self.rs_uri)


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
        self.engine: EngineName = self._resolve_engine(cfg.engine)
        log.info("table store at %s, engine %s", self.root, self.engine)

    def _resolve_engine(self, wanted: str) -> EngineName:
        loaded = delta_jars_loaded(self.spark)
        if wanted == "delta-spark" and not loaded:
            raise StorageError(
                "storage.engine = 'delta-spark' but the Delta jars are not on the Spark classpath; "
                "add --packages io.delta:delta-spark_4.2_2.13:4.4.1 or set storage.engine = 'delta-rs'"
            )
        if wanted == "auto":
            return "delta-spark" if loaded else "delta-rs"
        return wanted  # type: ignore[return-value]

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

    def _table(self, table: str) -> _Table:
        return _Table(table, self.location(table))

    def exists(self, table: str) -> bool:
        return self._table(table).exists()

    def version(self, table: str) -> int | None:
        """Latest committed version, or None when the table does not exist yet."""
        t = self._table(table)
        return t.delta().version() if t.exists() else None

    def schema(self, table: str) -> StructType:
        return _spark_schema(self._table(table).delta())

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
        t = self._table(table)
        if self.engine == "delta-spark":
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            df = reader.load(t.spark_uri)
            return df.where(where) if where else df
        dt = t.delta(version)
        df = self._read_snapshot(dt, where)
        return df.where(where) if where else df

    def _read_snapshot(self, dt: DeltaTable, where: str | None) -> DataFrame:
        schema = _spark_schema(dt)
        parts = dt.metadata().partition_columns
        actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
        if where:
            keep = set(dt.file_uris(file_pruning_predicate=where))
            actions = [a for a in actions if _join_uri(dt.table_uri, a["path"]) in keep]
        if not actions:
            return self.spark.createDataFrame([], schema)
        data_schema = StructType([f for f in schema.fields if f.name not in parts])
        base = _local_or_uri(dt.table_uri)
        if not parts:
            return self.spark.read.schema(data_schema).parquet(
                *[spark_uri(_join_uri(base, a["path"])) for a in actions]
            )
        # Partition values live in the log, not in the files. One scan of all files, then each
        # row gets its file's values by a broadcast join on the path relative to the table.
        # (_metadata.file_path is URL-encoded; '+' is protected because url_decode reads it as a space.)
        name = base.rstrip("/").rsplit("/", 1)[-1]
        mapping = self.spark.createDataFrame(
            [(unquote(a["path"]), *[_partition_string(a.get(f"partition.{p}")) for p in parts]) for a in actions],
            StructType(
                [
                    StructField("__rel", StringType(), False),
                    *[StructField(f"__p_{p}", StringType(), True) for p in parts],
                ]
            ),
        )
        files = [spark_uri(_join_uri(base, a["path"])) for a in actions]
        decoded = F.url_decode(F.regexp_replace(F.col("_metadata.file_path"), r"\+", "%2B"))
        df = (
            self.spark.read.schema(data_schema)
            .parquet(*files)
            .withColumn("__rel", F.substring_index(decoded, f"/{name}/", -1))
            .join(F.broadcast(mapping), "__rel")
        )
        for p in parts:
            df = df.withColumn(p, F.col(f"__p_{p}").cast(schema[p].dataType))
        return df.select(*schema.fieldNames())

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
        arrow = _arrow_schema(df.schema)
        new_schema = DeltaSchema.from_arrow(arrow)
        if t.exists():
            self._check_compatible(t, new_schema, partition_by)
        # Fail before the Parquet write when the table has already moved: the common case of a
        # lost race costs no data files at all.
        _check_expected(t, expected_version)
        write_id = f"w{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        meta = commit.as_metadata(write_id)
        if self.engine == "delta-spark":
            result = self._write_delta_spark(
                df, t, mode, partition_by, meta, replace, row_group_bytes, expected_version
            )
        else:
            result = self._write_delta_rs(
                df, t, mode, partition_by, arrow, new_schema, meta, write_id, replace, row_group_bytes, expected_version
            )
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

    def _check_compatible(self, t: _Table, new_schema: DeltaSchema, partition_by: list[str]) -> None:
        dt = t.delta()
        problems = _schema_diff(dt.schema(), new_schema)
        existing_parts = dt.metadata().partition_columns
        if existing_parts != partition_by:
            problems.append(f"partitioned by {partition_by}, table is partitioned by {existing_parts}")
        if problems:
            raise SchemaMismatchError(
                f"schema mismatch writing table {t.name!r} at {t.location}:\n  " + "\n  ".join(problems)
            )

    def _write_delta_spark(
        self,
        df: DataFrame,
        t: _Table,
        mode: str,
        partition_by: list[str],
        meta: dict[str, Any],
        replace: Mapping[str, str] | None,
        row_group_bytes: int | None,
        expected: ExpectedVersion,
    ) -> WriteResult:
        if partition_by and not replace:
            df = df.repartition(*partition_by)
        writer = df.write.format("delta").mode(mode).option("userMetadata", json.dumps(meta))
        if expected is None:
            writer = writer.mode("errorifexists")  # version 0 is created by exactly one writer
        elif expected != ANY_VERSION:
            # Delta skips a write whose (app id, txnVersion) is not above the table's record, and
            # fails one committing at the same moment: see the module docstring.
            writer = writer.option("txnAppId", _txn_app_id(t)).option("txnVersion", str(int(expected) + 1))
        if row_group_bytes:
            writer = writer.option("parquet.block.size", str(row_group_bytes))
        if replace:
            # delta-spark itself rejects rows outside the replaced partitions
            writer = writer.option(
                "replaceWhere",
                " AND ".join(f"`{k}` = '{str(v).replace(chr(39), chr(39) * 2)}'" for k, v in replace.items()),
            )
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        try:
            writer.save(t.spark_uri)
        except Exception as exc:
            text = str(exc)
            if expected == ANY_VERSION or not any(
                m in text
                for m in (
                    "ConcurrentTransaction",
                    "DELTA_CONCURRENT",
                    "already exists",
                    "PATH_ALREADY_EXISTS",
                    "TABLE_ALREADY_EXISTS",
                )
            ):
                raise
            raise _moved(t, expected, text.splitlines()[0]) from None
        if expected != ANY_VERSION and not any(
            e.metadata.get("write_id") == meta["write_id"] for e in self.history(t.name, limit=50)
        ):
            # Delta skipped the write: another conditional writer recorded this txnVersion first.
            raise _moved(t, expected, "Delta skipped the write: another writer committed that version")
        version = self._version_of(t, meta["write_id"])
        stats = pa.table(t.delta(version).get_add_actions(flatten=True))
        rows = int(sum(v or 0 for v in stats.column("num_records").to_pylist()))
        size = int(sum(stats.column("size_bytes").to_pylist()))
        return WriteResult(t.name, version, rows, stats.num_rows, size, "delta-spark")

    def _write_delta_rs(
        self,
        df: DataFrame,
        t: _Table,
        mode: str,
        partition_by: list[str],
        arrow: pa.Schema,
        new_schema: DeltaSchema,
        meta: dict[str, Any],
        write_id: str,
        replace: Mapping[str, str] | None,
        row_group_bytes: int | None,
        expected: ExpectedVersion,
    ) -> WriteResult:
        folder = f"{t.location}/{write_id}"
        if partition_by and not replace:
            # One task per partition value: otherwise every task writes a small file into every
            # partition folder (tasks x partitions files). A single replaced partition keeps the
            # caller's layout (e.g. range-partitioned by a lookup key).
            df = df.repartition(*partition_by)
        writer = df.write.mode("errorifexists")
        if row_group_bytes:
            writer = writer.option("parquet.block.size", str(row_group_bytes))
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(spark_uri(folder))
        try:
            actions = _add_actions(folder, write_id, partition_by, arrow)
            if replace:
                wanted = {k: str(v) for k, v in replace.items()}
                stray = [a.path for a in actions if any(a.partition_values.get(k) != v for k, v in wanted.items())]
                if stray:
                    raise StorageError(
                        f"overwriting partitions {wanted} of table {t.name!r}: the data also has "
                        f"rows of other partitions (e.g. {stray[0]}); nothing was written"
                    )
            conditional = expected != ANY_VERSION
            # A conditional commit must land at exactly the version after the one it was computed
            # from: no retries on top of a winner.
            props = CommitProperties(
                custom_metadata={"userMetadata": json.dumps(meta)},
                max_commit_retries=0 if conditional else self.cfg.max_commit_retries,
            )
            # the table as it was read (a conditional commit) or as it is now; None: create it
            if conditional:
                base = t.delta(int(expected)) if expected is not None else None
            else:
                base = t.delta() if t.exists() else None
            if base is not None:
                base.create_write_transaction(
                    actions,
                    mode=mode,
                    schema=new_schema,
                    partition_by=partition_by or None,
                    partition_filters=[(k, "=", str(v)) for k, v in replace.items()] if replace else None,
                    commit_properties=props,
                )
            else:
                create_table_with_add_actions(
                    t.rs_uri,
                    new_schema,
                    actions,
                    mode="error",
                    partition_by=partition_by or None,
                    commit_properties=props,
                )
        except CommitFailedError as exc:
            _remove_tree(folder)
            if expected != ANY_VERSION:
                raise _moved(t, expected, str(exc)) from None
            raise ConcurrentWriteError(
                f"another writer committed to table {t.name!r} first; this {mode} was rolled back "
                f"and can be re-run: {exc}"
            ) from None
        except DeltaError as exc:
            _remove_tree(folder)
            if "already exists" in str(exc).lower():
                if expected != ANY_VERSION:
                    raise _moved(t, expected, str(exc)) from None
                raise ConcurrentWriteError(
                    f"table {t.name!r} was created by another writer at the same time; re-run: {exc}"
                ) from None
            raise StorageError(f"commit to table {t.name!r} failed, nothing was written: {exc}") from None
        except BaseException:
            # Uncommitted files are invisible anyway; removing them just saves a vacuum.
            _remove_tree(folder)
            raise
        # a conditional commit landed exactly after the version it expected
        version = (
            self._version_of(t, write_id) if expected == ANY_VERSION else (0 if expected is None else int(expected) + 1)
        )
        rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
        return WriteResult(t.name, version, rows, len(actions), sum(a.size for a in actions), "delta-rs")

    def _version_of(self, t: _Table, write_id: str) -> int:
        """The version our commit got: concurrent writers may have committed right after it."""
        for entry in self.history(t.name, limit=50):
            if entry.metadata.get("write_id") == write_id:
                return entry.version
        raise StorageError(f"commit {write_id} to table {t.name!r} is not in its history")

    # -- maintenance -----------------------------------------------------------------------------

    def history(self, table: str, limit: int | None = None) -> list[HistoryEntry]:
        """Committed versions, newest first, with the job metadata each commit carried."""
        return _history(self._table(table), limit)

    def vacuum(self, table: str, retention_hours: float | None = None, dry_run: bool = False) -> list[str]:
        """See :func:`vacuum_table`."""
        removed = vacuum_table(self.cfg, table, retention_hours, dry_run)
        if removed is None:
            raise StorageError(f"table {table!r} does not exist at {self.location(table)}")
        return removed


def _txn_app_id(t: _Table) -> str:
    """The Delta app id of conditional writes to a table (its transaction record lives in its log)."""
    return f"recsys-spark/conditional/{t.name}"


def _describe_expected(expected: ExpectedVersion) -> str:
    return "not to exist yet" if expected is None else f"to be at version {expected}"


def _moved(t: _Table, expected: ExpectedVersion, why: str) -> ConcurrentWriteError:
    now = t.delta().version() if t.exists() else None
    where = "does not exist" if now is None else f"is at version {now}"
    return ConcurrentWriteError(
        f"table {t.name!r} moved while this run worked: it expected the table {_describe_expected(expected)}, "
        f"and it {where}; another writer committed first, so nothing was committed ({why})"
    )


def _check_expected(t: _Table, expected: ExpectedVersion) -> None:
    if expected == ANY_VERSION:
        return
    now = t.delta().version() if t.exists() else None
    if now != expected:
        raise _moved(t, expected, "found before writing")


def _partition_string(value: Any) -> str | None:
    """A partition value from deltalake's add actions back to the string Delta stores."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _local_or_uri(table_uri: str) -> str:
    return table_uri[len("file://") :] if table_uri.startswith("file://") else table_uri


def _join_uri(table_uri: str, relative: str) -> str:
    relative = unquote(relative)
    return (
        relative
        if is_uri(relative) or relative.startswith("/")
        else (f"{_local_or_uri(table_uri).rstrip('/')}/{relative}")
    )


def _add_actions(folder: str, write_id: str, partition_by: list[str], arrow: pa.Schema) -> list[AddAction]:
    """Add actions for the Parquet files Spark wrote into ``folder``, stats from their footers."""
    fs, base = filesystem(folder)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if i.type == pafs.FileType.File]
    data_files = []
    for info in infos:
        rel = info.path[len(base) :].lstrip("/")
        leaf = rel.rsplit("/", 1)[-1]
        if leaf.startswith(("_", ".")):
            fs.delete_file(info.path)  # _SUCCESS, .crc checksums: not table data
            continue
        data_files.append((info, rel))
    data_schema = pa.schema([f for f in arrow if f.name not in partition_by])

    def action(item: tuple[pafs.FileInfo, str]) -> AddAction:
        info, rel = item
        with fs.open_input_file(info.path) as fh:
            md = pq.read_metadata(fh)
        return AddAction(
            path=f"{write_id}/{rel}",  # deltalake percent-encodes it for the log itself
            size=info.size,
            partition_values=_partition_values(rel, partition_by),
            modification_time=int(info.mtime_ns // 1_000_000) if info.mtime_ns else int(time.time() * 1000),
            data_change=True,
            stats=json.dumps(file_stats(md, data_schema)),
        )

    with ThreadPoolExecutor(max_workers=8) as pool:  # footer reads are I/O bound and release the GIL
        return list(pool.map(action, data_files))


def _remove_tree(folder: str) -> None:
    try:
        fs, base = filesystem(folder)
        fs.delete_dir(base)
    except (FileNotFoundError, OSError):
        pass
